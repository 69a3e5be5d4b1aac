"""Pool sampled answers into candidates, rank them under a selection policy, pick two attempts.

Does: merge identical grids (same shape and cells) into `Candidate`s; rank them by MIT-style
two-level voting ("vote"), ARChitects product of experts ("poe") or NVARC count minus mean NLL
("count-nll"), each by a score computed here only (`policy_scores`, which the report shows too);
return at most two distinct grids; summarise a candidate as a JSON-ready dict and read it back.
Does not: sample, invert augmentations, compute re-scoring log-probabilities (the caller fills
`Candidate.rescore_logprobs`) or fill missing attempts with fallbacks (the caller does and counts).
Everything is deterministic: every ordering ends in explicit tie-breaks.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from submission.config import Policy
from submission.errors import ConfigError, InputError
from submission.arc.grids import Grid, grid_to_list
from submission.arc.tasks import validate_grid

POLICIES: tuple[str, ...] = typing.get_args(Policy)  # ("vote", "poe", "count-nll")
VOTE_TOP_K = 3  # candidates kept per transform group in two-level voting
RECORDED_CANDIDATES = 8  # candidates a task record lists per test input, best first


def grid_key(grid: Grid) -> bytes:
    """Hashable identity of a grid: its shape, then its cells as uint8 bytes."""
    arr = np.ascontiguousarray(grid, dtype=np.uint8)
    return f"{arr.shape[0]}x{arr.shape[1]}:".encode() + arr.tobytes()


@dataclass
class Sample:
    """One generated answer, already inverted to the original frame."""

    view: int
    group: int
    grid: Grid | None  # None when the text did not parse
    logprob: float  # sum of generated-token logprobs (0.0 if unknown)
    from_base: bool = False  # produced by the base model (no adapter)


@dataclass
class Candidate:
    """A distinct answer grid and the evidence for it.

    `group_counts` (samples per transform group) feeds two-level voting; when it is empty
    (a hand-built candidate) every group in `groups` counts as one sample.
    """

    grid: Grid
    count: int
    views: set[int]
    groups: set[int]
    best_logprob: float
    first_seen: int
    from_base: bool
    rescore_logprobs: list[float] | None = None
    group_counts: dict[int, int] = field(default_factory=dict)

    def key(self) -> bytes:
        """Hashable identity: shape + bytes."""
        return grid_key(self.grid)

    def per_group(self) -> dict[int, int]:
        """Number of samples per transform group."""
        return dict(self.group_counts) if self.group_counts else {g: 1 for g in self.groups}


def _tiebreak(c: Candidate) -> tuple[int, float, int, bytes]:
    """(count desc, best_logprob desc, first_seen asc, grid bytes) as an ascending sort key."""
    return (-c.count, -_finite(c.best_logprob), c.first_seen, c.key())


def _finite(x: float) -> float:
    """NaN becomes -inf so that comparisons stay total."""
    return -math.inf if math.isnan(x) else float(x)


def pool(samples: Sequence[Sample]) -> list[Candidate]:
    """Merge samples with identical grids; skip None grids. Ordered by `_tiebreak`."""
    by_key: dict[bytes, Candidate] = {}
    for i, s in enumerate(samples):
        if s.grid is None:
            continue
        k = grid_key(s.grid)
        c = by_key.get(k)
        if c is None:
            c = by_key[k] = Candidate(
                grid=np.array(s.grid, dtype=np.uint8), count=0, views=set(), groups=set(),
                best_logprob=-math.inf, first_seen=i, from_base=True)
        c.count += 1
        c.views.add(s.view)
        c.groups.add(s.group)
        c.group_counts[s.group] = c.group_counts.get(s.group, 0) + 1
        c.best_logprob = max(c.best_logprob, _finite(s.logprob))
        c.from_base = c.from_base and s.from_base
    return sorted(by_key.values(), key=_tiebreak)


def count_unparsed(samples: Sequence[Sample]) -> int:
    """Number of samples whose text did not parse into a grid."""
    return sum(1 for s in samples if s.grid is None)


def _vote_scores(candidates: Sequence[Candidate]) -> list[float]:
    """Per candidate: number of groups whose top-`VOTE_TOP_K` list contains it."""
    per_group = [c.per_group() for c in candidates]
    members: dict[int, list[int]] = {}
    for idx, counts in enumerate(per_group):
        for g, n in counts.items():
            if n > 0:
                members.setdefault(g, []).append(idx)
    scores = [0.0] * len(candidates)
    for g in sorted(members):
        ranked = sorted(members[g], key=lambda i: (
            -per_group[i][g], -_finite(candidates[i].best_logprob),
            candidates[i].first_seen, candidates[i].key()))
        for i in ranked[:VOTE_TOP_K]:
            scores[i] += 1.0
    return scores


def _rescored(c: Candidate) -> list[float] | None:
    """The re-scoring logprobs with NaN as -inf, or None when there are none."""
    if not c.rescore_logprobs:
        return None
    return [_finite(x) for x in c.rescore_logprobs]


def _poe_score(c: Candidate, offset: float) -> float | None:
    lps = _rescored(c)
    return None if lps is None else sum(lp + offset for lp in lps)


def _count_nll_score(c: Candidate) -> float | None:
    lps = _rescored(c)
    return None if lps is None else c.count - sum(-lp for lp in lps) / len(lps)


def _scores(candidates: Sequence[Candidate], policy: str, poe_offset: float) -> list[float | None]:
    """What `policy` ranks by, per candidate (higher first; None: nothing to rank by)."""
    if policy == "vote":
        return list(_vote_scores(candidates))
    score_fn: Callable[[Candidate], float | None] = (
        (lambda c: _poe_score(c, poe_offset)) if policy == "poe" else _count_nll_score)
    return [score_fn(c) for c in candidates]


def policy_scores(candidates: Sequence[Candidate], *,
                  poe_offset: float = 3.0) -> list[dict[str, float | None]]:
    """Per candidate, the score every policy ranks it by: "vote" the transform groups whose top
    `VOTE_TOP_K` hold it, "poe" the sum of re-scoring logprobs plus `poe_offset`, "count-nll" the
    count minus the mean re-scoring NLL (None without re-scoring). Votes depend on the other
    candidates: pass the whole pool."""
    per_policy = {p: _scores(candidates, p, poe_offset) for p in POLICIES}
    return [{p: per_policy[p][i] for p in POLICIES} for i in range(len(candidates))]


def rank(candidates: Sequence[Candidate], policy: str, *,
         poe_offset: float = 3.0) -> list[Candidate]:
    """Candidates best first under `policy` (by `policy_scores`); ties by (count desc,
    best_logprob desc, first_seen asc).

    For "poe" and "count-nll", candidates without re-scoring logprobs come after all re-scored
    ones, in count order.
    """
    if policy not in POLICIES:
        raise ConfigError(f"unknown selection policy {policy!r}; choose one of {', '.join(POLICIES)}")
    cands = list(candidates)
    scores = _scores(cands, policy, poe_offset)
    scored = sorted((i for i, s in enumerate(scores) if s is not None),
                    key=lambda i: (-scores[i], _tiebreak(cands[i])))
    unscored = sorted((i for i, s in enumerate(scores) if s is None), key=lambda i: _tiebreak(cands[i]))
    return [cands[i] for i in scored + unscored]


def select_two(candidates: Sequence[Candidate], policy: str, *,
               poe_offset: float = 3.0) -> list[Grid]:
    """The first two distinct grids of `rank()`; fewer when fewer distinct candidates exist."""
    picked: list[Grid] = []
    seen: set[bytes] = set()
    for c in rank(candidates, policy, poe_offset=poe_offset):
        k = c.key()
        if k in seen:
            continue
        seen.add(k)
        picked.append(c.grid)
        if len(picked) == 2:
            break
    return picked


def _json_float(x: float) -> float | None:
    """A float JSON can hold; None for NaN and infinities."""
    return float(x) if math.isfinite(x) else None


def to_record(c: Candidate, scores: dict[str, float | None] | None = None) -> dict[str, Any]:
    """JSON-ready summary (strict JSON: non-finite floats become None), with the candidate's
    `policy_scores` when given."""
    rec = {
        "grid": grid_to_list(c.grid),
        "count": int(c.count),
        "views": sorted(int(v) for v in c.views),
        "best_logprob": _json_float(c.best_logprob),
        "rescore_logprobs": None if c.rescore_logprobs is None
        else [_json_float(x) for x in c.rescore_logprobs],
        "from_base": bool(c.from_base),
    }
    if scores is not None:
        rec["scores"] = {p: None if v is None else _json_float(v) for p, v in scores.items()}
    return rec


def from_record(rec: dict[str, Any], first_seen: int = 0) -> Candidate | None:
    """The Candidate a `to_record` summary describes (its transform groups are not recorded),
    or None when the summary has no grid or count."""
    count = rec.get("count")
    try:
        grid = validate_grid(rec.get("grid"))
    except InputError:
        return None
    if type(count) is not int:
        return None
    lps = rec.get("rescore_logprobs")
    lps = [math.nan if not isinstance(x, (int, float)) or isinstance(x, bool) else float(x)
           for x in lps] if isinstance(lps, list) else None
    best = rec.get("best_logprob")
    return Candidate(grid=grid, count=count, views=set(), groups=set(),
                     best_logprob=float(best) if isinstance(best, (int, float)) else -math.inf,
                     first_seen=first_seen, from_base=bool(rec.get("from_base")),
                     rescore_logprobs=lps or None)


def candidate_records(candidates: Sequence[Candidate], policy: str, *, poe_offset: float = 3.0,
                      limit: int = RECORDED_CANDIDATES) -> list[dict[str, Any]]:
    """The first `limit` candidates of `rank(policy)` as `to_record` summaries, each with its
    score under every policy (computed over all `candidates`)."""
    scores = {c.key(): s for c, s in zip(candidates, policy_scores(candidates, poe_offset=poe_offset))}
    return [to_record(c, scores[c.key()])
            for c in rank(candidates, policy, poe_offset=poe_offset)[:limit]]
