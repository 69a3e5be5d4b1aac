"""vLLM at its limits, on a second engine with a tiny KV cache (10 blocks of 128 tokens) and a short
context (1024): re-scoring that reads the prefix cache under preemption, and a view too long for
the context in a batched sampling call."""

from __future__ import annotations

import gc
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from submission.errors import SamplerError
from submission.arc.formats import build_tokenizer, get_format
from submission.arc.grids import Pair, Task, as_grid
from tests.helpers import SMALL

pytestmark = pytest.mark.slow

MAX_LEN = 1024
# Long prefills go in chunks of 64 tokens, so several requests run half-prefilled at once and one
# that needs a block when none is free preempts another (vllm/v1/core/sched/scheduler.py:797-841).
ENGINE = dict(max_model_len=MAX_LEN, max_num_batched_tokens=MAX_LEN, enable_chunked_prefill=True,
              long_prefill_token_threshold=64, num_gpu_blocks_override=10)


@pytest.fixture(scope="module")
def fmt():
    return get_format("qwen-chat", build_tokenizer("qwen-chat"))


@pytest.fixture(scope="module")
def small(tiny_model, fmt):
    from submission.model.backends.vllm_sampler import VLLMSampler

    cfg = SMALL.with_overrides([f"model.max_seq_len={MAX_LEN}"])
    sampler = VLLMSampler(tiny_model, cfg, stop_ids=fmt.stop_token_ids, enable_lora=False,
                          dtype="float32", engine_kwargs=ENGINE)
    assert sampler.kv_blocks == (9, 128)  # one of the 10 is vLLM's null block
    yield sampler
    sampler.llm = None
    gc.collect()


def forward_scores(model_dir, groups):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    for prompt, answers in groups:
        row = []
        for a in answers:
            full = torch.tensor([prompt + a])
            with torch.no_grad():
                lp = model(input_ids=full).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
            row.append(float(lp.gather(1, full[0, len(prompt):, None]).double().sum()))
        out.append(row)
    return out


def preemption_groups():
    """Two prompts of 200 tokens, six answers of 300 each sharing all but their last tokens: a
    request resumed after preemption finds blocks another answer computed past its prompt."""
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(2):
        prompt = [int(t) for t in rng.integers(0, 10, 200)]
        base = [int(t) for t in rng.integers(0, 10, 300)]
        groups.append((prompt, [base[:-k] + [int(t) for t in rng.integers(0, 10, k)]
                                for k in range(1, 7)]))
    return groups


def test_prefix_cache_scores_under_preemption_equal_the_forward_pass(small, tiny_model, monkeypatch):
    from vllm.v1.core.sched.scheduler import Scheduler

    preempted: list[str] = []
    real_preempt = Scheduler._preempt_request

    def preempt(self, request, *args, **kwargs):
        preempted.append(request.request_id)
        return real_preempt(self, request, *args, **kwargs)

    monkeypatch.setattr(Scheduler, "_preempt_request", preempt)
    calls: list[tuple[bool, int]] = []  # (read the cache, requests preempted during the call)
    real_call = type(small)._score_call

    def watched(self, pairs, adapter, *, read_cache):
        before = len(preempted)
        try:
            return real_call(self, pairs, adapter, read_cache=read_cache)
        finally:
            calls.append((read_cache, len(preempted) - before))

    monkeypatch.setattr(type(small), "_score_call", watched)
    groups = preemption_groups()
    want = forward_scores(tiny_model, groups)
    got = small.score_groups(groups, None)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-3)
    assert any(read for read, _ in calls)
    assert all(n == 0 for read, n in calls if read)  # the calls that read the cache: never preempted
    assert sum(n for read, n in calls if not read) > 0  # this cache is small enough to force it

    # One call of every cache-reading request, as before: preempted requests resume into blocks
    # they never computed, and their rows are garbage (here: a row without its token, or a wrong log p).
    monkeypatch.setattr(small, "kv_blocks", (10**9, small.kv_blocks[1]))
    small.llm.reset_prefix_cache()
    calls.clear()
    try:
        stale = small.score_groups(groups, None)
    except SamplerError as exc:
        assert "no log p" in str(exc)
    else:
        assert any(abs(s - w) > 1e-3 for g, ws in zip(stale, want) for s, w in zip(g, ws))
    assert any(n > 0 for read, n in calls if read)


def test_a_view_too_long_for_the_context_costs_only_its_own_task(small, fmt):
    """A 30x30 task does not fit 1024 tokens even with one demo: its views are dropped (counted)
    before the batched call, which vLLM would otherwise refuse whole, and the small task in the
    same chunk is sampled."""
    from submission.model.engine import Engine
    from submission.worker.sampling_stage import sample_chunk

    rng = np.random.default_rng(1)
    big = lambda: as_grid(rng.integers(0, 10, (30, 30)))  # noqa: E731
    tiny = lambda: as_grid(rng.integers(0, 10, (2, 2)))  # noqa: E731
    tasks = [Task("huge0001", (Pair(big(), big()), Pair(big(), big())), (big(),)),
             Task("tiny0002", (Pair(tiny(), tiny()), Pair(tiny(), tiny())), (tiny(),))]
    cfg = SMALL.with_overrides([f"model.max_seq_len={MAX_LEN}", "ttt.enabled=false",
                                "sampling.n_views=2", "sampling.dfs_threshold=0"])
    engine = Engine(cfg=cfg, fmt=fmt, trainer=None, sampler=small, forward=None)
    state = SimpleNamespace(cfg=cfg, fallbacks=Counter(), faults=[])
    records = {t.id: {"timing": {}, "fallbacks": {}} for t in tasks}
    out = sample_chunk(engine, state, tasks, {t.id: cfg for t in tasks}, {}, records)
    assert out[("huge0001", 0)] == [] and len(out[("tiny0002", 0)]) == 2
    assert state.fallbacks["views_too_long_dropped"] == 2 and state.faults == []
    assert records["huge0001"]["fallbacks"] == {"views_too_long_dropped": 2}
    assert records["tiny0002"]["fallbacks"] == {}
