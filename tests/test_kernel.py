"""Tests of build_kernel.py and the notebooks it generates: the committed files are in sync with the
package, staleness is detected and fixed by a rebuild, the Kaggle metadata is right, the notebook
embeds exactly the package sources, and (slow) the notebook's code runs end to end on CPU."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ["notebook.ipynb", "kernel-metadata.json", "kaggle/wheelhouse/notebook.ipynb",
             "kaggle/wheelhouse/kernel-metadata.json"]
SMOKE_ARGS = ("--smoke --smoke-tasks 2 --workers 1 --set ttt.r=8 --set ttt.lora_alpha=16 "
              "--set ttt.max_samples=4 --set sampling.n_views=2 --set selection.rescore_augmentations=2 "
              "--set selection.max_rescore=2 --set model.max_seq_len=2048 --set sampling.unsure_extra_views=2")


def build(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "build_kernel.py"), *args], cwd=root,
                          capture_output=True, text=True, timeout=120)


def load(rel: str, root: Path = ROOT):
    return json.loads((root / rel).read_text(encoding="utf-8"))


def code_cells(rel: str, root: Path = ROOT) -> list[str]:
    return ["".join(c["source"]) for c in load(rel, root)["cells"] if c["cell_type"] == "code"]


def assigned(source: str, name: str):
    """The literal value assigned to `name` at the top level of a cell."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no assignment to {name}")


def disk_sources(root: Path = ROOT) -> dict[str, str]:
    files = sorted(p for p in (root / "submission").rglob("*.py") if "__pycache__" not in p.parts)
    return {p.relative_to(root).as_posix(): p.read_bytes().decode("utf-8") for p in files}


def requirement_lines(root: Path = ROOT) -> list[str]:
    lines = [ln.split("#")[0].strip() for ln in (root / "requirements.txt").read_text().splitlines()]
    return [ln for ln in lines if ln]


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """The builder, its options, the package, the requirements and the generated files, in sync."""
    dst = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("kaggle", "submission"):
        shutil.copytree(ROOT / d, dst / d, ignore=ignore)
    for f in ["build_kernel.py", "requirements.txt", "requirements-cpu.txt", *GENERATED]:
        shutil.copy2(ROOT / f, dst / f)
    # the package may be edited while the tests run: make the copy consistent first
    assert build(dst).returncode == 0
    return dst


# --- build / check -----------------------------------------------------------------------------

def test_check_passes_on_repo():
    r = build(ROOT, "--check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_editing_the_package_makes_check_fail_until_rebuilt(repo_copy):
    assert build(repo_copy, "--check").returncode == 0
    with open(repo_copy / "submission" / "kaggle.py", "a", encoding="utf-8") as f:
        f.write("# an edit after the last build\n")
    r = build(repo_copy, "--check")
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "stale: notebook.ipynb" in out
    assert "kernel-metadata.json" not in out  # only the file that changed is named
    r = build(repo_copy)
    assert r.returncode == 0 and "wrote notebook.ipynb" in r.stdout
    assert build(repo_copy, "--check").returncode == 0
    unpack = next(c for c in code_cells("notebook.ipynb", repo_copy) if "SOURCES =" in c)
    assert assigned(unpack, "SOURCES")["submission/kaggle.py"].endswith("# an edit after the last build\n")


def test_missing_file_is_listed(repo_copy):
    (repo_copy / "kaggle" / "wheelhouse" / "kernel-metadata.json").unlink()
    r = build(repo_copy, "--check")
    assert r.returncode == 1 and "missing: kaggle/wheelhouse/kernel-metadata.json" in r.stderr


def test_build_is_deterministic(repo_copy):
    before = {f: (repo_copy / f).read_bytes() for f in GENERATED}
    for f in GENERATED:
        (repo_copy / f).unlink()
    assert build(repo_copy).returncode == 0
    assert {f: (repo_copy / f).read_bytes() for f in GENERATED} == before
    r = build(repo_copy)  # nothing to do the second time
    assert r.returncode == 0 and "wrote" not in r.stdout
    for f in GENERATED:
        assert before[f].endswith(b"}\n") and b"\n \"" in before[f]  # indent=1, trailing newline


def test_overrides_are_saved_to_kernel_json(repo_copy):
    r = build(repo_copy, "--check", "--competition", "arc-prize-2025")
    assert r.returncode == 1 and "stale: kernel-metadata.json" in r.stderr
    r = build(repo_copy, "--competition", "arc-prize-2025", "--wheels-dataset", "me/wheels",
              "--model-source", "me/m/transformers/a/2", "--model-source", "me/m/transformers/b/1",
              "--id", "me/my-kernel", "--title", "My Kernel")
    assert r.returncode == 0, r.stderr
    assert build(repo_copy, "--check").returncode == 0  # later checks agree
    opts = load("kaggle/kernel.json", repo_copy)
    assert opts["competition"] == "arc-prize-2025" and opts["id"] == "me/my-kernel"
    meta = load("kernel-metadata.json", repo_copy)
    assert meta["competition_sources"] == ["arc-prize-2025"]
    assert meta["model_sources"] == ["me/m/transformers/a/2", "me/m/transformers/b/1"]
    assert meta["dataset_sources"][0] == "me/wheels"
    assert (meta["id"], meta["title"]) == ("me/my-kernel", "My Kernel")
    assert load("kaggle/wheelhouse/kernel-metadata.json", repo_copy)["id"] == "me/arc-ttt-wheel-builder"


# --- metadata ----------------------------------------------------------------------------------

def test_kernel_metadata():
    opts, meta = load("kaggle/kernel.json"), load("kernel-metadata.json")
    assert "enable_internet" in meta and meta["enable_internet"] is False  # the CLI defaults to true
    assert meta["enable_gpu"] is True and meta["machine_shape"] == opts["machine_shape"] == "NvidiaL4"
    assert meta["competition_sources"] == [opts["competition"]]
    assert meta["dataset_sources"] == [opts["wheels_dataset"]] + opts["dataset_sources"]
    assert meta["model_sources"] == opts["model_sources"] and meta["kernel_sources"] == []
    assert (meta["id"], meta["title"]) == (opts["id"], opts["title"])
    assert meta["code_file"] == "notebook.ipynb" and meta["kernel_type"] == "notebook"
    assert meta["language"] == "python" and meta["is_private"] is True


def test_wheel_builder_metadata():
    opts, meta = load("kaggle/kernel.json"), load("kaggle/wheelhouse/kernel-metadata.json")
    assert meta["enable_internet"] is True and meta["enable_gpu"] is True
    assert meta["machine_shape"] == opts["machine_shape"]
    assert meta["id"] == opts["wheels_dataset"].split("/")[0] + "/arc-ttt-wheel-builder"
    assert meta["code_file"] == "notebook.ipynb"


# --- notebooks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rel", ["notebook.ipynb", "kaggle/wheelhouse/notebook.ipynb"])
def test_notebook_structure(rel):
    nb = load(rel)
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    assert [c["id"] for c in nb["cells"]] == [f"cell-{i}" for i in range(len(nb["cells"]))]
    assert all(c.get("outputs", []) == [] for c in nb["cells"])
    assert "build_kernel.py" in "".join(nb["cells"][0]["source"])
    for i, src in enumerate(code_cells(rel)):
        compile(src, f"{rel} code cell {i}", "exec")
        if "REQUIREMENTS =" in src:  # embedded from requirements.txt
            assert assigned(src, "REQUIREMENTS") == requirement_lines()


def test_kernel_notebook_cells():
    nb = load("notebook.ipynb")
    assert [c["cell_type"] for c in nb["cells"]] == ["markdown", "code", "code", "code"]
    assert "KAGGLE_IS_COMPETITION_RERUN" in "".join(nb["cells"][0]["source"])
    install, unpack, run = code_cells("notebook.ipynb")
    assert "--no-index" in install and "ARC_SKIP_INSTALL" in install
    assert "PYTHONPATH" in unpack and "VERSION" in unpack
    assert '"kaggle"' in run and "ARC_KAGGLE_ARGS" in run and '"validate"' in run
    wheel = code_cells("kaggle/wheelhouse/notebook.ipynb")[0]
    assert '"download"' in wheel and "/kaggle/working/wheels" in wheel and "README" in wheel


def test_notebook_embeds_exactly_the_package_sources():
    unpack = next(c for c in code_cells("notebook.ipynb") if "SOURCES =" in c)
    sources = assigned(unpack, "SOURCES")
    assert sources == disk_sources()
    assert list(sources) == sorted(sources) and not any("__pycache__" in k for k in sources)
    digest = hashlib.sha256(json.dumps(sources, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert assigned(unpack, "SOURCES_SHA256") == digest


def _exec_install(monkeypatch, tmp_path, **env) -> tuple[list[list[str]], list[str]]:
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(list(cmd))
        req = Path(cmd[cmd.index("-r") + 1])
        calls.append(req.read_text().split())
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.delenv("ARC_SKIP_INSTALL", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    exec(compile(code_cells("notebook.ipynb")[0], "install", "exec"), {})
    return calls[0::2], calls[1::2]


def test_install_cell_uses_the_biggest_wheelhouse(monkeypatch, tmp_path, capsys):
    for rel in ("a/x-1-py3-none-any.whl", "w/b/y-1-py3-none-any.whl", "w/b/z-1-py3-none-any.whl"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    cmds, reqs = _exec_install(monkeypatch, tmp_path, ARC_INPUT_ROOT=str(tmp_path))
    assert len(cmds) == 1 and cmds[0][1:5] == ["-m", "pip", "install", "--no-index"]
    assert cmds[0][cmds[0].index("--find-links") + 1] == str(tmp_path / "w" / "b")
    assert reqs == [requirement_lines()]


def test_install_cell_skips_without_wheels_or_when_asked(monkeypatch, tmp_path, capsys):
    assert _exec_install(monkeypatch, tmp_path, ARC_INPUT_ROOT=str(tmp_path / "none")) == ([], [])
    assert "no wheelhouse" in capsys.readouterr().out
    (tmp_path / "x.whl").write_bytes(b"")
    assert _exec_install(monkeypatch, tmp_path, ARC_INPUT_ROOT=str(tmp_path), ARC_SKIP_INSTALL="1") == ([], [])


# --- the notebook, executed on CPU ------------------------------------------------------------

def _task(shift: int) -> dict:
    pairs = [{"input": [[c, 0], [0, 0]], "output": [[0, c], [0, 0]]} for c in (1 + shift, 2 + shift)]
    return {"train": pairs, "test": [{"input": [[3 + shift, 0], [0, 0]]}]}


@pytest.mark.slow
def test_notebook_runs_on_cpu(tmp_path):
    comp = tmp_path / "input" / "competitions" / "arc-prize-2026-arc-agi-2"
    comp.mkdir(parents=True)
    challenges = comp / "arc-agi_test_challenges.json"
    challenges.write_text(json.dumps({"00000001": _task(0), "00000002": _task(4)}))
    repo_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "submission", "tiny-model", str(tmp_path / "input/models/tiny")],
                   cwd=ROOT, env=repo_env, check=True, capture_output=True, timeout=300)
    script = tmp_path / "notebook_script.py"
    script.write_text("\n\n".join(code_cells("notebook.ipynb")))

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "ARC_SKIP_INSTALL",
                        "KAGGLE_IS_COMPETITION_RERUN")}
    env.update(ARC_INPUT_ROOT=str(tmp_path / "input"), ARC_WORKING=str(tmp_path / "working"),
               ARC_KERNEL_DIR=str(tmp_path / "kernel"), HF_HUB_OFFLINE="1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", ARC_KAGGLE_ARGS=SMOKE_ARGS)
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert "no wheelhouse attached" in r.stdout
    kernel_pkg = tmp_path / "kernel" / "submission"
    assert f"package: {kernel_pkg / '__init__.py'}" in r.stdout  # imported from ARC_KERNEL_DIR
    assert list((kernel_pkg / "__pycache__").glob("run.*.pyc"))  # ... by the run's processes too
    assert (tmp_path / "kernel" / "VERSION").read_text().strip() == assigned(
        code_cells("notebook.ipynb")[1], "SOURCES_SHA256")
    sub = tmp_path / "working" / "submission.json"
    assert sub.exists() and set(json.loads(sub.read_text())) == {"00000001", "00000002"}
    v = subprocess.run([sys.executable, "-m", "submission", "validate", "--submission", str(sub),
                        "--challenges", str(challenges)], cwd=ROOT, env=repo_env,
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr
