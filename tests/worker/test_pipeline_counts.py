"""What the pipeline records per task from parsing: answers a published checkpoint plausibly emits
(a trailing row break before the end token) parse leniently and are counted per task and in run.json."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np

from submission.config import Config
from submission.arc.formats import build_tokenizer, get_format
from submission.arc.grids import Pair, Task, as_grid
from submission.worker.sampling_stage import generate_into
from submission.answers.sampling import GenRequest, Generation, build_views
from submission.answers.dfs import SearchStats


def fake_engine(sampler, fmt) -> SimpleNamespace:
    """What the answer search reads of an engine: its sampler, format and speculative totals."""
    return SimpleNamespace(sampler=sampler, fmt=fmt, speculative=SearchStats(), speculative_off=False,
                           fallbacks=Counter())


def test_lenient_parses_are_counted_per_task():
    fmt = get_format("qwen-chat", build_tokenizer("qwen-chat"))
    g = as_grid(np.array([[1, 2], [3, 4]]))
    task = Task("t1", (Pair(g, g), Pair(g, g)), (g,))
    views, _ = build_views(task, 0, fmt, np.random.default_rng(0), n_views=2, max_len=512,
                           answer_tokens=20)
    answer = fmt.encode_answer(g)  # ends with the end token
    sloppy = answer[:-1] + [fmt.id_of["\n"], answer[-1]]  # a row break before the end token

    class Sampler:
        def generate(self, requests):
            return [[Generation(list(sloppy if i == 0 else answer), -1.0)] for i, _ in enumerate(requests)]

    engine = fake_engine(Sampler(), fmt)
    cfg = Config().with_overrides(["sampling.dfs_threshold=0"])
    out, records = {("t1", 0): []}, {"t1": {}}
    requests = [GenRequest(v.prompt, None, 20) for v in views]
    state = SimpleNamespace(cfg=cfg, fallbacks=Counter(), faults=[])
    generate_into(engine, state, [(v, False) for v in views], requests, out, records)
    assert [s.grid is not None for s in out[("t1", 0)]] == [True, True]
    assert records["t1"]["lenient_parses"] == 1
    assert sum(records["t1"]["lenient_fixes"].values()) >= 1


class Picky:
    """A sampler that rejects any call holding a prompt that starts with token 99 (as vLLM
    rejects a whole call for one bad prompt)."""

    def __init__(self, answer) -> None:
        self.answer, self.calls = answer, []

    def generate(self, requests):
        from submission.errors import SamplerError

        self.calls.append([r.prompt[0] for r in requests])
        if any(r.prompt[0] == 99 for r in requests):
            raise SamplerError("vLLM: token id 99 is out of vocabulary")
        return [[Generation(list(self.answer), -1.0)] for _ in requests]


def _two_tasks():
    fmt = get_format("qwen-chat", build_tokenizer("qwen-chat"))
    g = as_grid(np.array([[1, 2], [3, 4]]))
    tasks = [Task(t, (Pair(g, g), Pair(g, g)), (g,)) for t in ("bad", "good")]
    views = {t.id: build_views(t, 0, fmt, np.random.default_rng(0), n_views=2, max_len=512,
                               answer_tokens=20)[0] for t in tasks}
    return fmt, g, tasks, views


def test_a_rejected_request_costs_only_its_own_task():
    fmt, g, tasks, views = _two_tasks()
    sampler = Picky(fmt.encode_answer(g))
    engine = fake_engine(sampler, fmt)
    cfg = Config().with_overrides(["sampling.dfs_threshold=0"])
    state = SimpleNamespace(cfg=cfg, fallbacks=Counter(), faults=[])
    pairs = [(v, False) for t in tasks for v in views[t.id]]
    requests = [GenRequest(((99,) if v.task_id == "bad" else ()) + v.prompt, None, 20) for v, _ in pairs]
    out, records = {(t.id, 0): [] for t in tasks}, {t.id: {"fallbacks": {}} for t in tasks}
    generate_into(engine, state, pairs, requests, out, records)
    assert len(sampler.calls) == 3  # the whole call, then each task's requests on their own
    assert [s.grid is not None for s in out[("good", 0)]] == [True, True]
    assert out[("bad", 0)] == []
    assert state.fallbacks == {"sample_requests_rejected": 1}
    assert records["bad"]["fallbacks"] == {"sample_requests_rejected": 1}
    assert records["good"]["fallbacks"] == {}
    assert [f["task"] for f in state.faults] == ["bad"] and "out of vocabulary" in state.faults[0]["error"]


def test_views_whose_prompt_leaves_no_room_are_dropped_and_counted():
    from submission.worker.sampling_stage import fitting_views

    fmt, g, tasks, views = _two_tasks()
    vs = views["good"]
    limit = len(vs[0].prompt) + 1  # room for one answer token: kept
    state = SimpleNamespace(cfg=Config().with_overrides([f"model.max_seq_len={limit}"]),
                            fallbacks=Counter(), faults=[])
    rec = {"fallbacks": {}}
    assert fitting_views(state, rec, vs[:1]) == vs[:1] and not state.fallbacks
    state.cfg = Config().with_overrides([f"model.max_seq_len={limit - 1}"])
    assert fitting_views(state, rec, vs) == [v for v in vs if len(v.prompt) < limit - 1]
    dropped = sum(len(v.prompt) >= limit - 1 for v in vs)
    assert dropped >= 1 and state.fallbacks == {"views_too_long_dropped": dropped}
    assert rec["fallbacks"] == {"views_too_long_dropped": dropped}
