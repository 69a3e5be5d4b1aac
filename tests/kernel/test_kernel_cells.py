"""Tests of the notebook cells in kaggle/cells/: every file is a cell of a notebook, every placeholder
is filled in (none is left in the generated notebooks), a placeholder without a value is an error,
and the imports a cell file takes from an earlier cell (dropped from the notebook) name what that
cell defines."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CELLS = ROOT / "kaggle" / "cells"
MARKERS = ("# filled by build_kernel.py", "# dropped by build_kernel.py")


def _builder():
    spec = importlib.util.spec_from_file_location("build_kernel_under_test", ROOT / "build_kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bk = _builder()
NOTEBOOKS = {"notebook.ipynb": bk.KERNEL_CELLS, "kaggle/wheelhouse/notebook.ipynb": bk.WHEELS_CELLS}


@pytest.fixture(scope="module")
def built() -> dict[str, dict]:
    """The generated notebooks, built in memory from the working tree with the stored options."""
    opts = {**bk.DEFAULTS, **json.loads((ROOT / bk.OPTIONS_FILE).read_text(encoding="utf-8"))}
    return {rel: json.loads(text) for rel, text in bk.build(ROOT, opts).items() if rel in NOTEBOOKS}


def test_every_cell_file_is_a_cell_of_a_notebook():
    files = sorted(p.name for p in CELLS.iterdir() if p.is_file())
    used = bk.KERNEL_CELLS + bk.WHEELS_CELLS
    assert sorted(used) == files and len(set(used)) == len(used)
    assert all(p.suffix in (".py", ".md") for p in CELLS.iterdir())  # no __init__.py: not a package


def test_the_notebooks_have_one_cell_per_file_in_order(built):
    for rel, names in NOTEBOOKS.items():
        nb_cells = built[rel]["cells"]
        assert [c["cell_type"] for c in nb_cells] == ["markdown" if n.endswith(".md") else "code" for n in names]
        for c, name in zip(nb_cells, names):  # each cell starts as its file does
            assert c["source"][0].startswith((CELLS / name).read_text(encoding="utf-8").split("@")[0].split("\n")[0])


def test_every_placeholder_is_filled(built):
    for rel, names in NOTEBOOKS.items():
        for c, name in zip(built[rel]["cells"], names):
            out = "".join(c["source"])
            template = (CELLS / name).read_text(encoding="utf-8")
            if c["cell_type"] == "markdown":
                assert not re.search(r"@[A-Z][A-Z0-9_]*@", out), (rel, name)
                continue
            assert "filled by build_kernel" not in out and "dropped by build_kernel" not in out, (rel, name)
            # nothing of the old @NAME@ kind in the code a cell file keeps
            assert not re.search(r"@[A-Z][A-Z0-9_]*@", template), name
            filled = bk.FILLED.findall(template)
            assert len(filled) == template.count("filled by build_kernel"), name  # no marker the builder misses
            tree = ast.parse(out)
            values = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                      if isinstance(t, ast.Name)}
            for var in filled:  # a literal in place of the stand-in
                assert ast.literal_eval(values[var]) not in ([], {}, ""), (name, var)
            kept = [ln for ln in template.strip("\n").split("\n")
                    if not ln.endswith(MARKERS) and not ln.startswith(tuple(f"{v} = " for v in filled))]
            assert set(kept) <= set(out.split("\n")), name  # the rest as written


@pytest.mark.parametrize("name, source", [("x.py", "A = 1\nFOO = []  # filled by build_kernel.py\n"),
                                          ("x.md", "# title `@FOO@`\n")])
def test_a_placeholder_without_a_value_is_an_error(tmp_path, name, source):
    (tmp_path / bk.CELLS_DIR).mkdir(parents=True)
    (tmp_path / bk.CELLS_DIR / name).write_text(source, encoding="utf-8")
    with pytest.raises(SystemExit, match="FOO"):
        bk.cell(tmp_path, name, {}, {})
    kind, text = bk.cell(tmp_path, name, {"FOO": '["x"]'}, {"FOO": "me/x"})
    assert text == {"x.py": 'A = 1\nFOO = ["x"]\n', "x.md": "# title `me/x`\n"}[name]


def _defined(module: ast.Module) -> set[str]:
    """The names a cell binds at its top level (the namespace the later cells of its notebook see)."""
    names: set[str] = set()
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def test_dropped_imports_name_what_an_earlier_cell_defines():
    for names in NOTEBOOKS.values():
        code = [n for n in names if n.endswith(".py")]
        for i, name in enumerate(code):
            for line in (CELLS / name).read_text(encoding="utf-8").splitlines():
                if not line.endswith(MARKERS[1]):
                    continue
                node = ast.parse(line).body[0]
                assert isinstance(node, ast.ImportFrom) and f"{node.module}.py" in code[:i], (name, line)
                earlier = _defined(ast.parse((CELLS / f"{node.module}.py").read_text(encoding="utf-8")))
                assert {a.name for a in node.names} <= earlier, (name, line)


def test_the_cells_literals_are_the_package_constants():
    """The cells run before the package is importable, so they write Kaggle's folders and the offline
    switches as literals: each must be submission.environment's."""
    from submission import environment

    defaults: dict[str, set[str]] = {}
    paths: list[str] = []
    switches: dict[str, str] = {}
    for path in sorted(CELLS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("/kaggle"):
                paths.append(node.value)
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            if func == "os.environ.get" and len(node.args) == 2:
                defaults.setdefault(ast.literal_eval(node.args[0]), set()).add(ast.literal_eval(node.args[1]))
            if func == "dict" and node.args and ast.unparse(node.args[0]) == "os.environ":
                switches.update({k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg})
    assert defaults["ARC_INPUT_ROOT"] == {environment.INPUT_ROOT}
    assert defaults["ARC_WORKING"] == {environment.WORKING}
    roots = (environment.INPUT_ROOT, environment.WORKING)
    assert paths and all(any(p == r or p.startswith(r + "/") for r in roots) for p in paths), paths
    assert switches and switches.items() <= environment.OFFLINE_ENV.items(), switches
