"""Shared fixtures: a tiny random model, ONE engine (trainer + vLLM) per test session, and the
engine tests' trained adapters (one set per module that asks). Helpers are in tests/helpers.py."""

from __future__ import annotations

import os
import signal

# A shell starts a background job (`pytest ... &`) with SIGINT ignored, and an ignored signal stays
# ignored across exec: every CLI subprocess a test starts would then ignore the Ctrl-C that the
# interrupt tests send. Python's own handler is not inherited, so children start from the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ARC_STRICT_FALLBACKS", "1")  # errors.STRICT_ENV: a bug fails, no slow fallback

import pytest  # noqa: E402

from tests.helpers import LEARN, SMALL, zeros_task  # noqa: E402  (tests/helpers.py)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from submission.model.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", "qwen-chat", seed=0)


@pytest.fixture(scope="session")
def engine(tiny_model):
    from submission.model.engine import build_engine

    eng = build_engine(tiny_model, SMALL)
    _keep_vllm_state_for_the_session()
    return eng


@pytest.fixture(scope="module")
def adapters(engine, tmp_path_factory):
    """Three distinct trained adapters (sides 1, 2, 3) saved as PEFT directories."""
    import numpy as np

    from submission.model.ttt_data import build_ttt_data

    cfg = SMALL.with_overrides(LEARN)
    out, root = [], tmp_path_factory.mktemp("adapters")
    for side in (1, 2, 3):
        task = zeros_task(f"z{side}", side, side)
        rng = np.random.default_rng(side)
        data = build_ttt_data(task, engine.fmt, rng, max_samples=16, max_len=4096)
        engine.trainer.reset()
        engine.trainer.train(data.samples, rng, cfg.ttt)
        out.append((task, engine.new_adapter(task.id, engine.trainer.save(root / task.id))))
    engine.forward.forget_loaded()
    return out


def _keep_vllm_state_for_the_session() -> None:
    """Other tests build and drop in-process vLLM engines (their own runs, small-cache engines)
    while this session's engine lives. An in-process engine's shutdown tears down vLLM's
    process-wide distributed state (vllm/v1/engine/core.py:839, `cleanup_dist_env_and_memory`),
    after which the session's engine fails every step ("pipeline model parallel group is not
    initialized"). For the session, a shutdown frees memory but keeps that state; a new engine
    joins the state that exists (vllm/distributed/parallel_state.py). Production processes hold
    one engine, or rebuild it after dropping the old one."""
    import gc

    import vllm.v1.engine.core as core

    core.cleanup_dist_env_and_memory = lambda *args, **kwargs: gc.collect()

