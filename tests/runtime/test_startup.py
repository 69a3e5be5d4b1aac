"""What a run does before anything loads, and switches that only a GPU run flips, checked without one:
the memory plan chosen from the GPU nvidia-smi reports (or refused with its numbers), the engine
arguments it hands to vLLM, and unsloth's logits switch scoped to sampling and scoring only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from submission.config import Config
from submission.runtime.memory_sizing import MemoryPlanError
from submission.runtime.startup import plan_memory_for_run
from tests.helpers import QWEN3_4B


def model_dir(tmp_path: Path, **overrides) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**QWEN3_4B, "torch_dtype": "bfloat16", **overrides}))
    return d


def state(cfg: Config) -> SimpleNamespace:
    return SimpleNamespace(cfg=cfg, info={}, chunk_size=cfg.sampling.max_loras)


def fake_gpu(monkeypatch, gib: float | None, cc=(8, 9)) -> None:
    import submission.model.backends as backends
    import submission.runtime.memory as memory

    monkeypatch.setattr(memory, "detect_gpu", lambda: None if gib is None else (gib, cc))
    monkeypatch.setattr(backends, "installed", lambda name: True)


def test_l4_gets_a_plan_that_fits_and_vllm_gets_its_numbers(tmp_path, monkeypatch):
    fake_gpu(monkeypatch, 22.5)
    st = state(Config().with_overrides(["model.max_seq_len=8192"]))
    plan_memory_for_run(st, model_dir(tmp_path, vocab_size=16))
    plan, kw = st.info["memory_plan"], st.info["engine_kwargs"]
    assert plan["fits"] and plan["kv_tokens"] >= 8192
    assert kw["gpu_memory_utilization"] == plan["gpu_memory_utilization"] > 0.45
    assert kw["max_loras"] == kw["max_cpu_loras"] == plan["max_loras"] == st.chunk_size
    assert kw["max_model_len"] == 8192


def test_a_plan_that_cannot_fit_stops_before_anything_loads(tmp_path, monkeypatch):
    fake_gpu(monkeypatch, 15.0, (7, 5))  # a T4: Qwen3-4B with its full vocabulary and a trainer
    st = state(Config().with_overrides(["sampling.backend=vllm"]))  # asked for: no other layout
    with pytest.raises(MemoryPlanError, match="GiB"):
        plan_memory_for_run(st, model_dir(tmp_path))
    assert "engine_kwargs" not in st.info


# --- machines faked through the probes the code reads (nvidia-smi, torch's build) ----------------

T4 = ("Tesla T4", 15360, "7.5")
L4 = ("NVIDIA L4", 23034, "8.9")


def fake_machine(monkeypatch, gpus, *, driver="570.86.15", cuda="12.8") -> None:
    """nvidia-smi answers for `gpus` (name, MiB, capability); vLLM counts as installed."""
    import submission.model.backends as backends
    from submission.runtime import machine

    def run(cmd):
        if cmd == ["nvidia-smi"]:
            return f"| NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda} |\n"
        query = next((c for c in cmd if c.startswith("--query-gpu=")), "")
        fields = {"index": lambda i, g: str(i), "name": lambda i, g: g[0],
                  "memory.total": lambda i, g: str(g[1]), "compute_cap": lambda i, g: g[2],
                  "driver_version": lambda i, g: driver}
        cols = query[len("--query-gpu="):].split(",")
        return "".join(", ".join(fields[c](i, g) for c in cols) + "\n" for i, g in enumerate(gpus))

    monkeypatch.setattr(machine, "_run", run)
    monkeypatch.setattr(backends, "installed", lambda name: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_one_t4_samples_with_transformers_and_plans_the_trainer_alone(tmp_path, monkeypatch):
    """vLLM runs on a T4, but a 4B model's vLLM and trainer do not fit 15 GiB together: auto takes
    the transformers sampler, planned for what runs (it used to raise MemoryPlanError)."""
    fake_machine(monkeypatch, [T4])
    model = model_dir(tmp_path)
    for cfg in (Config(), Config().with_overrides(["model.max_seq_len=4096"])):
        st = state(cfg)
        plan_memory_for_run(st, model)
        plan = st.info["memory_plan"]
        assert plan["fits"] and plan["sampler"] == "transformers" and plan["gpu_gib"] == 15.0
        assert plan["dtype"] == "float16" and plan["gpu_memory_utilization"] == 0
        assert st.cfg.sampling.backend == "transformers"
        assert any("do not fit one 15.00 GiB GPU together" in n for n in plan["notes"])
        assert plan["trainer_gib"] + plan["kv_one_seq_gib"] + plan["cuda_contexts_gib"] \
            + plan["margin_gib"] <= 15.0


def test_two_t4_give_each_worker_its_own_gpu_and_the_layout_that_fits(tmp_path, monkeypatch):
    from submission.tools import kaggle
    from submission.runtime.workers import worker_env

    fake_machine(monkeypatch, [T4, T4])
    monkeypatch.setattr(kaggle, "gpu_count", lambda: len(kaggle_gpus()))
    model = model_dir(tmp_path)
    st = state(Config())
    plan_memory_for_run(st, model)  # the supervisor: nvidia-smi's first GPU
    assert st.info["memory_plan"]["sampler"] == "transformers" and st.info["memory_plan"]["fits"]
    gpus = kaggle.gpu_count()
    assert gpus == 2
    for wid in range(gpus):  # each worker sees one T4 and would plan the same
        env = worker_env(wid, gpus, tmp_path)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env["CUDA_VISIBLE_DEVICES"])
        assert env["CUDA_VISIBLE_DEVICES"] == str(wid)
        from submission.runtime.memory import detect_gpu

        assert detect_gpu() == (15.0, (7, 5))
    for forced in ("sampling.backend=vllm", "sampling.gpu_memory_utilization=0.5"):
        with pytest.raises(MemoryPlanError):  # vLLM asked for or sized by hand: refused, not replaced
            plan_memory_for_run(state(Config().with_overrides([forced])), model)


def kaggle_gpus():
    from submission.runtime.machine import nvidia_gpus

    return nvidia_gpus()


def test_four_l4_keep_vllm_beside_the_trainer(tmp_path, monkeypatch):
    fake_machine(monkeypatch, [L4] * 4, driver="580.65.06", cuda="13.0")
    cfg = Config()
    st = state(cfg)
    plan_memory_for_run(st, model_dir(tmp_path, vocab_size=16))
    plan, kw = st.info["memory_plan"], st.info["engine_kwargs"]
    assert plan["sampler"] == "vllm" and plan["fits"] and plan["gpu_gib"] == pytest.approx(22.49, abs=0.01)
    assert kw["max_loras"] == st.chunk_size == 8 and kw["gpu_memory_utilization"] > 0.45
    assert st.cfg == cfg  # nothing switched
    from submission.model.backends import choose_sampler_backend

    assert choose_sampler_backend("auto") == "vllm"


def test_vllm_is_not_refused_by_compute_capability(monkeypatch):
    """auto used to pick transformers on any GPU below 8.0; vLLM 0.32.0 runs on 7.5."""
    import submission.model.backends as backends

    monkeypatch.setattr(backends, "installed", lambda name: name == "vllm")
    monkeypatch.setattr(backends, "has_cuda", lambda: True)
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))
    assert backends.choose_sampler_backend("auto") == "vllm"
    monkeypatch.setattr(backends, "installed", lambda name: False)
    assert backends.choose_sampler_backend("auto") == "transformers"


def test_worker_env_gives_each_worker_its_own_vllm_cache(tmp_path):
    from submission.runtime.workers import worker_env

    envs = [worker_env(w, 2, tmp_path / "work", tmp_path / "scratch") for w in range(3)]
    roots = [e["VLLM_CACHE_ROOT"] for e in envs]
    assert len(set(roots)) == 3 and all(Path(r).is_absolute() for r in roots)
    assert all(Path(r).is_relative_to(tmp_path / "scratch") for r in roots)
    assert len({e["UNSLOTH_COMPILE_LOCATION"] for e in envs}) == 3
    assert Path(worker_env(0, 0, tmp_path / "work")["VLLM_CACHE_ROOT"]).is_relative_to(tmp_path / "work")


def test_without_a_gpu_the_plan_is_skipped_and_said_so(tmp_path, monkeypatch):
    fake_gpu(monkeypatch, None)
    st = state(Config())
    plan_memory_for_run(st, model_dir(tmp_path))
    assert st.info["memory_plan"] == {"skipped": "no NVIDIA GPU visible"}
    kw = st.info["engine_kwargs"]
    assert 0 < kw["gpu_memory_utilization"] <= 1 and kw["max_cpu_loras"] == kw["max_loras"]


def test_unsloth_logits_switch_is_set_only_around_sampling_and_scoring(monkeypatch):
    """UNSLOTH_RETURN_LOGITS makes unsloth's forward materialise logits: needed to sample and score,
    a memory cost while training. It must be on inside those calls and off again after."""
    from submission.model.backends.hf_sampler import LOGITS_ENV, HFSampler

    monkeypatch.delenv(LOGITS_ENV, raising=False)
    seen = []

    class Model:
        def disable_adapter(self):
            import contextlib

            return contextlib.nullcontext()

        def __call__(self, input_ids, use_cache=None):
            import torch

            seen.append((os.environ.get(LOGITS_ENV), use_cache))
            return SimpleNamespace(logits=torch.zeros(1, input_ids.shape[1], 4))

    import torch

    trainer = SimpleNamespace(model=Model(), backend="unsloth", device=torch.device("cpu"),
                              set_mode=lambda training: None)
    sampler = HFSampler(trainer, stop_ids=[0], pad_id=0)
    assert os.environ.get(LOGITS_ENV) is None  # creating the sampler flips nothing
    sampler.score([1, 2], [3], None)
    assert seen == [("1", False)]  # on during scoring, and the scoring forward keeps no cache
    assert os.environ.get(LOGITS_ENV) is None
    trainer.backend = "peft"
    sampler.score([1, 2], [3], None)
    assert seen[-1] == (None, False)


# --- a GPU that torch cannot use (CUDA 13 torch on a driver below 580) ----------------------------

TASK = {"train": [{"input": [[0, 1]], "output": [[1, 0]]}], "test": [{"input": [[1, 1]]}]}


def challenges_file(tmp_path: Path) -> Path:
    path = tmp_path / "arc-agi_test_challenges.json"
    path.write_text(json.dumps({"t1": TASK, "t2": TASK}))
    return path


def no_engine(monkeypatch) -> None:
    """Nothing may build an engine, train or sample: the run must stop before."""
    from submission.model import engine
    from submission.runtime import workers

    def refuse(*args, **kwargs):
        raise AssertionError("an engine was started on a GPU torch cannot use")

    monkeypatch.setattr(engine, "build_engine", refuse)  # run_here imports it when it runs
    monkeypatch.setattr(workers, "supervise", refuse)


def cuda13_torch(monkeypatch, *, available: bool = False) -> None:
    from submission.runtime import machine

    monkeypatch.setattr(machine, "torch_build", lambda: {"version": "2.13.0", "cuda": "13.0"})
    monkeypatch.setattr(machine, "torch_info", lambda: {
        "version": "2.13.0", "cuda": "13.0", "cuda_available": available, "gpus": []})


def test_supervisor_sees_a_cuda13_torch_on_a_570_driver_and_writes_placeholders_at_once(
        tmp_path, monkeypatch, tiny_model):
    from submission.tools.kaggle import smoke_verdict
    from submission.runtime.run import run

    fake_machine(monkeypatch, [L4] * 4, driver="570.86.15", cuda="12.8")
    cuda13_torch(monkeypatch)
    no_engine(monkeypatch)
    out = tmp_path / "submission.json"
    report = run(challenges_file(tmp_path), tiny_model, out, tmp_path / "work",
                 Config().with_overrides(["budget.workers=2"]))
    assert report["fallbacks"]["gpu_unusable"] == 2
    fault = next(f for f in report["faults"] if f["stage"] == "gpu")
    assert "580" in fault["error"] and "570.86.15" in fault["error"]
    assert json.loads((tmp_path / "work" / "run.json").read_text())["gpu_unusable"] == fault["error"]
    sub = json.loads(out.read_text())
    assert sorted(sub) == ["t1", "t2"]  # valid: every task answered with placeholders
    problems = smoke_verdict(report)
    assert any(p.startswith("gpu_unusable x2") for p in problems)  # a commit run fails


def test_a_gpu_torch_cannot_use_still_gets_the_lanes_answers(tmp_path, monkeypatch, tiny_model):
    """The fastest valid submission without a usable GPU: nothing trains on the CPU, but the
    program-search lane (CPU only) answers the tasks it finds a program for; the rest keep
    placeholders, and the commit run still fails."""
    from submission.arc.grids import grid_to_list
    from submission.tools.kaggle import smoke_verdict
    from submission.runtime.run import run
    from submission.arc.tasks import export_kaggle
    from tests.helpers import flip_task, noise_task

    fake_machine(monkeypatch, [L4] * 4, driver="570.86.15", cuda="12.8")
    cuda13_torch(monkeypatch)
    no_engine(monkeypatch)
    tasks = {"flip0001": flip_task("flip0001", 1), "noise002": noise_task("noise002", 2)}
    challenges, _ = export_kaggle(tasks, tmp_path / "data", "evaluation")
    out = tmp_path / "submission.json"
    cfg = Config().with_overrides(["budget.workers=2", "lane.processes=1", "lane.task_cap_s=5"])
    report = run(challenges, tiny_model, out, tmp_path / "work", cfg)
    sub = json.loads(out.read_text())
    assert sub["flip0001"][0]["attempt_1"] == grid_to_list(tasks["flip0001"].test_outputs[0])
    assert sub["noise002"][0] == {"attempt_1": [[0]], "attempt_2": [[0]]}
    assert report["fallbacks"]["gpu_unusable"] == 2
    assert report["fallbacks"]["tasks_answered_by_lane_only"] == 1
    assert report["lane"]["found"] == 1 and report["per_task"]["flip0001"]["lane"]["found"]
    assert any(p.startswith("gpu_unusable x2") for p in smoke_verdict(report))


def test_in_process_run_asks_torch_itself(tmp_path, monkeypatch, tiny_model):
    """A CUDA 12.8 torch the driver should run, yet torch.cuda.is_available() is False."""
    from submission.runtime import machine
    from submission.runtime.run import run

    fake_machine(monkeypatch, [T4], driver="570.86.15", cuda="12.8")
    monkeypatch.setattr(machine, "torch_info", lambda: {
        "version": "2.13.0+cu128", "cuda": "12.8", "cuda_available": False, "gpus": []})
    no_engine(monkeypatch)
    report = run(challenges_file(tmp_path), tiny_model, tmp_path / "s.json", tmp_path / "work",
                 Config().with_overrides(["budget.workers=0"]))
    assert report["fallbacks"]["gpu_unusable"] == 2
    assert any("torch.cuda.is_available() is False" in f["error"] for f in report["faults"])


def test_a_worker_checks_before_loading_anything_and_the_supervisor_stops(monkeypatch):
    import signal
    from collections import Counter
    from types import SimpleNamespace

    from submission.runtime import workers
    from submission.runtime.messages import Unusable
    from submission.worker import main as worker

    fake_machine(monkeypatch, [L4], driver="550.54.15", cuda="12.4")
    cuda13_torch(monkeypatch, available=False)
    sent = []
    outbox = SimpleNamespace(send=sent.append)
    # the supervisor watch is tested on a real process (test_hostile_safety); here it would stay
    # behind as a thread of the test process
    monkeypatch.setattr(worker, "exit_with_supervisor", lambda pid: None)
    # worker_main installs a worker's signal dispositions (Ctrl-C ignored: the supervisor's to
    # handle); in this test process they would outlive the test and be inherited by every later
    # test's subprocess, which then could not be interrupted
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker.worker_main(3, {}, {"cfg": None, "supervisor": 1}, None, outbox)  # returns before
        # reading anything else of the job
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert sent and isinstance(sent[0], Unusable) and "580" in sent[0].reason
    st = SimpleNamespace(faults=[], fallbacks=Counter())
    h = workers.Handle(3, None, None, None)
    info: dict = {}
    workers._handle(sent[0], h, st, None, None, info, lambda h: None)
    assert st.faults == [{"stage": "gpu", "worker": 3, "error": sent[0].reason}]
    assert info["gpu_unusable"] == sent[0].reason and h.respawns == workers.MAX_RESPAWNS_PER_WORKER


def test_usable_gpus_and_cpu_machines_are_not_flagged(monkeypatch):
    from submission.runtime import machine
    from submission.runtime.startup import gpu_unusable_reason

    fake_machine(monkeypatch, [L4], driver="580.65.06", cuda="13.0")
    cuda13_torch(monkeypatch, available=True)
    assert gpu_unusable_reason(import_torch=False) is None
    assert gpu_unusable_reason(import_torch=True) is None
    monkeypatch.setattr(machine, "_run", lambda cmd: None)  # no nvidia-smi: a CPU machine
    assert gpu_unusable_reason(import_torch=True) is None
    fake_machine(monkeypatch, [L4], driver="580.65.06", cuda="13.0")
    monkeypatch.setattr(machine, "torch_build", lambda: {"version": "2.13.0+cpu", "cuda": None})
    assert "CPU build" in gpu_unusable_reason(import_torch=False)


def test_torch_build_is_read_without_importing_torch():
    from submission.runtime.machine import torch_build

    import torch

    b = torch_build()
    assert b == {"version": torch.__version__, "cuda": torch.version.cuda}


# --- unsloth's process-wide torch settings around vLLM's start -----------------------------------

FAKE_UNSLOTH = '''
import os
import torch._dynamo.config as dynamo
import torch._inductor.config as inductor

# as unsloth_zoo/patching_utils.py:250-299 and unsloth_zoo/__init__.py:319-322 do on import
inductor.memory_planning = True
inductor.memory_pool = "none"
inductor.dce = True
inductor.cuda.use_fast_math = True
dynamo.suppress_errors = True
dynamo.cache_size_limit = 1024
dynamo.capture_scalar_outputs = True
os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
'''


def test_unsloth_torch_settings_are_reset_for_vllm_start_restored_and_recorded(tmp_path, monkeypatch):
    import sys

    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    from submission.model import engine as engine_mod
    from submission.model.backends import hf_sampler
    from submission.model.backends.torch_settings import torch_settings

    (tmp_path / "fake_unsloth.py").write_text(FAKE_UNSLOTH)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_unsloth", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    pristine = torch_settings()
    seen = {}

    def load_trainer(model_path, cfg):
        import fake_unsloth  # noqa: F401 - the import changes the settings, as unsloth's does

        rows = SimpleNamespace(get_input_embeddings=lambda: SimpleNamespace(num_embeddings=16))
        return SimpleNamespace(pad_id=0, model=rows), None, {"trainer_backend": "unsloth"}

    def start_vllm(model_path, cfg, fmt, engine_kwargs=None):
        seen.update(torch_settings())
        dynamo.cache_size_limit = 2048  # vLLM sets one of them itself while it starts
        return "vllm-sampler"

    monkeypatch.setattr(engine_mod, "load_trainer", load_trainer)
    monkeypatch.setattr(engine_mod, "start_vllm", start_vllm)
    monkeypatch.setattr(engine_mod, "choose_sampler_backend", lambda requested: "vllm")
    monkeypatch.setattr(engine_mod, "get_format", lambda *a, **k: SimpleNamespace(
        name="fake", stop_token_ids=[0]))
    monkeypatch.setattr(engine_mod, "check_format_ids", lambda *a: None)  # no model to check
    monkeypatch.setattr(hf_sampler, "HFSampler", lambda trainer, **kw: "forward")
    try:
        eng = engine_mod.build_engine(tmp_path, Config())
        after = torch_settings()
    finally:
        for name, value in pristine.items():  # leave the real torch settings as they were
            section, key = name.split(".", 1)
            target = inductor if section == "inductor" else dynamo
            *path, last = key.split(".")
            for part in path:
                target = getattr(target, part)
            setattr(target, last, value)
    assert eng.sampler == "vllm-sampler"
    assert seen == pristine  # vLLM compiled under torch's own settings
    assert after["inductor.memory_planning"] is True and after["dynamo.suppress_errors"] is True
    assert after["inductor.cuda.use_fast_math"] is True  # the trainer's back
    assert after["dynamo.cache_size_limit"] == 2048  # what vLLM set is kept
    rec = eng.info["torch_settings"]
    assert rec["changed_by_trainer"]["inductor.memory_planning"] == [False, True]
    assert set(rec["reset_for_vllm_start"]) >= {"inductor.memory_planning", "inductor.memory_pool",
                                                "dynamo.suppress_errors", "dynamo.capture_scalar_outputs"}
    kept = set(rec["kept_from_vllm"])  # recompile_limit is cache_size_limit's alias in torch 2.13
    assert "dynamo.cache_size_limit" in kept <= {"dynamo.cache_size_limit", "dynamo.recompile_limit"}
    assert rec["alloc_env"] == {"PYTORCH_ALLOC_CONF": "expandable_segments:True"}
    json.dumps(rec)  # goes into run.json with the engine's info ("backends")


@pytest.mark.parametrize("mode, code", [("--smoke", 1), ("--full", 0)])
def test_kaggle_commit_run_fails_and_the_rerun_keeps_placeholders(tmp_path, monkeypatch, tiny_model,
                                                                  capsys, mode, code):
    from submission import cli

    fake_machine(monkeypatch, [L4] * 4, driver="570.86.15", cuda="12.8")
    cuda13_torch(monkeypatch)
    no_engine(monkeypatch)
    root = tmp_path / "input"
    (root / "comp").mkdir(parents=True)
    (root / "comp" / "arc-agi_test_challenges.json").write_text(json.dumps({"t1": TASK}))
    work = tmp_path / "working"
    assert cli.main(["kaggle", "--input-root", str(root), "--working", str(work),
                     "--model", str(tiny_model), mode]) == code
    err = capsys.readouterr().err
    assert json.loads((work / "submission.json").read_text()).keys() == {"t1"}
    assert ("SMOKE RUN FAILED" in err and "gpu_unusable x1" in err) == (mode == "--smoke")
