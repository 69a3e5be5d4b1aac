"""Fitting pairs into the token budget (arc/fit.py): as is when they fit, pairs dropped from the front
one at a time, the caller's choice when nothing fits, and a transform's demo order applied first;
and each of the four callers (TTT data, fine-tuning data, views, re-scoring) keeping its own rule."""

from __future__ import annotations

import numpy as np
import pytest

from submission.answers.rescore import fitted_prompt
from submission.answers.sampling import build_views
from submission.arc.augment import Transform
from submission.arc.fit import fit_pairs, ordered_pairs
from submission.arc.formats import build_tokenizer, get_format
from submission.arc.grids import Pair, Task, as_grid
from submission.finetune.data import StreamSamples, TaskRef, TaskSource
from submission.model.ttt_data import build_ttt_data


@pytest.fixture(scope="module")
def fmt():
    return get_format("qwen-chat", build_tokenizer("qwen-chat"))


def _pairs(sides=(4, 3, 2)) -> list[Pair]:
    """Pairs of distinct sizes (so every prefix dropped changes the length), distinct cells."""
    return [Pair(as_grid(np.full((s, s), i)), as_grid(np.full((s, 1), i + 1))) for i, s in enumerate(sides)]


QUERY = as_grid([[5, 6]])


def test_fits_as_is(fmt):
    pairs = _pairs()
    prompt = fmt.encode_prompt(pairs, QUERY)
    got = fit_pairs(fmt, pairs, query=QUERY, max_len=len(prompt) + 7, answer_tokens=7, overlong="keep")
    assert (got.ids, got.mask, got.dropped, got.fits) == (prompt, None, 0, True)
    ids, mask = fmt.encode_training(pairs)
    got = fit_pairs(fmt, pairs, max_len=len(ids), overlong="none")
    assert (got.ids, got.mask, got.dropped, got.fits) == (ids, mask, 0, True)


def test_drops_from_the_front_one_at_a_time(fmt):
    pairs = _pairs()
    for k in range(len(pairs)):
        prompt = fmt.encode_prompt(pairs[k:], QUERY)
        got = fit_pairs(fmt, pairs, query=QUERY, max_len=len(prompt) + 5, answer_tokens=5, overlong="keep")
        assert (got.ids, got.dropped, got.fits) == (prompt, k, True)
        ids, mask = fmt.encode_training(pairs[k:])
        got = fit_pairs(fmt, pairs, max_len=len(ids), overlong="none")
        assert (got.ids, got.mask, got.dropped) == (ids, mask, k)
        if k + 1 < len(pairs):  # one token less: one more pair goes
            assert fit_pairs(fmt, pairs, max_len=len(ids) - 1, overlong="none").dropped == k + 1


def test_the_answer_tokens_count_against_the_budget(fmt):
    pairs = _pairs()
    n = len(fmt.encode_prompt(pairs, QUERY))
    assert fit_pairs(fmt, pairs, query=QUERY, max_len=n + 10, answer_tokens=10, overlong="keep").dropped == 0
    assert fit_pairs(fmt, pairs, query=QUERY, max_len=n + 9, answer_tokens=10, overlong="keep").dropped == 1


def test_nothing_fits_keeps_the_last_pair_or_gives_none(fmt):
    pairs = _pairs()
    kept = fit_pairs(fmt, pairs, query=QUERY, max_len=5, answer_tokens=3, overlong="keep")
    assert kept.ids == fmt.encode_prompt(pairs[-1:], QUERY)
    assert kept.dropped == len(pairs) - 1 and not kept.fits
    assert fit_pairs(fmt, pairs, max_len=5, overlong="none") is None
    kept = fit_pairs(fmt, pairs, max_len=5, overlong="keep")
    assert (kept.ids, kept.mask) == fmt.encode_training(pairs[-1:]) and not kept.fits


def test_skip_first_masks_the_first_output_only_while_context_is_kept(fmt):
    pairs = _pairs()
    got = fit_pairs(fmt, pairs, max_len=4096, skip_first=True, overlong="none")
    assert (got.ids, got.mask) == fmt.encode_training(pairs, skip_first=True)
    alone = fmt.encode_training(pairs[-1:])  # the query alone: its output stays a target
    got = fit_pairs(fmt, pairs, max_len=len(alone[0]), skip_first=True, overlong="none")
    assert (got.ids, got.mask, got.dropped) == (*alone, 2) and any(got.mask)


def test_bad_arguments_are_refused(fmt):
    with pytest.raises(ValueError, match="overlong"):
        fit_pairs(fmt, _pairs(), max_len=10, overlong="raise")
    with pytest.raises(ValueError, match="skip_first"):
        fit_pairs(fmt, _pairs(), query=QUERY, max_len=10, skip_first=True, overlong="keep")


def test_order_is_applied_then_fitted(fmt):
    pairs = _pairs()
    t = Transform(dihedral=1, colours=(0, 2, 1, 3, 4, 5, 6, 7, 8, 9), order=(2, 0, 1))
    ordered = ordered_pairs(t, pairs)
    want = [t.apply_pair(pairs[j]) for j in (2, 0, 1)]
    assert all(np.array_equal(a.input, b.input) and np.array_equal(a.output, b.output)
               for a, b in zip(ordered, want, strict=True))
    assert [p.input.shape for p in ordered_pairs(Transform(dihedral=1), pairs)] == [(4, 4), (3, 3), (2, 2)]
    # the front of the transformed order goes first: pairs[2] (as transformed), then pairs[0]
    ids, _ = fmt.encode_training(ordered[1:])
    got = fit_pairs(fmt, ordered, max_len=len(ids), overlong="none")
    assert got.dropped == 1 and got.ids == ids


# ---------------------------------------------------------------- each caller's rule


def _task(sides=(4, 3, 2)) -> Task:
    return Task("t", tuple(_pairs(sides)), (QUERY,), (as_grid([[1]]),))


def test_ttt_data_counts_a_query_that_cannot_fit(fmt):
    data = build_ttt_data(_task(), fmt, np.random.default_rng(0), max_samples=4, max_len=5)
    assert data.samples == [] and data.too_long > 0
    short = len(fmt.encode_training(_task().train[-1:])[0])
    data = build_ttt_data(_task(), fmt, np.random.default_rng(0), max_samples=1, max_len=short)
    assert data.samples[0].dropped_demos == 2 and data.shortened == 1  # the task as given first


def test_views_keep_one_demo_when_nothing_fits(fmt):
    task = _task()
    views, dropped = build_views(task, 0, fmt, np.random.default_rng(0), n_views=3, max_len=5,
                                 answer_tokens=3)
    assert dropped == 3 * (len(task.train) - 1)
    for v in views:
        demos = ordered_pairs(v.transform, task.train)
        assert list(v.prompt) == fmt.encode_prompt(demos[-1:], v.transform.apply_grid(QUERY))


def test_rescore_prompt_keeps_one_demo_when_nothing_fits(fmt):
    pairs = _pairs()
    assert fitted_prompt(fmt, pairs, QUERY, 3, 5) == fmt.encode_prompt(pairs[-1:], QUERY)
    assert fitted_prompt(fmt, pairs, QUERY, 3, 4096) == fmt.encode_prompt(pairs, QUERY)


def test_finetune_samples_count_what_cannot_fit(fmt):
    task = _task()
    source = TaskSource(["memory"], [TaskRef("t", 0, -1, b"\0" * 20)], {0: {"t": task}})
    samples = StreamSamples(source, fmt, seed=0, per_task=2, max_len=5, keep_background=True)
    assert samples[0] is None and samples[1] is None and samples.too_long == 2
    samples = StreamSamples(source, fmt, seed=0, per_task=2, max_len=4096, keep_background=True)
    s = samples[0]
    assert s is not None and s.dropped_demos == 0 and s.query == len(task.train)  # the test pair last
    assert samples.shortened == 0
