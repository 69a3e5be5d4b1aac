"""One failing part never costs more than its own task, and nothing of a failure lingers (CPU, tiny
model, the session's shared engine): stale vLLM outputs after a failed call, vLLM that will not
start, an error in the middle of TTT, a full disk at save and at record time, a hung stage on the
in-process path, the in-process time budget, priors far too optimistic, and bounded disk use."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from submission.arc.grids import Pair, Task, as_grid
from submission.runtime.paths import task_file_name
from submission.answers.sampling import GenRequest
from submission.arc.tasks import export_kaggle
from tests.helpers import QUICK, random_task
from tests.helpers import QUICK_RATES as RATES

pytestmark = pytest.mark.slow



def challenges(tmp: Path, ids: list[str]) -> Path:
    """A task's content depends on its id only, never on which other tasks are in the file."""
    tasks = {i: random_task(i, zlib.crc32(i.encode())) for i in ids}
    path, _ = export_kaggle(tasks, tmp / "data", "evaluation")
    return path


def run_here(engine, tmp: Path, ids: list[str], cfg=QUICK, name: str = "work", **kw) -> dict:
    from submission.runtime.run import run

    kw.setdefault("calibration", RATES)
    return run(challenges(tmp, ids), None, tmp / f"{name}.json", tmp / name, cfg, engine=engine, **kw)


def own_adapter(report: dict) -> bool:
    """Every task answered with its own trained adapter: none failed TTT, was given up or skipped
    (placeholder attempts only say that a random model's text did not parse)."""
    bad = {"ttt_failed", "tasks_given_up", "deadline_skipped_tasks"}
    return all(t["fallbacks"].get("ttt_failed", 0) == 0 and "ttt" in t
               for t in report["per_task"].values()) and not bad & set(report["fallbacks"])


# ---------------------------------------------------------------- vLLM: stale outputs


def test_failed_generate_never_leaks_outputs_into_the_next_call(engine):
    """An exception inside LLM.generate (here: from the heartbeat after the first finished request)
    leaves unfinished requests in vLLM 0.32.0's engine; the next call must still return exactly its
    own outputs, equal to those of a clean engine."""
    sampler = engine.sampler
    assert sampler.name == "vllm"
    ids = engine.fmt.encode_prompt([random_task("s", 1).train[0]], random_task("s", 1).test_inputs[0])
    first = [GenRequest(tuple(ids) + (i % 10,) * (i + 1), None, 12) for i in range(6)]
    fresh = [GenRequest(tuple(ids[-20:]), None, 9), GenRequest(tuple(ids[-30:]), None, 5)]
    expected = sampler.generate(fresh)

    class Boom(Exception):
        pass

    def explode() -> None:
        raise Boom("injected failure inside generate")

    sampler.set_beat(explode)
    with pytest.raises(Boom):
        sampler.generate(first)
    sampler.set_beat(lambda: None)
    assert not sampler.llm.llm_engine.has_unfinished_requests()
    got = sampler.generate(fresh)
    assert [g[0].ids for g in got] == [g[0].ids for g in expected]
    assert [len(g[0].ids) <= r.max_tokens for g, r in zip(got, fresh)] == [True, True]


def test_vllm_that_fails_to_start_falls_back_and_the_run_goes_on(tiny_model, tmp_path):
    """vLLM refuses a context longer than the model's positions (a real start-up ValueError): the
    engine uses the transformers sampler, the run answers every task and counts the fallback."""
    from submission.model.engine import build_engine
    from submission.runtime.run import run

    cfg = QUICK.with_overrides(["model.max_seq_len=20000", "budget.workers=0"])
    eng = build_engine(tiny_model, cfg)
    assert eng.sampler is eng.forward and eng.info["sampler_backend"] == "transformers"
    assert "max_model_len" in eng.info["vllm_start_error"] or "20000" in eng.info["vllm_start_error"]
    report = run(challenges(tmp_path, ["aa000001"]), None, tmp_path / "s.json", tmp_path / "w", cfg,
                 engine=eng, calibration=RATES)
    assert report["fallbacks"]["vllm_start_failed"] == 1
    assert any(f["stage"] == "engine_start" for f in report["faults"])
    assert own_adapter(report)


def test_vllm_that_cannot_be_rebuilt_hands_over_to_transformers(engine, tmp_path, monkeypatch):
    """A failed call left vLLM's engine needing a rebuild, and the rebuild fails (injected): the
    engine samples with transformers from then on (counted), and every task of every later chunk
    is answered with its own adapter instead of failing fast into placeholders."""
    monkeypatch.setenv("ARC_INJECT_FAULTS", "engine:vllm_rebuild")
    monkeypatch.setattr(engine, "sampler", engine.sampler)  # all restored afterwards
    monkeypatch.setattr(engine, "info", dict(engine.info))
    monkeypatch.setattr(engine.sampler, "_broken", True)
    cfg = QUICK.with_overrides(["sampling.max_loras=1"])  # two chunks
    report = run_here(engine, tmp_path, ["lost0001", "lost0002"], cfg)
    engine_info = report["backends"]["worker_info"]["0"]  # the in-process engine is worker "0"
    assert engine.sampler is engine.forward and engine_info["sampler_backend"] == "transformers"
    assert report["fallbacks"]["vllm_rebuild_failed_use_transformers"] == 1
    assert "vllm_rebuild" in engine_info["vllm_lost"]
    assert not any(f["stage"] in ("chunk", "sample") for f in report["faults"]), report["faults"]
    assert set(report["per_task"]) == {"lost0001", "lost0002"} and own_adapter(report)
    assert all(t["views"] > 0 for t in report["per_task"].values())


def test_engine_fallback_counts_reach_run_json_in_process(engine, tmp_path, monkeypatch):
    """The engine's own fallbacks (here the re-scoring check's: vLLM scoring fails) are counted in
    run.json on the in-process path, as on the worker path."""
    from submission.worker import sampling_stage
    from submission.errors import SamplerError
    from submission.answers.select import Sample

    monkeypatch.setattr(engine, "_rescore_checked", False)
    monkeypatch.setattr(engine, "_rank_check", None)

    def fail(*args, **kwargs):
        raise SamplerError("vLLM scoring failed (injected)")

    monkeypatch.setattr(engine.sampler, "score_groups", fail)

    def given(eng, state, chunk, cfgs, adapters, records):  # a random model's text rarely parses
        return {(t.id, i): [Sample(view=v, group=0, grid=as_grid(np.full((2, 2), v)), logprob=-1.0)
                            for v in range(2)] for t in chunk for i in range(t.n_test)}

    monkeypatch.setattr(sampling_stage, "sample_chunk", given)
    cfg = QUICK.with_overrides(["ttt.enabled=false", "selection.rescore_backend=auto",
                                "selection.policy=count-nll"])
    report = run_here(engine, tmp_path, ["cnt00001"], cfg)
    assert report["fallbacks"]["rescore_vllm_failed_use_forward"] == 1
    saved = json.loads((tmp_path / "work" / "run.json").read_text())
    assert saved["fallbacks"]["rescore_vllm_failed_use_forward"] == 1
    assert report["backends"]["worker_info"]["0"]["rescore_backend"] == "forward"


# ---------------------------------------------------------------- TTT leaves no state behind


def _adapter_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_error_mid_training_leaves_no_state(engine, tmp_path, monkeypatch):
    """Task A fails after its second optimizer step; task B, trained next in the same chunk, gets
    exactly the adapter it gets in the same run without the fault."""
    cfg = QUICK.with_overrides(["budget.keep_adapters=true", "ttt.max_samples=8", "ttt.grad_accum=1"])
    monkeypatch.setenv("ARC_INJECT_FAULTS", "aaaa0001:raise_mid_ttt")
    faulty = run_here(engine, tmp_path / "f", ["aaaa0001", "bbbb0002"], cfg)
    assert faulty["per_task"]["aaaa0001"]["fallbacks"]["ttt_failed"] == 1
    assert any(f.get("task") == "aaaa0001" and "raise_mid_ttt" in f["error"] for f in faulty["faults"])
    assert all(p.grad is None for p in engine.trainer.model.parameters())
    monkeypatch.delenv("ARC_INJECT_FAULTS")
    clean = run_here(engine, tmp_path / "c", ["aaaa0001", "bbbb0002"], cfg)
    assert "ttt_failed" not in clean["fallbacks"]
    assert clean["per_task"]["bbbb0002"]["ttt"]["steps"] == faulty["per_task"]["bbbb0002"]["ttt"]["steps"]
    a = _adapter_tensors(tmp_path / "f" / "work" / "adapters" / "bbbb0002")
    b = _adapter_tensors(tmp_path / "c" / "work" / "adapters" / "bbbb0002")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k


# ---------------------------------------------------------------- one task's failure is its own


def test_full_disk_costs_one_task_never_its_chunk(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("ARC_INJECT_FAULTS", "disk0001:enospc,disk0002:enospc_record")
    cfg = QUICK.with_overrides(["sampling.max_loras=4"])
    ids = ["disk0001", "disk0002", "fine0003"]
    report = run_here(engine, tmp_path, ids, cfg)
    sub = json.loads((tmp_path / "work.json").read_text())
    assert set(report["per_task"]) == set(ids)  # every task answered, none re-queued or given up
    faults = {(f.get("task"), f["stage"]): f["error"] for f in report["faults"]}
    assert "No space left" in faults[("disk0001", "ttt")]
    assert "No space left" in faults[("disk0002", "record")]
    assert not any(f["stage"] == "chunk" for f in report["faults"])
    assert report["fallbacks"]["record_write_failed"] == 1
    assert report["per_task"]["disk0001"]["fallbacks"]["ttt_failed"] == 1
    assert report["per_task"]["fine0003"]["fallbacks"] == {} or "ttt_failed" not in \
        report["per_task"]["fine0003"]["fallbacks"]
    assert not (tmp_path / "work" / "tasks" / "disk0002.json").exists()  # no resume point, answers out
    assert len(sub["disk0002"]) == 1
    assert not list((tmp_path / "work" / "adapters").glob(".*tmp*"))  # no half-written adapter


# ---------------------------------------------------------------- the in-process watchdog


def test_in_process_hang_is_interrupted_and_the_task_retried(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("ARC_INJECT_FAULTS", "hang0001:hang")
    cfg = QUICK.with_overrides(["budget.stall_s=30"])
    report = run_here(engine, tmp_path, ["hang0001", "calm0002"], cfg)
    kills = report["backends"]["killed"]
    assert len(kills) == 1 and "no progress" in kills[0]["reason"] and "hang0001" in kills[0]["tasks"]
    assert set(report["per_task"]) == {"hang0001", "calm0002"}
    assert own_adapter(report)  # the retry trained its own adapter


def test_in_process_sampling_hang_is_interrupted_too(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("ARC_INJECT_FAULTS", "samp0001:hang_sample")
    cfg = QUICK.with_overrides(["budget.stall_s=30"])
    report = run_here(engine, tmp_path, ["samp0001"], cfg)
    assert "sample" in report["backends"]["killed"][0]["reason"]
    assert report["per_task"]["samp0001"]["ttt_reused"] is True  # its adapter survived the kill
    assert own_adapter(report)


def test_in_process_run_honours_the_time_budget(engine, tmp_path, monkeypatch):
    """Work that cannot end by itself (a task hangs in sampling, with a stall allowance longer than
    the budget): the watchdog stops the run at the budget's end, whatever the machine's speed;
    every task has an answer in submission.json and the run reports what it skipped."""
    monkeypatch.setenv("ARC_INJECT_FAULTS", "tb000003:hang_sample")
    ids = [f"tb{i:06d}" for i in range(6)]
    budget = 40.0
    cfg = QUICK.with_overrides([f"budget.time_budget_s={budget}", "budget.stall_s=600",
                                "sampling.max_loras=2"])
    t0 = time.monotonic()
    report = run_here(engine, tmp_path, ids, cfg)
    took = time.monotonic() - t0
    # the interrupt lands at the next Python instruction, then the final files are written
    assert took < budget + 30, took
    assert any("time budget" in k["reason"] for k in report["backends"]["killed"])
    assert "tb000003" not in report["per_task"]
    assert report["fallbacks"]["deadline_skipped_tasks"] + len(report["per_task"]) == len(ids)
    sub = json.loads((tmp_path / "work.json").read_text())
    assert set(sub) == set(ids)


def test_priors_100x_too_optimistic_still_answer_every_task_with_its_own_adapter(engine, tmp_path):
    """No calibration, every rate prior 100x too high: estimates are absurdly short, yet nothing is
    killed and every task trains its own adapter (the watchdog looks at progress only)."""
    b = QUICK.budget
    cfg = QUICK.with_overrides([f"budget.prior_train_tokens_per_s={b.prior_train_tokens_per_s * 100}",
                                f"budget.prior_sample_tokens_per_s={b.prior_sample_tokens_per_s * 100}",
                                f"budget.prior_score_tokens_per_s={b.prior_score_tokens_per_s * 100}",
                                "budget.time_budget_s=3000"])
    report = run_here(engine, tmp_path, ["opt00001", "opt00002", "opt00003"], cfg, calibration=None)
    assert report["calibration"] is None
    assert report["backends"]["killed"] == []
    assert own_adapter(report)


# ---------------------------------------------------------------- bounded disk


def _size(root: Path, skip=()) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name not in skip)


def test_workdir_does_not_grow_with_the_number_of_tasks(engine, tmp_path):
    """Adapters are deleted once answered: 6 tasks leave no more than 2 tasks plus their records
    (the record files and their copies in run.json)."""
    sizes = {}
    for n in (2, 6):
        ids = [f"d{n}{i:06d}" for i in range(n)]
        report = run_here(engine, tmp_path / str(n), ids, QUICK)
        work = tmp_path / str(n) / "work"
        assert set(report["per_task"]) == set(ids)
        assert not any((work / "adapters").iterdir())
        # run.json and the HTML report hold a copy of every record: counted with the records
        sizes[n] = (_size(work, skip={"run.json", "report.html"}), _size(work / "tasks"))
    grown = sizes[6][0] - sizes[2][0]
    assert grown <= sizes[6][1] - sizes[2][1] + 1024, sizes


def test_keep_adapters_keeps_them_in_the_models_dtype(engine, tmp_path):
    import torch

    cfg = QUICK.with_overrides(["budget.keep_adapters=true"])
    run_here(engine, tmp_path, ["keep0001"], cfg)
    tensors = _adapter_tensors(tmp_path / "work" / "adapters" / task_file_name("keep0001"))
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())  # CPU: fp32 model


def test_save_casts_an_fp32_adapter_to_bf16_and_vllm_serves_it(engine, tmp_path):
    """What unsloth's fp32 LoRA weights become on a bf16 GPU: half the bytes, same served answers
    up to bf16 rounding of the weights."""
    import torch

    engine.trainer.reset()
    f32 = engine.trainer.save(tmp_path / "f32")
    b16 = engine.trainer.save(tmp_path / "b16", dtype=torch.bfloat16)
    t32, t16 = _adapter_tensors(f32), _adapter_tensors(b16)
    assert all(t.dtype == torch.bfloat16 for t in t16.values())
    size = lambda p: (p / "adapter_model.safetensors").stat().st_size  # noqa: E731
    assert size(b16) < 0.6 * size(f32)
    for k in t32:
        assert torch.allclose(t32[k], t16[k].float(), rtol=1e-2, atol=1e-3)
    ids = engine.fmt.encode_prompt([random_task("x", 3).train[0]], random_task("x", 3).test_inputs[0])
    out = engine.sampler.generate([GenRequest(tuple(ids), engine.new_adapter("b16", b16), 8)])
    assert out[0] and isinstance(out[0][0].ids, list)


def test_a_task_longer_than_the_context_is_sampled_and_rescored(engine, tmp_path):
    """4 demos of 20x20 plus the query and answer exceed 4096 tokens: every prompt (views,
    re-scoring and the vLLM-vs-forward check) drops demos to fit instead of failing the task."""
    from submission.runtime.run import run

    rng = np.random.default_rng(5)
    g = lambda: as_grid(rng.integers(0, 10, (20, 20)))  # noqa: E731
    task = Task("long0001", tuple(Pair(g(), g()) for _ in range(4)), (g(),))
    path, _ = export_kaggle({task.id: task}, tmp_path / "data", "evaluation")
    assert len(engine.fmt.encode_prompt(list(task.train), task.test_inputs[0])) + 420 > 4096
    report = run(path, None, tmp_path / "s.json", tmp_path / "w", QUICK, engine=engine,
                 calibration=RATES)
    assert report["faults"] == [], report["faults"]
    # A random model rarely writes a 20x20 grid, so give re-scoring two candidates directly.
    from collections import Counter
    from types import SimpleNamespace

    from submission.worker.pipeline import choose
    from submission.answers.select import Sample

    state = SimpleNamespace(cfg=QUICK, all_policies=False, fallbacks=Counter(), faults=[])
    engine._rescore_checked = False  # the vLLM-vs-forward check runs here, on this long task
    samples = [Sample(view=i, group=0, grid=g(), logprob=-1.0) for i in range(2)]
    rec = {"timing": {}, "fallbacks": {}}
    attempts = choose(engine, state, QUICK, task, 0, samples, None, rec)
    assert len(attempts) == 2 and state.faults == [] and not state.fallbacks["rescore_failed"]
    assert all(len(c["rescore_logprobs"]) == QUICK.selection.rescore_augmentations
               for c in rec["tests"][0]["candidates"])
