"""Tests of submission.answers.select: pooling, the three ranking policies, select_two and to_record."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from submission.answers import select as S
from submission.errors import ConfigError
from submission.arc.grids import as_grid, grids_equal

G1, G11, G2, G3 = as_grid([[1]]), as_grid([[1, 1]]), as_grid([[2]]), as_grid([[3]])


def cand(grid: list[list[int]], count: int, *, lp: float = -1.0, first: int = 0,
         rescore: list[float] | None = None, group_counts: dict[int, int] | None = None
         ) -> S.Candidate:
    gc = group_counts or {0: count}
    return S.Candidate(grid=as_grid(grid), count=count, views=set(range(count)), groups=set(gc),
                       best_logprob=lp, first_seen=first, from_base=False,
                       rescore_logprobs=rescore, group_counts=dict(gc))


def grids(cands: list[S.Candidate]) -> list[list[list[int]]]:
    return [c.grid.tolist() for c in cands]


# ---------------------------------------------------------------- pooling

def test_pool_merges_identical_grids_and_keeps_shapes_apart() -> None:
    samples = [
        S.Sample(view=0, group=0, grid=G1, logprob=-5.0),
        S.Sample(view=1, group=1, grid=G11, logprob=-1.0),
        S.Sample(view=2, group=2, grid=None, logprob=0.0),
        S.Sample(view=3, group=1, grid=np.array([[1]], dtype=np.int64), logprob=-2.0),
        S.Sample(view=4, group=3, grid=G1.copy(), logprob=-7.0),
        S.Sample(view=5, group=0, grid=G2, logprob=-0.5),
    ]
    cands = S.pool(samples)
    # count desc (3, 1, 1), then best_logprob desc (-0.5 before -1.0)
    assert grids(cands) == [[[1]], [[2]], [[1, 1]]]
    a, c, b = cands
    assert (a.count, a.views, a.groups, a.best_logprob, a.first_seen) == (3, {0, 3, 4}, {0, 1, 3},
                                                                         -2.0, 0)
    assert a.group_counts == {0: 1, 1: 1, 3: 1}
    assert a.grid.dtype == np.uint8
    assert (b.count, b.views, b.first_seen, b.best_logprob) == (1, {1}, 1, -1.0)
    assert (c.count, c.views, c.first_seen, c.best_logprob) == (1, {5}, 5, -0.5)
    assert a.key() != b.key() and a.key() == S.grid_key(G1)
    assert S.count_unparsed(samples) == 1
    assert all(x.rescore_logprobs is None for x in cands)


def test_pool_key_distinguishes_shape_with_same_bytes() -> None:
    assert S.grid_key(as_grid([[1, 2]])) != S.grid_key(as_grid([[1], [2]]))
    cands = S.pool([S.Sample(0, 0, as_grid([[1, 2]]), 0.0), S.Sample(1, 0, as_grid([[1], [2]]), 0.0)])
    assert len(cands) == 2


def test_pool_empty_and_all_unparsed() -> None:
    assert S.pool([]) == []
    samples = [S.Sample(0, 0, None, 0.0), S.Sample(1, 1, None, 0.0)]
    assert S.pool(samples) == [] and S.count_unparsed(samples) == 2


def test_from_base_only_when_every_sample_is_from_base() -> None:
    samples = [
        S.Sample(0, 0, G1, -1.0, from_base=True),
        S.Sample(1, 0, G1, -1.0, from_base=True),
        S.Sample(2, 0, G2, -1.0, from_base=True),
        S.Sample(3, 0, G2, -1.0, from_base=False),
        S.Sample(4, 0, G3, -1.0),
    ]
    by_grid = {int(c.grid[0, 0]): c.from_base for c in S.pool(samples)}
    assert by_grid == {1: True, 2: False, 3: False}


def test_pool_tie_breaks_by_first_seen() -> None:
    samples = [S.Sample(i, 0, as_grid([[i]]), -1.0) for i in (4, 2, 7)]
    assert [c.first_seen for c in S.pool(samples)] == [0, 1, 2]
    assert grids(S.pool(samples)) == [[[4]], [[2]], [[7]]]


# ---------------------------------------------------------------- vote

def test_vote_two_level_disagrees_with_plain_counting() -> None:
    # A: 5 samples, all in group 0.  B: one sample in each of groups 0..3.
    samples = [S.Sample(v, 0, G1, -1.0) for v in range(5)]
    samples += [S.Sample(5 + g, g, G2, -3.0) for g in range(4)]
    cands = S.pool(samples)
    assert grids(cands) == [[[1]], [[2]]]  # plain counting: A (5) before B (4)
    # vote: A is in the top 3 of group 0 only (score 1); B of groups 0..3 (score 4).
    assert grids(S.rank(cands, "vote")) == [[[2]], [[1]]]
    assert [g.tolist() for g in S.select_two(cands, "vote")] == [[[2]], [[1]]]


def test_vote_keeps_only_top_three_per_group() -> None:
    # Group 0 holds four candidates; D (fewest samples in group 0) drops out of its top 3.
    a = cand([[1]], 4, group_counts={0: 4}, first=0)
    b = cand([[2]], 3, group_counts={0: 3}, first=1)
    c = cand([[3]], 2, group_counts={0: 2}, first=2)
    d = cand([[4]], 2, group_counts={0: 1, 1: 1}, first=3)
    # Scores: a 1, b 1, c 1, d 1 (group 1 only). Ties by count: a 4, b 3, c 2, d 2 -> first_seen.
    assert grids(S.rank([d, c, b, a], "vote")) == [[[1]], [[2]], [[3]], [[4]]]
    # Make D a winner of one more group: it now scores 2 and ranks first.
    d2 = cand([[4]], 3, group_counts={0: 1, 1: 1, 2: 1}, first=3)
    assert grids(S.rank([a, b, c, d2], "vote")) == [[[4]], [[1]], [[2]], [[3]]]


def test_vote_hand_built_candidate_without_group_counts() -> None:
    c = S.Candidate(grid=G1, count=2, views={0, 1}, groups={0, 5}, best_logprob=-1.0,
                    first_seen=0, from_base=False)
    assert c.per_group() == {0: 1, 5: 1}
    assert S.rank([c], "vote") == [c]


# ---------------------------------------------------------------- poe vs count-nll

def test_poe_and_count_nll_disagree() -> None:
    # A: count 5, rescore [-10, -10];  B: count 1, rescore [-8, -8];  poe_offset 3.
    #   poe:       A = (-10+3) + (-10+3) = -14     B = (-8+3) + (-8+3) = -10   -> B first
    #   count-nll: A = 5 - mean(10, 10) = -5        B = 1 - mean(8, 8) = -7     -> A first
    a = cand([[1]], 5, rescore=[-10.0, -10.0], first=0)
    b = cand([[2]], 1, rescore=[-8.0, -8.0], first=5)
    assert S._poe_score(a, 3.0) == -14.0 and S._poe_score(b, 3.0) == -10.0
    assert S._count_nll_score(a) == -5.0 and S._count_nll_score(b) == -7.0
    assert grids(S.rank([a, b], "poe")) == [[[2]], [[1]]]
    assert grids(S.rank([a, b], "count-nll")) == [[[1]], [[2]]]


def test_poe_offset_changes_order() -> None:
    # A has 3 augmentation scores, B has 1: the offset is added per augmentation.
    a = cand([[1]], 1, rescore=[-2.0, -2.0, -2.0], first=0)
    b = cand([[2]], 1, rescore=[-3.0], first=1)
    # offset 0: A -6, B -3 -> B first.  offset 3: A 3, B 0 -> A first.
    assert grids(S.rank([a, b], "poe", poe_offset=0.0)) == [[[2]], [[1]]]
    assert grids(S.rank([a, b], "poe", poe_offset=3.0)) == [[[1]], [[2]]]


@pytest.mark.parametrize("policy", ["poe", "count-nll"])
def test_unscored_candidates_rank_last_in_count_order(policy: str) -> None:
    big = cand([[1]], 50, lp=-0.1, first=0)  # never re-scored
    mid = cand([[2]], 10, lp=-0.1, first=1, rescore=[])  # empty list counts as unscored
    low = cand([[3]], 1, lp=-9.0, first=2, rescore=[-500.0])
    lower = cand([[4]], 1, lp=-9.0, first=3, rescore=[-900.0])
    assert grids(S.rank([mid, big, lower, low], policy)) == [[[3]], [[4]], [[1]], [[2]]]


@pytest.mark.parametrize("policy", S.POLICIES)
def test_ties_broken_by_count_then_logprob_then_first_seen(policy: str) -> None:
    # Equal policy scores for all: vote (1 group each), poe and count-nll differ only via count,
    # so give equal counts and equal rescore; ties then fall to best_logprob, then first_seen.
    a = cand([[1]], 2, lp=-3.0, first=0, rescore=[-1.0])
    b = cand([[2]], 2, lp=-1.0, first=4, rescore=[-1.0])
    c = cand([[3]], 2, lp=-1.0, first=2, rescore=[-1.0])
    for perm in ([a, b, c], [c, b, a], [b, a, c]):
        assert grids(S.rank(perm, policy)) == [[[3]], [[2]], [[1]]]


def test_poe_tie_broken_by_count() -> None:
    a = cand([[1]], 1, first=0, rescore=[-2.0])
    b = cand([[2]], 3, first=1, rescore=[-2.0])
    assert grids(S.rank([a, b], "poe")) == [[[2]], [[1]]]


def test_nan_rescore_does_not_break_ordering() -> None:
    a = cand([[1]], 1, first=0, rescore=[float("nan")])
    b = cand([[2]], 1, first=1, rescore=[-100.0])
    assert grids(S.rank([a, b], "poe")) == [[[2]], [[1]]]


# ---------------------------------------------------------------- select_two, errors, records

@pytest.mark.parametrize("policy", S.POLICIES)
def test_select_two_never_duplicates(policy: str) -> None:
    a = cand([[1]], 3, first=0, rescore=[-1.0])
    dup = cand([[1]], 2, first=1, rescore=[-1.0])  # same grid passed twice by a careless caller
    b = cand([[2]], 1, first=2, rescore=[-5.0])
    picked = S.select_two([a, dup, b], policy)
    assert len(picked) == 2 and not grids_equal(picked[0], picked[1])
    assert grids_equal(picked[0], G1) and grids_equal(picked[1], G2)


@pytest.mark.parametrize("policy", S.POLICIES)
def test_select_two_returns_fewer_when_few_candidates(policy: str) -> None:
    only = S.pool([S.Sample(0, 0, G3, -1.0), S.Sample(1, 1, G3, -2.0)])
    picked = S.select_two(only, policy)
    assert len(picked) == 1 and grids_equal(picked[0], G3)
    assert S.select_two([], policy) == []


def test_unknown_policy_raises_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        S.rank([], "majority")
    for name in S.POLICIES:
        assert name in str(err.value)
    with pytest.raises(ConfigError):
        S.select_two([cand([[1]], 1)], "")


def test_to_record_is_json_ready() -> None:
    cands = S.pool([S.Sample(7, 0, G11, -1.5, from_base=True), S.Sample(2, 1, G11, -0.5, True)])
    c = cands[0]
    c.rescore_logprobs = [np.float32(-2.5), -3.0]
    rec = S.to_record(c)
    assert json.loads(json.dumps(rec, allow_nan=False)) == {
        "grid": [[1, 1]], "count": 2, "views": [2, 7], "best_logprob": -0.5,
        "rescore_logprobs": [-2.5, -3.0], "from_base": True}
    unscored = cand([[4]], 1, lp=-math.inf)
    rec = S.to_record(unscored)
    assert rec["rescore_logprobs"] is None and rec["best_logprob"] is None
    json.dumps(rec, allow_nan=False)


def test_policy_scores_are_what_rank_orders_by() -> None:
    """Vote scores count transform groups whose top 3 hold the grid, not samples."""
    a = cand([[1]], 4, group_counts={0: 4}, first=0, rescore=[-1.0, -1.0])
    b = cand([[2]], 3, group_counts={0: 3}, first=1, rescore=[-0.5, -0.2])
    c = cand([[3]], 2, group_counts={0: 2}, first=2)
    d = cand([[4]], 3, group_counts={0: 1, 1: 1, 2: 1}, first=3, rescore=[-3.0, -0.1])
    scores = S.policy_scores([a, b, c, d], poe_offset=1.0)
    assert [s["vote"] for s in scores] == [1, 1, 1, 2]  # d is 4th in group 0
    assert scores[0]["poe"] == 0.0 and scores[2]["poe"] is None and scores[2]["count-nll"] is None
    assert scores[3]["count-nll"] == pytest.approx(3 - 1.55)
    for policy in S.POLICIES:
        ranked = S.rank([a, b, c, d], policy, poe_offset=1.0)
        by = {x.key(): s[policy] for x, s in zip([a, b, c, d], scores)}
        values = [by[x.key()] for x in ranked]
        scored = [v for v in values if v is not None]
        assert values[:len(scored)] == scored == sorted(scored, reverse=True), policy


def test_candidate_records_carry_every_policy_score_and_read_back() -> None:
    a = cand([[1]], 4, group_counts={0: 4}, first=0, rescore=[-1.0, math.nan])
    b = cand([[2, 2]], 3, group_counts={0: 1, 1: 1, 2: 1}, first=1, rescore=[-0.5, -0.2])
    recs = S.candidate_records([a, b], "vote", limit=1)
    assert [r["grid"] for r in recs] == [[[2, 2]]]  # 3 groups beat 1
    assert recs[0]["scores"] == pytest.approx({"vote": 3, "poe": 5.3, "count-nll": 3 - 0.35})
    json.dumps(S.candidate_records([a, b], "poe"), allow_nan=False)  # -inf poe of `a` -> None
    back = S.from_record(json.loads(json.dumps(S.to_record(b))), first_seen=5)
    assert back.grid.tolist() == [[2, 2]] and back.count == 3 and back.first_seen == 5
    assert back.rescore_logprobs == [-0.5, -0.2] and back.best_logprob == -1.0
    assert S.from_record({"grid": [[1, 11]], "count": 1}) is None
    assert S.from_record({"grid": [[1]], "count": "3"}) is None
