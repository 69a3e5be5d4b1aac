"""Shared fixtures: a tiny random model and ONE engine (trainer + vLLM) per test session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ARC_STRICT_FALLBACKS", "1")  # errors.STRICT_ENV: a bug fails, no slow fallback

import pytest  # noqa: E402

from submission.config import Config  # noqa: E402

# CPU-sized settings every engine test shares (the engine's LoRA rank is fixed at build time).
SMALL = Config().with_overrides([
    "ttt.r=8", "ttt.lora_alpha=16", "ttt.max_samples=8", "sampling.n_views=4",
    "selection.rescore_augmentations=2", "selection.max_rescore=3", "model.max_seq_len=4096",
    "sampling.max_loras=4", "sampling.unsure_extra_views=0",
    # the program-search lane is tested on its own (test_lane_*): elsewhere it would spawn a pool
    # in every run and could answer a test's toy task in the model's place
    "lane.enabled=false"])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from submission.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", "qwen-chat", seed=0)


@pytest.fixture(scope="session")
def engine(tiny_model):
    from submission.engine import build_engine

    return build_engine(tiny_model, SMALL)


@pytest.fixture(scope="session")
def keep_alive():
    """A list for the in-process vLLM engines a test builds beside the session's `engine`. They
    stay alive until the session ends: an in-process engine's shutdown tears down vLLM's
    process-wide distributed state (vllm/v1/engine/core.py:839, `cleanup_dist_env_and_memory`),
    which the session's engine still needs for every later step ("pipeline model parallel group
    is not initialized")."""
    alive: list = []
    yield alive
    alive.clear()
