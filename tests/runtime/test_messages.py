"""The supervisor's and a worker's messages cross a multiprocessing pipe unchanged."""

from __future__ import annotations

import multiprocessing as mp

from submission.runtime import messages as M
from submission.runtime.budget import TaskPlan

PLAN = TaskPlan(max_samples=4, n_views=2, max_rescore=2, rescore_augmentations=2, dfs_threshold=0.1,
                extra_views=0, ttt_s=1.0, expected_s=2.0, sample_s=1.0, cap_s=10.0, answer_s=5.0)
EVERY = [M.Chunk(["a", "b"], {"a": PLAN, "b": PLAN}), M.Stop(), M.Unusable("driver too old"),
         M.Fatal("InputError('x')", "x"), M.Ready(0, {"sampler_backend": "vllm"}, None, {"f": 1}, []),
         M.Progress("ttt", "a"), M.TaskDone("a", {"attempts": []}, {}, [{"stage": "ttt"}]),
         M.ChunkError(["a"], "RuntimeError()"), M.ChunkDone({"loop_s": 1.0}, {"rescore_backend": "forward"})]


def test_every_message_kind_crosses_a_pipe_equal():
    kinds = {type(m) for m in EVERY}
    assert kinds == set(M.ToWorker.__args__) | set(M.FromWorker.__args__)
    r, w = mp.get_context("spawn").Pipe(duplex=False)
    for m in EVERY:
        w.send(m)
        got = r.recv()
        assert type(got) is type(m) and got == m

