"""Pool sampled answers into candidates, rank them under a selection policy, pick two attempts.

Does: merge identical grids (same shape and cells) into `Candidate`s; rank them by MIT-style
two-level voting ("vote"), ARChitects product of experts ("poe") or NVARC count minus mean NLL
("count-nll"); return at most two distinct grids; summarise a candidate as a JSON-ready dict.
Does not: sample, invert augmentations, compute re-scoring log-probabilities (the caller fills
`Candidate.rescore_logprobs`) or fill missing attempts with fallbacks (the caller does and counts).
Everything is deterministic: every ordering ends in explicit tie-breaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ConfigError
from .grids import Grid, grid_to_list

POLICIES = ("vote", "poe", "count-nll")
VOTE_TOP_K = 3  # candidates kept per transform group in two-level voting


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


def rank(candidates: Sequence[Candidate], policy: str, *,
         poe_offset: float = 3.0) -> list[Candidate]:
    """Candidates best first under `policy`; ties by (count desc, best_logprob desc, first_seen asc).

    For "poe" and "count-nll", candidates without re-scoring logprobs come after all re-scored
    ones, in count order.
    """
    if policy not in POLICIES:
        raise ConfigError(f"unknown selection policy {policy!r}; choose one of {', '.join(POLICIES)}")
    cands = list(candidates)
    if policy == "vote":
        scores = _vote_scores(cands)
        order = sorted(range(len(cands)), key=lambda i: (-scores[i], _tiebreak(cands[i])))
        return [cands[i] for i in order]
    score_fn: Callable[[Candidate], float | None] = (
        (lambda c: _poe_score(c, poe_offset)) if policy == "poe" else _count_nll_score)
    scored = [(score_fn(c), c) for c in cands]
    with_score = sorted(((s, c) for s, c in scored if s is not None),
                        key=lambda sc: (-sc[0], _tiebreak(sc[1])))
    without = sorted((c for s, c in scored if s is None), key=_tiebreak)
    return [c for _, c in with_score] + without


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


def to_record(c: Candidate) -> dict[str, Any]:
    """JSON-ready summary (strict JSON: non-finite floats become None)."""
    return {
        "grid": grid_to_list(c.grid),
        "count": int(c.count),
        "views": sorted(int(v) for v in c.views),
        "best_logprob": _json_float(c.best_logprob),
        "rescore_logprobs": None if c.rescore_logprobs is None
        else [_json_float(x) for x in c.rescore_logprobs],
        "from_base": bool(c.from_base),
    }
