"""What the pipeline records per task from parsing: answers a published checkpoint plausibly emits
(a trailing row break before the end token) parse leniently and are counted per task and in run.json."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from submission.config import Config
from submission.formats import build_tokenizer, get_format
from submission.grids import Pair, Task, as_grid
from submission.pipeline import generate_into
from submission.sample import GenRequest, Generation, build_views


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

    engine = SimpleNamespace(sampler=Sampler(), fmt=fmt)
    cfg = Config().with_overrides(["sampling.dfs_threshold=0"])
    out, records = {("t1", 0): []}, {"t1": {}}
    requests = [GenRequest(v.prompt, None, 20) for v in views]
    generate_into(engine, cfg, [(v, False) for v in views], requests, out, records)
    assert [s.grid is not None for s in out[("t1", 0)]] == [True, True]
    assert records["t1"]["lenient_parses"] == 1
    assert sum(records["t1"]["lenient_fixes"].values()) >= 1
