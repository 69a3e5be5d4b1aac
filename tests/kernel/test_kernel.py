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

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ["notebook.ipynb", "kernel-metadata.json", "kaggle/wheelhouse/notebook.ipynb",
             "kaggle/wheelhouse/kernel-metadata.json"]
SMOKE_ARGS = ("--smoke --smoke-tasks 2 --workers 1 --allow-unanswered --set ttt.lora.r=8 "
              "--set ttt.lora.alpha=16 --set ttt.max_samples=4 --set sampling.n_views=2 "
              "--set selection.rescore_augmentations=2 --set selection.max_rescore=2 "
              "--set model.max_seq_len=2048 --set sampling.unsure_extra_views=2")


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
    """Every module and template of the package (what the notebook must carry to run)."""
    files = sorted(p for p in (root / "submission").rglob("*")
                   if p.is_file() and (p.suffix == ".py" or p.name.endswith(".html.j2"))
                   and "__pycache__" not in p.parts)
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
    assert '"gpu-check"' in run and '"--calibration"' in run and "raise RuntimeError" in run
    assert "KAGGLE_IS_COMPETITION_RERUN" in run


def test_wheel_builder_cells():
    nb = load("kaggle/wheelhouse/notebook.ipynb")
    assert [c["cell_type"] for c in nb["cells"]] == ["markdown", "code", "code", "code", "markdown"]
    driver, download, verify = code_cells("kaggle/wheelhouse/notebook.ipynb")
    assert "nvidia-smi" in driver and "download.pytorch.org/whl/cu128" in driver
    assert '"download"' in download and "/kaggle/working/wheels" in download and "README" in download
    assert "dataset-metadata.json" in download
    assert '"venv"' in verify and '"--no-index"' in verify and '"--find-links"' in verify
    assert "torch.cuda.is_available()" in verify and "import vllm" in verify and "import unsloth" in verify
    assert "SUCCESS" in verify
    opts = load("kaggle/kernel.json")
    assert assigned(driver, "DATASET_ID") == opts["wheels_dataset"]
    title = assigned(driver, "DATASET_TITLE")
    assert title != "INSERT_TITLE_HERE" and 6 <= len(title) <= 50
    nxt = "".join(nb["cells"][-1]["source"])
    assert "kaggle datasets create -p builder-out/wheels" in nxt and "wheels-out/wheels/wheels" not in nxt
    assert "INSERT_TITLE_HERE" in nxt and "--dir-mode zip" in nxt


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
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", ARC_KAGGLE_ARGS=SMOKE_ARGS,
               ARC_GPU_CHECK_ARGS="--steps 2 --grid-side 5", ARC_SCRATCH=str(tmp_path / "scratch"))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert "no wheelhouse attached" in r.stdout
    check = json.loads((tmp_path / "working" / "gpu-check" / "gpu_check.json").read_text())
    assert check["ok"] is True, check["failed"]
    assert "--calibration" in r.stdout and "every stage worked" in r.stdout  # smoke verdict: green
    kernel_pkg = tmp_path / "kernel" / "submission"
    assert f"package: {kernel_pkg / '__init__.py'}" in r.stdout  # imported from ARC_KERNEL_DIR
    assert list((kernel_pkg / "runtime" / "__pycache__").glob("run.*.pyc"))  # ... by the run's processes too
    assert (tmp_path / "kernel" / "VERSION").read_text().strip() == assigned(
        code_cells("notebook.ipynb")[1], "SOURCES_SHA256")
    sub = tmp_path / "working" / "submission.json"
    assert sub.exists() and set(json.loads(sub.read_text())) == {"00000001", "00000002"}
    v = subprocess.run([sys.executable, "-m", "submission", "validate", "--submission", str(sub),
                        "--challenges", str(challenges)], cwd=ROOT, env=repo_env,
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr


# --- the RUN cell's smoke / full logic, with the commands faked -------------------------------

class FakeCommands:
    """Stands in for subprocess.run in the RUN cell: records every command, writes what the real
    commands would (calibration.json, submission.json) and exits with the codes asked for."""

    def __init__(self, working: Path, *, gpu_check: int = 0, kaggle: int = 0, validate: int = 0,
                 calibration: bool = True) -> None:
        self.working, self.codes, self.calibration = working, {"gpu-check": gpu_check, "kaggle": kaggle,
                                                               "validate": validate}, calibration
        self.calls: list[list[str]] = []

    def __call__(self, cmd, **kwargs):
        cmd = [str(c) for c in cmd]
        self.calls.append(cmd)
        kind = cmd[3]  # python -m submission KIND
        if kind == "gpu-check" and self.calibration:
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "calibration.json").write_text("{}")
        if kind == "kaggle":
            (self.working / "submission.json").write_text('{"t": []}')
        code = self.codes[kind]
        if kwargs.get("check") and code:
            raise subprocess.CalledProcessError(code, cmd)
        return subprocess.CompletedProcess(cmd, code)

    def of(self, kind: str) -> list[list[str]]:
        return [c for c in self.calls if c[3] == kind]


def _exec_run_cell(monkeypatch, tmp_path, fake: FakeCommands, *, full: bool, args: str = "", **env):
    monkeypatch.setattr(subprocess, "run", fake)
    exec_run_cell_with(monkeypatch, tmp_path, fake.working, full=full, args=args, **env)


def exec_run_cell_with(monkeypatch, tmp_path, working: Path, *, full: bool = False, args: str = "", **env):
    """Execute the RUN cell with subprocess.run as already patched, under the given env."""
    root = tmp_path / "input"
    (root / "comp").mkdir(parents=True, exist_ok=True)
    (root / "comp" / "arc-agi_test_challenges.json").write_text("{}")
    for key in ("KAGGLE_IS_COMPETITION_RERUN", "ARC_SKIP_GPU_CHECK", "ARC_GPU_CHECK_ARGS",
                "ARC_GPU_CHECK_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    if full:
        monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    monkeypatch.setenv("ARC_INPUT_ROOT", str(root))
    monkeypatch.setenv("ARC_WORKING", str(working))
    monkeypatch.setenv("ARC_KAGGLE_ARGS", args)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    exec(compile(code_cells("notebook.ipynb")[2], "run", "exec"), {})


def test_run_cell_smoke_runs_gpu_check_first_and_passes_the_calibration(monkeypatch, tmp_path, capsys):
    fake = FakeCommands(tmp_path / "working")
    _exec_run_cell(monkeypatch, tmp_path, fake, full=False,
                   args="--smoke-tasks 2 --set ttt.lora.r=8 --config=c.toml --model /m --workers 1",
                   ARC_GPU_CHECK_ARGS="--steps 2")
    assert [c[3] for c in fake.calls] == ["gpu-check", "kaggle", "validate"]
    (check,), (kaggle,) = fake.of("gpu-check"), fake.of("kaggle")
    check_dir = str(tmp_path / "working" / "gpu-check")
    assert check[check.index("--out") + 1] == check_dir
    assert check[-7:] == ["--set", "ttt.lora.r=8", "--config=c.toml", "--model", "/m", "--steps", "2"]
    assert "--workers" not in check and "--smoke-tasks" not in check  # kaggle-only options stay out
    assert kaggle[kaggle.index("--calibration") + 1] == str(Path(check_dir) / "calibration.json")
    assert kaggle[-9:] == ["--smoke-tasks", "2", "--set", "ttt.lora.r=8", "--config=c.toml", "--model", "/m",
                           "--workers", "1"]  # ARC_KAGGLE_ARGS last, as given
    assert "every stage worked" in capsys.readouterr().out


def test_run_cell_smoke_failure_raises(monkeypatch, tmp_path, capsys):
    fake = FakeCommands(tmp_path / "working", kaggle=1)
    with pytest.raises(RuntimeError, match="SMOKE RUN FAILED") as info:
        _exec_run_cell(monkeypatch, tmp_path, fake, full=False)
    assert "smoke run exited with code 1" in str(info.value)
    assert fake.of("validate")  # the submission is still validated and shown first


def test_run_cell_failed_gpu_check_raises_but_the_smoke_run_still_runs(monkeypatch, tmp_path):
    fake = FakeCommands(tmp_path / "working", gpu_check=1, calibration=False)
    with pytest.raises(RuntimeError, match="gpu-check exited with code 1"):
        _exec_run_cell(monkeypatch, tmp_path, fake, full=False)
    (kaggle,) = fake.of("kaggle")
    assert "--calibration" not in kaggle  # no calibration.json was written


def test_run_cell_full_rerun_skips_gpu_check_and_never_raises_on_a_valid_submission(monkeypatch, tmp_path,
                                                                                     capsys):
    fake = FakeCommands(tmp_path / "working", kaggle=1)
    _exec_run_cell(monkeypatch, tmp_path, fake, full=True)
    assert [c[3] for c in fake.calls] == ["kaggle", "validate"]
    assert "--calibration" not in fake.of("kaggle")[0]
    assert "keeping" in capsys.readouterr().out


def test_run_cell_invalid_submission_fails_even_in_the_full_rerun(monkeypatch, tmp_path):
    fake = FakeCommands(tmp_path / "working", validate=2)
    with pytest.raises(subprocess.CalledProcessError):
        _exec_run_cell(monkeypatch, tmp_path, fake, full=True)


def test_run_cell_hung_gpu_check_times_out_and_fails_the_smoke_run(monkeypatch, tmp_path):
    fake = FakeCommands(tmp_path / "working", calibration=False)

    def hang(cmd, **kwargs):
        if "gpu-check" in [str(c) for c in cmd]:
            assert kwargs["timeout"] == 7.0
            raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])
        return fake(cmd, **kwargs)

    monkeypatch.setattr(subprocess, "run", hang)
    with pytest.raises(RuntimeError, match="gpu-check exited with code 124"):
        exec_run_cell_with(monkeypatch, tmp_path, fake.working, ARC_GPU_CHECK_TIMEOUT="7")
    assert [c[3] for c in fake.calls] == ["kaggle", "validate"]


def test_run_cell_gpu_check_can_be_skipped(monkeypatch, tmp_path):
    fake = FakeCommands(tmp_path / "working")
    _exec_run_cell(monkeypatch, tmp_path, fake, full=False, ARC_SKIP_GPU_CHECK="1")
    assert [c[3] for c in fake.calls] == ["kaggle", "validate"]


# --- the wheel builder's cells, with pip and the driver faked ----------------------------------

VLLM_ASSETS = [f"vllm-0.32.0+{cu}-cp38-abi3-manylinux_2_28_{arch}.whl"
               for cu in ("cu126", "cu128", "cu129") for arch in ("x86_64", "aarch64")]
PYPI_VLLM = ["vllm-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl", "vllm-0.32.0-cp38-abi3-manylinux_2_28_aarch64.whl",
             "vllm-0.32.0.tar.gz"]  # what `pip download --no-deps vllm==0.32.0` fetched from PyPI


def _fake_index(release: bool = True):
    """GitHub's release API (its asset list) and PyPI's JSON for vLLM 0.32.0, offline."""
    def fetch(url):
        if url == "https://api.github.com/repos/vllm-project/vllm/releases/tags/v0.32.0":
            if not release:
                raise OSError("HTTP Error 403: rate limit exceeded")
            base = "https://github.com/vllm-project/vllm/releases/download/v0.32.0/"
            return {"assets": [{"name": n, "browser_download_url": base + n} for n in VLLM_ASSETS]}
        if url == "https://pypi.org/pypi/vllm/0.32.0/json":
            return {"urls": [{"filename": n} for n in PYPI_VLLM]}
        raise OSError(f"unexpected URL {url}")
    return fetch


def _builder_ns(monkeypatch, driver: str, fake, cuda: str | None = None, release: bool = True) -> dict:
    monkeypatch.setenv("ARC_DRIVER_VERSION", driver)
    if cuda:
        monkeypatch.setenv("ARC_DRIVER_CUDA", cuda)
    else:
        monkeypatch.delenv("ARC_DRIVER_CUDA", raising=False)
    monkeypatch.setattr(subprocess, "run", fake)
    ns: dict = {}
    exec(compile(code_cells("kaggle/wheelhouse/notebook.ipynb")[0], "driver", "exec"), ns)
    ns["fetch_json"] = _fake_index(release)
    return ns


def _quiet(cmd, **kwargs):
    return subprocess.CompletedProcess(cmd, 0)


@pytest.mark.parametrize("driver, first", [("580.65.06", "cu130"), ("590.1", "cu130"),
                                           ("570.86.15", "cu128"), ("560.35.03", "cu126"),
                                           ("550.54.15", "cu126"), ("535.183.01", "cu126")])
def test_builder_picks_the_build_for_the_driver(monkeypatch, driver, first):
    ns = _builder_ns(monkeypatch, driver, _quiet)
    assert ns["CANDIDATES"][0][0] == first
    assert all(int(driver.split(".")[0]) >= ns["MINOR_COMPAT"][b[1][0]] for b in ns["CANDIDATES"])
    if first != "cu130":
        assert "cu130" not in [b[0] for b in ns["CANDIDATES"]]  # CUDA 13 needs driver >= 580
        lines, extra = ns["variants"](ns["CANDIDATES"][0])[0]
        assert f"torch==2.13.0+{first}" in lines and extra == ["--extra-index-url",
                                                               f"https://download.pytorch.org/whl/{first}"]
        assert f"vllm @ https://github.com/vllm-project/vllm/releases/download/v0.32.0/vllm-0.32.0+{first}" \
               "-cp38-abi3-manylinux_2_28_x86_64.whl" in lines  # a name the release holds
        assert [r for r in lines if not r.startswith(("torch", "vllm"))] == \
            [r for r in requirement_lines() if not r.startswith(("torch", "vllm"))]
    else:
        assert ns["variants"](ns["CANDIDATES"][0]) == [(requirement_lines(), [])]


def test_builder_refuses_a_driver_too_old(monkeypatch):
    with pytest.raises(RuntimeError, match="older than every CUDA build"):
        _builder_ns(monkeypatch, "470.1", _quiet)


def test_builder_download_falls_back_and_writes_the_dataset_metadata(monkeypatch, tmp_path):
    wheels = tmp_path / "wheels"
    monkeypatch.setenv("ARC_WHEELS_DIR", str(wheels))
    downloads = []

    def fake(cmd, **kwargs):
        cmd = [str(c) for c in cmd]
        if cmd[:1] == ["nvidia-smi"]:
            return subprocess.CompletedProcess(cmd, 0)
        if "download" in cmd and "-r" in cmd:
            lines = Path(cmd[cmd.index("-r") + 1]).read_text().split("\n")
            downloads.append(lines)
            if any("+cu126" in ln for ln in lines):  # say the cu126 variants do not exist
                return subprocess.CompletedProcess(cmd, 1)
            (wheels / "torch-2.13.0+cu128-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0)

    ns = _builder_ns(monkeypatch, "550.54.15", fake)
    exec(compile(code_cells("kaggle/wheelhouse/notebook.ipynb")[1], "download", "exec"), ns)
    assert ns["CANDIDATES"][0][0] == "cu126"  # driver 550: CUDA 12 by minor-version compatibility
    assert ns["chosen"][0] == "cu128" and len(downloads) == 2  # the one cu126 name, then cu128
    meta = json.loads((wheels / "dataset-metadata.json").read_text())
    opts = load("kaggle/kernel.json")
    assert meta["id"] == opts["wheels_dataset"] and meta["title"] == ns["DATASET_TITLE"]
    assert "cu128" in (wheels / "README.md").read_text()
    assert sorted(p.name for p in wheels.iterdir() if p.suffix == ".whl") == [
        "torch-2.13.0+cu128-cp311-cp311-linux_x86_64.whl"]  # top level: `datasets create` skips folders

    calls = []

    def record(cmd, **kwargs):
        calls.append([str(c) for c in cmd])
        if "-r" in calls[-1]:
            calls.append(Path(calls[-1][calls[-1].index("-r") + 1]).read_text().split())
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", record)
    exec(compile(code_cells("kaggle/wheelhouse/notebook.ipynb")[2], "verify", "exec"), ns)
    venv = calls[0]
    assert venv[1:3] == ["-m", "venv"] and "--system-site-packages" not in venv
    install = next(c for c in calls if "install" in c and "-r" in c)
    assert install[0].endswith("/bin/python") and "--no-index" in install
    assert install[install.index("--find-links") + 1] == str(wheels)
    assert "--no-deps" in install and install[install.index("-r") + 1] == str(wheels / "requirements.lock")
    assert calls[calls.index(install) + 1] == ["torch==2.13.0+cu128"]  # exactly what the kernel installs
    probe = next(c for c in calls if "-c" in c)
    assert probe[0] == install[0] and "torch.cuda.is_available()" in probe[-1]


def _smi(cmd, **kwargs):
    """nvidia-smi on a Kaggle-like image: driver 570, CUDA 12.8."""
    if cmd[:2] == ["nvidia-smi", "--query-gpu=driver_version"]:
        return subprocess.CompletedProcess(cmd, 0, stdout="570.86.15\n570.86.15\n")
    if cmd == ["nvidia-smi"]:
        return subprocess.CompletedProcess(cmd, 0, stdout="| NVIDIA-SMI 570.86.15   Driver Version: "
                                                          "570.86.15   CUDA Version: 12.8     |\n")
    return subprocess.CompletedProcess(cmd, 0)


def test_builder_prefers_the_cuda_build_nvidia_smi_reports(monkeypatch):
    monkeypatch.delenv("ARC_DRIVER_VERSION", raising=False)
    monkeypatch.delenv("ARC_DRIVER_CUDA", raising=False)
    monkeypatch.setattr(subprocess, "run", _smi)
    ns: dict = {}
    exec(compile(code_cells("kaggle/wheelhouse/notebook.ipynb")[0], "driver", "exec"), ns)
    assert ns["DRIVER"] == "570.86.15" and ns["DRIVER_CUDA"] == (12, 8)
    assert [b[0] for b in ns["CANDIDATES"]] == ["cu128", "cu126", "cu129"]  # never PyPI's cu130
    for driver, cuda, order in [("575.51.03", "12.9", ["cu129", "cu128", "cu126"]),
                                ("580.65.06", "13.0", ["cu130", "cu129", "cu128", "cu126"]),
                                ("580.65.06", "12.8", ["cu128", "cu126", "cu129", "cu130"])]:
        ns = _builder_ns(monkeypatch, driver, _quiet, cuda=cuda)
        assert [b[0] for b in ns["CANDIDATES"]] == order


def test_builder_names_vllm_wheels_from_the_index_it_downloads_from(monkeypatch):
    driver = code_cells("kaggle/wheelhouse/notebook.ipynb")[0]
    assert "manylinux_2_35_x86_64" not in driver and "manylinux1_x86_64" not in driver  # no guessed names
    ns = _builder_ns(monkeypatch, "570.86.15", _quiet, cuda="12.8")
    base = "https://github.com/vllm-project/vllm/releases/download/v0.32.0/"
    assert ns["vllm_wheels"]("0.32.0", "cu128") == [base + "vllm-0.32.0+cu128-cp38-abi3-manylinux_2_28_x86_64.whl"]
    assert ns["vllm_wheels"]("0.32.0", "cu129", machine="aarch64") == [
        base + "vllm-0.32.0+cu129-cp38-abi3-manylinux_2_28_aarch64.whl"]
    ns = _builder_ns(monkeypatch, "570.86.15", _quiet, cuda="12.8", release=False)  # API refused
    assert ns["vllm_wheels"]("0.32.0", "cu128") == [base + "vllm-0.32.0+cu128-cp38-abi3-manylinux_2_28_x86_64.whl"]
    lines, extra = ns["variants"](ns["CANDIDATES"][0])[0]
    assert "torch==2.13.0+cu128" in lines and extra == ["--extra-index-url", "https://download.pytorch.org/whl/cu128"]


def _wheel(path: Path, files: dict) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


# xformers 0.0.35 (PyPI, unsloth's dependency): xformers/cpp_lib.json as published
XFORMERS_BUILD = {"version": {"cuda": 1208, "hip": None, "torch": "2.10.0+cu128", "python": "3.10.19"}}


@pytest.mark.parametrize("built_for, kept", [("2.10.0+cu128", False), ("2.13.0+cu128", True)])
def test_builder_drops_an_xformers_wheel_built_for_another_torch(monkeypatch, tmp_path, built_for, kept):
    wheels = tmp_path / "wheels"
    monkeypatch.setenv("ARC_WHEELS_DIR", str(wheels))
    xformers = "xformers-0.0.35-py39-none-manylinux_2_28_x86_64.whl"

    def fake(cmd, **kwargs):
        cmd = [str(c) for c in cmd]
        if "download" in cmd and "-r" in cmd:
            (wheels / "torch-2.13.0+cu128-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
            (wheels / "unsloth-2026.10.7-py3-none-any.whl").write_bytes(b"")
            build = {**XFORMERS_BUILD, "version": {**XFORMERS_BUILD["version"], "torch": built_for}}
            _wheel(wheels / xformers, {"xformers/cpp_lib.json": json.dumps(build)})
        if "download" in cmd and cmd[-1] == "pip":
            (wheels / "pip-26.0-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0)

    ns = _builder_ns(monkeypatch, "570.86.15", fake, cuda="12.8")
    exec(compile(code_cells("kaggle/wheelhouse/notebook.ipynb")[1], "download", "exec"), ns)
    lock = (wheels / "requirements.lock").read_text().split()
    assert "torch==2.13.0+cu128" in lock and "unsloth==2026.10.7" in lock
    assert not any(r.startswith("pip==") for r in lock)
    assert ((wheels / xformers).exists(), "xformers==0.0.35" in lock) == (kept, kept)
    readme = (wheels / "README.md").read_text()
    assert ("Left out: " + xformers in readme) == (not kept) and "requirements.lock" in readme


def test_install_cell_installs_the_builders_lock_without_resolving(monkeypatch, tmp_path):
    house = tmp_path / "w"
    house.mkdir()
    (house / "torch-2.13.0+cu128-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    (house / "requirements.lock").write_text("torch==2.13.0+cu128\nunsloth==2026.10.7\n")
    cmds, reqs = _exec_install(monkeypatch, tmp_path, ARC_INPUT_ROOT=str(tmp_path))
    assert len(cmds) == 1 and "--no-deps" in cmds[0] and "--no-index" in cmds[0]
    assert cmds[0][cmds[0].index("-r") + 1] == str(house / "requirements.lock")
    assert reqs == [["torch==2.13.0+cu128", "unsloth==2026.10.7"]]
