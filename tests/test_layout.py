"""The suite's own layout: tests/ mirrors the package's role folders, every folder is a package (so
two test files may share a name), and a test module imports shared code from tests/helpers.py only,
never from another test module or from conftest.py."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _test_modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if "__pycache__" not in p.parts)


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_test_folder_is_a_package():
    folders = {p.parent for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts}
    assert folders, "no test files found"
    for folder in folders:
        assert (folder / "__init__.py").is_file(), f"{folder.relative_to(TESTS.parent)} has no __init__.py"


def test_test_modules_import_no_other_test_module_nor_conftest():
    bad = []
    for path in _test_modules():
        for name in _imported(path):
            last = name.split(".")[-1]
            if last.startswith("test_") or last == "conftest":
                bad.append(f"{path.relative_to(TESTS.parent)} imports {name}")
    assert not bad, "shared test code belongs in tests/helpers.py:\n" + "\n".join(bad)


def test_role_folders_of_the_package_have_a_test_folder():
    package = TESTS.parent / "submission"
    roles = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    # presets are data files of the config: tests/config/test_presets.py
    missing = sorted(r for r in roles - {"presets"} if not (TESTS / r).is_dir())
    assert not missing, f"no tests/<role>/ for {missing}"
