"""Tests of submission.tools.gpu_check, submission.runtime.machine and the `gpu-check` command: driver and torch
checks on made-up machines, the adapter-routing verdict, the memory plan's fallbacks, the report
when the engine cannot be built (no model needed), and (slow) the whole check on CPU with the tiny
model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from submission import cli
from submission.tools import gpu_check as gc
from submission.runtime import machine
from submission.worker.calibrate import RATE_KEYS, load_calibration
from submission.config import Config
from tests.helpers import small_sets

ROOT = Path(__file__).resolve().parents[2]


def env_of(*, driver=None, torch_cuda="13.0", available=True, gpus=1, cap="8.9") -> dict:
    torch = {"version": f"2.13.0+cu{torch_cuda.replace('.', '')}" if torch_cuda else "2.13.0+cpu",
             "cuda": torch_cuda, "cuda_available": available,
             "gpus": [{"index": i, "name": "NVIDIA L4", "memory_gib": 22.0, "capability": cap,
                       "bf16": int(cap.split(".")[0]) >= 8} for i in range(gpus if available else 0)]}
    drv = None if driver is None else {"version": driver, "cuda": "12.4", "source": "nvidia-smi", "gpus": []}
    return {"python": "3.11", "platform": "linux", "packages": {"torch": "2.13.0"}, "driver": drv,
            "torch": torch}


def statuses(checks: gc.Checks) -> dict[str, str]:
    return {c.name: c.status for c in checks.items}


# --- driver and torch --------------------------------------------------------------------------

def test_old_driver_with_cuda13_torch_fails_and_says_why():
    checks = gc.Checks(lambda m: None)
    gc.check_torch(env_of(driver="550.54.15", torch_cuda="13.0", available=False), checks)
    assert statuses(checks) == {"driver": "fail", "torch": "fail"}
    driver = checks.items[0]
    assert "580" in driver.detail and "550.54.15" in driver.detail
    assert driver.data["min_driver"] == 580
    assert "torch.cuda.is_available() is False" in checks.items[1].detail


def test_new_driver_passes():
    checks = gc.Checks(lambda m: None)
    gc.check_torch(env_of(driver="580.65.06", torch_cuda="13.0", available=True, gpus=4), checks)
    assert statuses(checks) == {"driver": "pass", "torch": "pass"}
    assert "4 GPU" in checks.items[1].detail


def test_cuda12_torch_on_a_550_driver_passes():
    checks = gc.Checks(lambda m: None)
    gc.check_torch(env_of(driver="550.54.15", torch_cuda="12.8"), checks)
    assert statuses(checks) == {"driver": "pass", "torch": "pass"}


def test_cpu_torch_on_a_gpu_machine_fails():
    checks = gc.Checks(lambda m: None)
    gc.check_torch(env_of(driver="580.1", torch_cuda=None, available=False), checks)
    assert statuses(checks)["torch"] == "fail" and "CPU build" in checks.items[-1].detail


def test_cpu_machine_passes():
    lines = []
    checks = gc.Checks(lines.append)
    gc.check_torch(env_of(driver=None, torch_cuda=None, available=False), checks)
    assert statuses(checks) == {"torch": "pass"}
    assert lines and lines[0].startswith("[PASS] torch:")


def test_torch_missing_fails():
    checks = gc.Checks(lambda m: None)
    env = env_of()
    env["torch"] = {"error": "torch is not importable: No module named 'torch'"}
    gc.check_torch(env, checks)
    assert statuses(checks) == {"torch": "fail"}


def test_describe_environment_names_everything():
    text = "\n".join(machine.describe_environment(env_of(driver="550.54.15", gpus=2)))
    for part in ("python 3.11", "torch 2.13.0", "CUDA 13.0", "driver 550.54.15", "GPU 1: NVIDIA L4",
                 "22.0 GiB", "compute capability 8.9"):
        assert part in text
    assert "none found" in "\n".join(machine.describe_environment(env_of(torch_cuda=None, available=False)))


def test_nvidia_driver_from_nvidia_smi(monkeypatch):
    def fake_run(cmd):
        if "--query-gpu=driver_version,name,memory.total" in cmd:
            return "550.54.15, NVIDIA L4, 23034\n550.54.15, NVIDIA L4, 23034\n"
        return "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |\n"

    monkeypatch.setattr(machine, "_run", fake_run)
    d = machine.nvidia_driver()
    assert d["version"] == "550.54.15" and d["cuda"] == "12.4" and d["source"] == "nvidia-smi"
    assert len(d["gpus"]) == 2 and d["gpus"][0]["name"] == "NVIDIA L4"
    assert d["gpus"][0]["memory_gib"] == pytest.approx(22.49, abs=0.01)


@pytest.mark.parametrize("text, version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n",
     "550.54.15"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n", "580.65.06"),
])
def test_nvidia_driver_from_proc(monkeypatch, tmp_path, text, version):
    (tmp_path / "version").write_text(text)
    monkeypatch.setattr(machine, "_run", lambda cmd: None)
    monkeypatch.setattr(machine, "PROC_DRIVER_VERSION", str(tmp_path / "version"))
    assert machine.nvidia_driver() == {"version": version, "cuda": None, "source": str(tmp_path / "version"),
                                  "gpus": []}


def test_no_driver(monkeypatch, tmp_path):
    monkeypatch.setattr(machine, "_run", lambda cmd: None)
    monkeypatch.setattr(machine, "PROC_DRIVER_VERSION", str(tmp_path / "absent"))
    assert machine.nvidia_driver() is None


def test_run_helper_survives_a_missing_program():
    assert machine._run(["/nonexistent/nvidia-smi"]) is None


# --- backends and memory ---------------------------------------------------------------------

def test_explain_backends_on_cpu():
    b = gc.explain_backends(Config())
    assert b["trainer"] == "peft" and "no CUDA GPU" in b["trainer_why"]
    assert b["dtype"] == "float32" and "auto" in b["dtype_why"]
    forced = gc.explain_backends(Config().with_overrides(["sampling.backend=transformers",
                                                          "ttt.backend=peft"]))
    assert forced["sampler"] == "transformers" and forced["sampler_why"] == "sampling.backend=transformers"
    assert forced["trainer_why"] == "ttt.backend=peft"


def test_unavailable_backend_is_a_failed_check():
    checks = gc.Checks(lambda m: None)
    cfg = Config().with_overrides(["ttt.backend=unsloth"])
    assert checks.attempt("backends", lambda: gc.explain_backends(cfg)) is None
    assert statuses(checks) == {"backends": "fail"} and "BackendUnavailable" in checks.items[0].detail


def test_memory_plan_skipped_without_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "_run", lambda cmd: None)  # no nvidia-smi
    lines = []
    checks = gc.Checks(lines.append)
    cfg = Config()
    assert gc.check_memory(tmp_path, cfg, checks, lines.append) == (None, cfg)
    assert statuses(checks) == {"memory_plan": "skip"}
    assert any(m.startswith("memory plan unavailable: no NVIDIA GPU") for m in lines)


def _fake_memory(monkeypatch, plan_memory):
    module = types.ModuleType("submission.runtime.memory")
    module.plan_memory = plan_memory
    module.detect_gpu = lambda: (22.0, (8, 9))
    module.format_plan = lambda plan: "FITS: a table\nnote: a note"
    monkeypatch.setitem(sys.modules, "submission.runtime.memory", module)


def test_memory_plan_that_raises_is_reported_and_the_check_goes_on(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ValueError("config.json has no hidden_size")

    _fake_memory(monkeypatch, broken)
    lines = []
    checks = gc.Checks(lines.append)
    assert gc.check_memory(tmp_path, Config(), checks, lines.append)[0] is None
    assert "memory plan unavailable: ValueError: config.json has no hidden_size" in lines
    assert statuses(checks) == {"memory_plan": "warn"}


def test_memory_plan_module_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "submission.runtime.memory", None)  # import raises ImportError
    lines = []
    checks = gc.Checks(lines.append)
    assert gc.check_memory(tmp_path, Config(), checks, lines.append)[0] is None
    assert any(m.startswith("memory plan unavailable:") for m in lines)


def _model(tmp_path, **changes) -> Path:
    from tests.helpers import QWEN3_4B

    (tmp_path / "config.json").write_text(json.dumps({**QWEN3_4B, **changes}))
    return tmp_path


def _smi(monkeypatch, mib: int, cap: str) -> None:
    import submission.model.backends as backends

    def run(cmd):
        if "--query-gpu=index,memory.total,compute_cap" in cmd:
            return f"0, {mib}, {cap}\n"
        return None

    monkeypatch.setattr(machine, "_run", run)
    monkeypatch.setattr(backends, "installed", lambda name: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_memory_plan_that_fits_gives_vllm_its_arguments(monkeypatch, tmp_path):
    _smi(monkeypatch, 23034, "8.9")
    lines = []
    checks = gc.Checks(lines.append)
    kwargs, cfg = gc.check_memory(_model(tmp_path, vocab_size=16), Config(), checks, lines.append)
    assert kwargs["max_loras"] == 8 and 0.45 < kwargs["gpu_memory_utilization"] <= 0.92
    assert statuses(checks) == {"memory_plan": "pass"} and any(m.startswith("  FITS:") for m in lines)
    assert cfg == Config()
    forced = Config().with_overrides(["sampling.max_loras=8", "model.max_seq_len=65536",
                                      "sampling.backend=vllm"])
    checks = gc.Checks(lines.append)
    assert gc.check_memory(_model(tmp_path, vocab_size=16), forced, checks, lines.append)[0] is None
    assert statuses(checks) == {"memory_plan": "fail"} and "GiB" in checks.items[0].detail


def test_gpu_check_and_run_plan_with_the_same_gpu_memory_figure(monkeypatch, tmp_path):
    """torch's total_memory (env) and nvidia-smi's memory.total differ; both commands must use one."""
    from types import SimpleNamespace

    from submission.runtime.startup import plan_memory_for_run

    _smi(monkeypatch, 23034, "8.9")
    model = _model(tmp_path, vocab_size=16)
    checks = gc.Checks(lambda m: None)
    gc.check_memory(model, Config(), checks, lambda m: None)
    st = SimpleNamespace(cfg=Config(), info={}, chunk_size=8)
    plan_memory_for_run(st, model)
    check_plan = checks.items[0].data["plan"]
    assert check_plan["gpu_gib"] == st.info["memory_plan"]["gpu_gib"] == pytest.approx(23034 / 1024, abs=1e-3)
    assert check_plan == st.info["memory_plan"]


def test_a_t4_check_plans_the_layout_the_run_uses(monkeypatch, tmp_path):
    _smi(monkeypatch, 15360, "7.5")
    lines = []
    checks = gc.Checks(lines.append)
    kwargs, cfg = gc.check_memory(_model(tmp_path), Config(), checks, lines.append)
    assert kwargs is None and cfg.sampling.backend == "transformers"
    assert statuses(checks) == {"memory_plan": "pass"} and "sampler transformers" in checks.items[0].detail


# --- the routing verdict -------------------------------------------------------------------------

def row(adapter, logprob, **forward):
    return {"adapter": adapter, "tokens": 5, "logprob": logprob, "forward": forward}


def test_routing_exact_passes():
    rows = [row("A", -10.0, A=-10.0001, B=-14.0, none=-20.0),
            row("none", -20.0, A=-10.0, B=-14.0, none=-20.0)]
    status, detail = gc._routing_verdict(rows, trivial=False)
    assert status == "pass" and "2 answers" in detail


def test_routing_to_the_wrong_adapter_fails():
    rows = [row("A", -14.0, A=-10.0, B=-14.01, none=-20.0)]
    status, detail = gc._routing_verdict(rows, trivial=False)
    assert status == "fail" and "asked A, looks like B" in detail
    rows = [row("none", -10.0, A=-10.0, B=-14.0, none=-20.0)]  # the base prompt got adapter A
    assert gc._routing_verdict(rows, trivial=False)[0] == "fail"


def test_routing_noise_but_nearest_own_adapter_warns():
    rows = [row("A", -10.5, A=-10.0, B=-14.0, none=-20.0)]
    status, detail = gc._routing_verdict(rows, trivial=False)
    assert status == "warn" and "0.5" in detail


def test_routing_indistinguishable_adapters_do_not_fail():
    rows = [row("A", -10.2, A=-10.0, B=-10.0, none=-10.0)]
    assert gc._routing_verdict(rows, trivial=False)[0] == "warn"


def test_routing_trivial_when_sampler_is_the_forward_pass():
    assert gc._routing_verdict([row("A", -1.0, A=-5.0)], trivial=True)[0] == "pass"


# --- the whole check without a model ---------------------------------------------------------

def fake_model_dir(root: Path) -> Path:
    """Enough of a model directory to pass the file checks (config, tokenizer, a real safetensors)."""
    import numpy as np
    from safetensors.numpy import save_file

    d = root / "model"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(d / "model.safetensors"))
    return d


def test_engine_failure_is_reported_and_written(monkeypatch, tmp_path):
    import submission.model.engine

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(submission.model.engine, "build_engine", broken)
    out = tmp_path / "out"
    out.mkdir()
    (out / "calibration.json").write_text("{}")  # from an older machine: must not survive
    lines = []
    report = gc.gpu_check(fake_model_dir(tmp_path), Config(), out_dir=out, log=lines.append)
    assert report["ok"] is False and "engine" in report["failed"]
    by_name = {c["name"]: c for c in report["checks"]}
    assert "no kernel image" in by_name["engine"]["detail"]
    for name in ("train", "save", "sample_two_adapters", "sample_no_adapter", "score", "calibration"):
        assert by_name[name]["status"] == "skip"
    assert not (out / "calibration.json").exists()
    written = json.loads((out / "gpu_check.json").read_text())
    assert written["failed"] == report["failed"] and written["environment"]["python"]
    assert lines[-1].startswith("gpu-check FAILED: ") and "engine" in lines[-1]


def test_cli_gpu_check_exit_codes(monkeypatch, tmp_path, capsys):
    import submission.model.engine

    monkeypatch.setattr(submission.model.engine, "build_engine",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no engine")))
    model = fake_model_dir(tmp_path)
    code = cli.main(["gpu-check", "--model", str(model), "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert code == 1
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] is False and "engine" in summary["failed"] and summary["calibration"] is None
    assert "[FAIL] engine: RuntimeError: no engine" in err
    # the model is found under --input-root when --model is not given
    root = tmp_path / "input"
    found = fake_model_dir(root / "models" / "m")
    assert cli.main(["gpu-check", "--input-root", str(root), "--out", str(tmp_path / "o2")]) == 1
    assert json.loads((tmp_path / "o2" / "gpu_check.json").read_text())["model"] == str(found)


def test_cli_gpu_check_without_model_exits_2(tmp_path, capsys):
    assert cli.main(["gpu-check", "--input-root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no model directory" in capsys.readouterr().err
    assert cli.main(["gpu-check", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2


# --- the whole check on CPU (tiny model, vLLM CPU) -------------------------------------------

# The tests' adapter shape and slots (tests/helpers.py), a shorter context and fewer sequences.
SMALL_SETS = [*small_sets("ttt.lora.r", "ttt.lora.alpha"), "model.max_seq_len=1024",
              *small_sets("sampling.max_loras"), "sampling.max_num_seqs=8"]


@pytest.mark.slow
def test_gpu_check_on_cpu_with_the_tiny_model(tiny_model, tmp_path):
    out = tmp_path / "check"
    argv = [sys.executable, "-m", "submission", "gpu-check", "--model", str(tiny_model), "--out", str(out),
            "--steps", "2", "--grid-side", "5"]
    for s in SMALL_SETS:
        argv += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    report = json.loads((out / "gpu_check.json").read_text())
    by_name = {c["name"]: c for c in report["checks"]}
    assert r.returncode == 0, [(c["name"], c["status"], c["detail"]) for c in report["checks"]]
    assert report["ok"] is True and report["failed"] == []
    for name in ("torch", "backends", "engine", "vllm_start", "train", "save", "sample_two_adapters",
                 "sample_no_adapter", "score", "calibration"):
        assert by_name[name]["status"] == "pass", by_name[name]
    assert by_name["memory_plan"]["status"] == "skip"  # no GPU: nothing to plan
    assert by_name["train"]["data"]["steps"] == [2, 2]
    # on CPU (fp32, the same weights) vLLM's answers match the forward pass under their own adapter
    rows = by_name["sample_two_adapters"]["data"]["rows"]
    assert [r["adapter"] for r in rows] == ["A", "B", "B", "A"]
    assert all(abs(r["logprob"] - r["forward"][r["adapter"]]) < 1e-2 for r in rows if r["forward"])
    cal = load_calibration(out / "calibration.json")
    assert all(cal[k] > 0 for k in RATE_KEYS) and cal["model"] == str(tiny_model)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary == {"ok": True, "failed": [], "warnings": report["warnings"],
                       "report": str(out / "gpu_check.json"), "calibration": str(out / "calibration.json")}
    assert "torch 2.13.0" in r.stderr and "[PASS] train" in r.stderr and "gpu-check PASSED" in r.stderr
