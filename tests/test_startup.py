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
from submission.memory import MemoryPlanError
from submission.startup import plan_memory_for_run
from tests.test_memory import QWEN3_4B


def model_dir(tmp_path: Path, **overrides) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**QWEN3_4B, "torch_dtype": "bfloat16", **overrides}))
    return d


def state(cfg: Config) -> SimpleNamespace:
    return SimpleNamespace(cfg=cfg, info={}, chunk_size=cfg.sampling.max_loras)


def fake_gpu(monkeypatch, gib: float | None, cc=(8, 9)) -> None:
    import submission.backends as backends
    import submission.memory as memory

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
    st = state(Config())
    with pytest.raises(MemoryPlanError, match="GiB"):
        plan_memory_for_run(st, model_dir(tmp_path))
    assert "engine_kwargs" not in st.info


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
    from submission.backends.hf_sampler import LOGITS_ENV, HFSampler

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
