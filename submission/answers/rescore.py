"""Re-scoring: the log-probability of each top candidate under several augmented prompts.

For one test input, every candidate is scored under the same `n` transforms (identity first): the
transformed demos and query form the prompt, the transformed candidate the answer, and the scorer
returns the answer's total log p under the task's adapter. All pairs of the input go to the scorer
at once, grouped by prompt: a scorer with `score_groups` computes each prompt once and scores all its
answers against it (the forward pass reuses the prompt's KV, vLLM reads its prefix cache); any
other scorer gets one `score` call per pair.

Also `RankCheck`, which decides under `selection.rescore_backend=auto` whether vLLM may re-score in
place of the forward pass. It compares what selection uses, the order of the candidates, under both
backends on the first test inputs, not log-probabilities against a tolerance: vLLM 0.32.0 has no
bitsandbytes loader, so on a GPU it serves the adapter on the 16-bit base while training (and the
forward pass) used the 4-bit one, and the two differ by far more than rounding even when they rank
the candidates alike. Selection itself is select.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from submission.arc.augment import sample_transforms
from submission.arc.fit import fit_pairs, ordered_pairs
from submission.errors import SamplerError, reraise_unless_ours
from submission.events import RESCORE_VLLM_DISAGREES, RESCORE_VLLM_FAILED
from submission.arc.formats import TextFormat
from submission.arc.grids import Task
from submission.answers.sampling import Adapter, Sampler
from submission.answers.select import Candidate, rank

Pair = tuple[list[int], list[int]]  # (prompt, answer) token ids

CHECK_INPUTS = 2  # test inputs with two or more candidates compared before deciding
CHECK_MAX_INPUTS = 6  # test inputs looked at, at most (a single candidate has no order to compare)
MIN_RANK_CORR = 0.8  # Spearman correlation both orders must reach (inputs with 3+ candidates)
# What a failing vLLM scoring call raises (vLLM's own errors and stale or malformed outputs arrive
# as SamplerError; an engine failure as RuntimeError or ValueError); the check then keeps the
# forward pass. Programming errors (KeyError, TypeError, ...) are not caught.
VLLM_SCORE_ERRORS = (SamplerError, RuntimeError, ValueError)


class GroupScorer(Protocol):
    def score_groups(self, groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
                     adapter: Adapter | None) -> list[list[float]]:
        """Per (prompt, answers) group, each answer's total log p after the prompt."""
        ...


def rescore(task: Task, test_index: int, candidates: Sequence[Candidate], fmt: TextFormat,
            scorer: Sampler, adapter: Adapter | None, rng: np.random.Generator, *, n: int,
            max_len: int, keep_background: bool = True) -> int:
    """Fill `rescore_logprobs` of every candidate (one per transform, in transform order);
    returns the number of (transform, candidate) pairs scored."""
    if not candidates:
        return 0
    pairs, owner = augmented_pairs(task, test_index, candidates, fmt, rng, n=n, max_len=max_len,
                                   keep_background=keep_background)
    if isinstance(scorer, RankCheck):
        scores = scorer.run(candidates, pairs, owner, adapter)
    else:
        scores = score_pairs(scorer, pairs, adapter)
    for c in candidates:
        c.rescore_logprobs = []
    for i, s in zip(owner, scores):
        candidates[i].rescore_logprobs.append(s)
    return len(pairs)


def augmented_pairs(task: Task, test_index: int, candidates: Sequence[Candidate], fmt: TextFormat,
                    rng: np.random.Generator, *, n: int, max_len: int, keep_background: bool = True
                    ) -> tuple[list[Pair], list[int]]:
    """The (prompt, answer) pairs of every candidate under `n` transforms (identity first), and
    which candidate each pair belongs to."""
    n_demos = len(task.train)
    transforms = sample_transforms(rng, n, n_demos, keep_background=keep_background,
                                   shuffle_order=n_demos > 1, include_identity=True)
    pairs: list[Pair] = []
    owner: list[int] = []
    for t in transforms:
        demos = ordered_pairs(t, task.train)
        query = t.apply_grid(task.test_inputs[test_index])
        by_len: dict[int, list[int]] = {}  # the fitted prompt depends on the answer's length only
        for i, c in enumerate(candidates):
            answer = fmt.encode_answer(t.apply_grid(c.grid))
            if len(answer) not in by_len:
                by_len[len(answer)] = fitted_prompt(fmt, demos, query, len(answer), max_len)
            pairs.append((by_len[len(answer)], answer))
            owner.append(i)
    return pairs, owner


def score_pairs(scorer: Sampler | GroupScorer, pairs: Sequence[Pair],
                adapter: Adapter | None) -> list[float]:
    """Each pair's answer log p: one `score_groups` call with the pairs grouped by prompt when the
    scorer has it, else one `score` call per pair."""
    many = getattr(scorer, "score_groups", None)
    if many is None:
        return [scorer.score(p, a, adapter) for p, a in pairs]
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, (p, _) in enumerate(pairs):
        by_prompt.setdefault(tuple(p), []).append(i)
    keys = list(by_prompt)
    got = many([(list(k), [pairs[i][1] for i in by_prompt[k]]) for k in keys], adapter)
    out = [0.0] * len(pairs)
    for k, scores in zip(keys, got):
        for i, s in zip(by_prompt[k], scores):
            out[i] = float(s)
    return out


def fitted_prompt(fmt: TextFormat, demos: Sequence, query, answer_len: int, max_len: int) -> list[int]:
    """The prompt of `demos` + `query`, demos dropped from the front until an answer of
    `answer_len` tokens fits in `max_len` (at least one demo is kept)."""
    return fit_pairs(fmt, demos, query=query, max_len=max_len, answer_tokens=answer_len,
                     overlong="keep").ids


def scores_agree(a: Sampler, b: Sampler, prompt: list[int], answer: list[int],
                 adapter: Adapter | None, *, tol: float = 1e-3) -> tuple[bool, float, float]:
    """(agree, score of a, score of b) on one prompt: |a - b| <= tol * max(1, |b|)."""
    sa, sb = a.score(prompt, answer, adapter), b.score(prompt, answer, adapter)
    return abs(sa - sb) <= tol * max(1.0, abs(sb)), sa, sb


# --- the vLLM-vs-forward decision ---------------------------------------------------------------


class RankCheck:
    """Scores the first test inputs with both backends and hands selection the forward pass's
    scores (the weights training used). Per input with 2+ candidates it records whether the
    selection policy puts the same two candidates on top under both, the Spearman correlation of
    the two orders (3+ candidates), and the log-prob gap; after `CHECK_INPUTS` such inputs (or
    `CHECK_MAX_INPUTS` looked at) it decides: vLLM when the orders agree and vLLM was faster on the
    same work, else the forward pass. `info["rescore_check"]` holds the measurements and decision,
    `info["rescore_backend"]` the choice, both updated in place."""

    name = "rank-check"

    def __init__(self, vllm: Sampler, forward: Sampler, *, policy: str, poe_offset: float,
                 info: dict[str, Any], count: Callable[[str], None]) -> None:
        self.vllm, self.forward = vllm, forward
        self.policy = policy if policy != "vote" else "count-nll"  # vote does not use the scores
        self.poe_offset, self.info, self.count = poe_offset, info, count
        self.looked = 0
        self.choice: str | None = None
        self.report: dict[str, Any] = {"status": "checking", "policy": self.policy, "inputs": [],
                                       "seconds": {"vllm": 0.0, "forward": 0.0}}
        info["rescore_check"] = self.report
        info["rescore_backend"] = "forward"  # until decided

    def score(self, prompt: list[int], answer: list[int], adapter: Adapter | None) -> float:
        return self.forward.score(prompt, answer, adapter)

    def run(self, candidates: Sequence[Candidate], pairs: Sequence[Pair], owner: Sequence[int],
            adapter: Adapter | None) -> list[float]:
        """The forward pass's scores of `pairs`; vLLM's too while the check is open."""
        seconds = self.report["seconds"]
        t0 = time.perf_counter()
        trusted = score_pairs(self.forward, pairs, adapter)
        seconds["forward"] += time.perf_counter() - t0
        if self.choice is not None:
            return trusted
        t0 = time.perf_counter()
        try:
            other = score_pairs(self.vllm, pairs, adapter)
        except VLLM_SCORE_ERRORS as exc:
            reraise_unless_ours(exc)
            self.count(RESCORE_VLLM_FAILED)
            self._decide("forward", f"vLLM scoring failed: {type(exc).__name__}: {exc}"[:500])
            return trusted
        seconds["vllm"] += time.perf_counter() - t0
        self.looked += 1
        if len(candidates) >= 2:
            self.report["inputs"].append(compare_orders(candidates, owner, trusted, other,
                                                        self.policy, self.poe_offset))
        if len(self.report["inputs"]) >= CHECK_INPUTS or self.looked >= CHECK_MAX_INPUTS:
            self._finish()
        return trusted

    def _finish(self) -> None:
        rows, sec = self.report["inputs"], self.report["seconds"]
        if not rows:
            self._decide("forward", f"none of the first {self.looked} test inputs had two "
                                    "candidates to order")
            return
        corrs = [r["rank_corr"] for r in rows if r["rank_corr"] is not None]
        top2 = sum(r["top2_same"] for r in rows)
        self.report.update(top2_same=f"{top2}/{len(rows)}", min_rank_corr=min(corrs, default=None),
                           max_logprob_gap=max(r["max_logprob_gap"] for r in rows))
        agree = top2 == len(rows) and all(c >= MIN_RANK_CORR for c in corrs)
        speed = sec["forward"] / max(sec["vllm"], 1e-9)
        if not agree:
            self.count(RESCORE_VLLM_DISAGREES)
            self._decide("forward", f"candidate orders differ (same top two on {top2}/{len(rows)} "
                                    f"inputs, rank correlation {min(corrs, default=1.0):.2f})")
        elif speed <= 1.0:
            self._decide("forward", f"orders agree, but vLLM was not faster ({speed:.2f}x)")
        else:
            self._decide("vllm", f"orders agree on {len(rows)} inputs and vLLM was {speed:.2f}x "
                                 "faster")

    def _decide(self, choice: str, reason: str) -> None:
        self.choice = choice
        self.report.update(status="decided", choice=choice, reason=reason, inputs_scored=self.looked)
        self.info["rescore_backend"] = choice


def compare_orders(candidates: Sequence[Candidate], owner: Sequence[int], a: Sequence[float],
                   b: Sequence[float], policy: str, poe_offset: float) -> dict[str, Any]:
    """How the candidate order under `policy` differs between two sets of re-scoring log-probs
    (per pair, `owner[i]` the candidate of pair i)."""
    first, second = (_order(candidates, owner, s, policy, poe_offset) for s in (a, b))
    gaps = [abs(x - y) for x, y in zip(a, b)]
    return {"candidates": len(candidates), "top2_same": set(first[:2]) == set(second[:2]),
            "rank_corr": spearman(first, second) if len(candidates) >= 3 else None,
            "max_logprob_gap": max(gaps), "mean_logprob_gap": sum(gaps) / len(gaps)}


def _order(candidates: Sequence[Candidate], owner: Sequence[int], scores: Sequence[float],
           policy: str, poe_offset: float) -> list[bytes]:
    lps: list[list[float]] = [[] for _ in candidates]
    for i, s in zip(owner, scores):
        lps[i].append(s)
    scored = [replace(c, rescore_logprobs=lp) for c, lp in zip(candidates, lps)]
    return [c.key() for c in rank(scored, policy, poe_offset=poe_offset)]


def spearman(first: Sequence[Any], second: Sequence[Any]) -> float:
    """Spearman rank correlation of two orders of the same distinct items (1: same order)."""
    n = len(first)
    if n < 2:
        return 1.0
    where = {k: i for i, k in enumerate(second)}
    d2 = sum((i - where[k]) ** 2 for i, k in enumerate(first))
    return 1.0 - 6.0 * d2 / (n * (n * n - 1))
