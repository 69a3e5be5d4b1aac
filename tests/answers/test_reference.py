"""submission/reference.py, the method on one task in one file, gives exactly the pipeline's answers:
on the tiny model and one hand-made task of two test inputs, `reference.solve` and an in-process run
with the transformers sampler give the same attempts, from the same candidates with the same
re-scoring log-probabilities (speculative DFS, extra views where answers disagree, re-scoring on)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from submission import reference
from submission.answers.select import candidate_records
from submission.arc.grids import Task, as_grid
from submission.arc.submit import ATTEMPT_KEYS, PLACEHOLDER
from submission.arc.tasks import export_kaggle
from tests.helpers import QUICK, QUICK_RATES, zeros_task

pytestmark = pytest.mark.slow

# QUICK, with what the reference has and QUICK leaves out: a trained adapter whose answers parse
# (LEARN's rate, fewer samples), the default search (DFS above a threshold, speculative), more views
# for every input whose answers disagree, and no base-model fallback (the reference has none).
CFG = QUICK.with_overrides([
    "sampling.backend=transformers", "ttt.learning_rate=1e-2", "ttt.epochs=2", "ttt.grad_accum=1",
    "ttt.max_samples=16", "sampling.dfs_threshold=0.1", "sampling.speculative=true",
    "sampling.unsure_extra_views=2", "sampling.unsure_agreement=1.0",
    "sampling.base_model_fallback=false"])


@pytest.fixture
def one_thread():
    """The tiny model's matrices gain nothing from two threads, and on a busy 2-core machine two
    spinning OpenMP threads make every step ~20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def two_input_task() -> Task:
    """zeros_task's demos (answer: the 2x2 background square) with a second test input."""
    z = zeros_task("ref", 2, 0)
    second = as_grid(np.random.default_rng(5).integers(1, 10, (3, 3)))
    return Task(z.id, z.train, (z.test_inputs[0], second))


def test_reference_solve_gives_the_pipelines_attempts(tiny_model, tmp_path, monkeypatch, one_thread):
    from submission.model.engine import build_engine
    from submission.runtime.run import run

    task = two_input_task()
    challenges, _ = export_kaggle({task.id: task}, tmp_path / "data", "evaluation")
    engine = build_engine(tiny_model, CFG)
    assert engine.sampler is engine.forward  # the transformers sampler, as the reference's
    report = run(challenges, None, tmp_path / "submission.json", tmp_path / "run", CFG,
                 engine=engine, calibration=QUICK_RATES)
    expected = json.loads((tmp_path / "submission.json").read_text())[task.id]
    record = report["per_task"][task.id]
    assert not record["fallbacks"] and record["ttt"]["steps"] > 0  # own adapter, nothing fell back

    pooled = []  # the reference's candidates per test input (re-scoring fills them in place)
    real_pool = reference.pool

    def spy(samples):
        pooled.append(real_pool(samples))
        return pooled[-1]

    monkeypatch.setattr(reference, "pool", spy)
    got = reference.solve(task, tiny_model, CFG, tmp_path / "reference")

    assert got == expected
    assert [tuple(e) for e in got] == [ATTEMPT_KEYS] * task.n_test
    assert any(g != PLACEHOLDER for e in got for g in e.values())  # answers, not placeholders
    policy, offset = CFG.selection.policy, CFG.selection.poe_offset
    for entry, cands in zip(record["tests"], pooled, strict=True):
        # the same candidates: grids, counts, views, best sample logprobs, re-scoring and ranks
        assert candidate_records(cands, policy, poe_offset=offset) == entry["candidates"]
        assert entry["rescored_pairs"] > 0
        assert sum(len(c.rescore_logprobs or []) for c in cands) == entry["rescored_pairs"]
    assert record["chunk_search"]["verify_calls"] > 0  # the search ran speculatively
