"""Time budget: a cost model per task, throughput calibrated on finished tasks, and per-task plans.

Cost units are tokens: TTT costs (samples x epochs x tokens per sample) at the training rate; sampling
costs (views x test inputs x (prompt + answer) tokens) at the sampling rate; re-scoring costs
(candidates x augmentations x test inputs x (prompt + answer) tokens, as if every pair were one
forward pass) at the scoring rate. The re-scorer computes each augmented prompt once for all the
candidates (rescore.py), so its measured rate in these units is several times its raw token rate;
the estimate stays conservative when candidates are added (they cost only answer tokens). Rates
start from priors (an L4 with a 4B model), are replaced by the engine's start-up calibration on this
machine, and then follow the measured ones. Each plan gives the task its share of the worker-seconds
left, scaled down (fewer TTT samples and views, never below floors) when the time is short; with
`budget.max_scale` > 1, spare time scales them up, and re-scoring with them (up to
`MAX_RESCORE_AUGMENTATIONS` augmentations and `RESCORE_GROWTH` x the configured candidates).
Estimates plan work; they never kill it (the scheduler's watchdog looks at heartbeats). This module
only computes numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import Config
from .grids import Task

MIN_SAMPLES = 8  # below this TTT barely moves the adapter; skip-by-deadline is the next step down
MIN_VIEWS = 4
MIN_RESCORE = 2
MAX_RESCORE_AUGMENTATIONS = 32  # the 2025 ARChitects scored under 32 once prefix reuse made it cheap
RESCORE_GROWTH = 2  # spare time re-scores at most this many times the configured candidates
RATE_KEYS = ("train", "sample", "score")
PLAN_SHARE = 0.85  # plans fill this share of the worker-seconds left: slow tasks, hangs and
# engine restarts are not in the cost model, and a chunk still running at the end is lost whole
TAIL_SHARE = 0.2  # no remaining task is planned longer than this share of the wall time left
GRACE_S = 15.0  # runs stop this long before the budget's end to write their final files
ANSWER_GUESS = 1.0  # expected answer tokens as a multiple of the test input's cells (+ row breaks)


@dataclass(frozen=True)
class TaskPlan:
    max_samples: int
    n_views: int
    max_rescore: int
    rescore_augmentations: int  # augmented prompts each candidate is re-scored under
    extra_views: int  # views added to test inputs whose answers disagree (0 when time is short)
    ttt_s: float  # training time allowed (training stops itself there)
    expected_s: float  # whole task at this plan
    sample_s: float  # expected sampling + re-scoring time at this plan
    cap_s: float  # hard cap (budget.task_cap_s): past it the worker is killed, the task re-queued


@dataclass(frozen=True)
class TaskCost:
    sample_tokens: float  # tokens of one TTT sample (all demos)
    view_tokens: float  # prompt + expected answer tokens of one view, averaged over test inputs
    n_test: int

    @classmethod
    def of(cls, task: Task) -> "TaskCost":
        def cells(g) -> int:
            return g.shape[0] * (g.shape[1] + 1)

        demo = sum(cells(p.input) + cells(p.output) + 8 for p in task.train)
        view = sum(demo + cells(t) * (1 + ANSWER_GUESS) + 8 for t in task.test_inputs)
        return cls(float(demo), view / task.n_test, task.n_test)


class Planner:
    """Plans tasks against one global deadline shared by `workers` parallel workers."""

    def __init__(self, cfg: Config, *, start: float, workers: int) -> None:
        self.cfg, self.workers = cfg, max(1, workers)
        self.deadline = start + cfg.budget.time_budget_s
        self.end = self.deadline - min(GRACE_S, 0.1 * cfg.budget.time_budget_s)  # work stops here
        b = cfg.budget
        self.rates = {"train": b.prior_train_tokens_per_s, "sample": b.prior_sample_tokens_per_s,
                      "score": b.prior_score_tokens_per_s}
        self.measured: set[str] = set()  # rates measured at least once

    def full_seconds(self, cost: TaskCost, scale: float = 1.0) -> tuple[float, float]:
        """(TTT seconds, total seconds) of one task at `scale` of the configured work."""
        t, s = self.cfg.ttt, self.cfg.sampling
        samples, views, _ = self.amounts(scale)
        augmentations, rescore = self.rescore_amounts(scale)
        ttt = samples * t.epochs * cost.sample_tokens / self.rates["train"]
        per_input = cost.n_test * cost.view_tokens
        samp = views * (1 + s.n_samples) * per_input / self.rates["sample"]
        score = rescore * augmentations * per_input / self.rates["score"]
        return ttt, ttt + samp + score

    def amounts(self, scale: float) -> tuple[int, int, int]:
        """(TTT samples, views, candidates re-scored) at `scale`, within floors and 4x the config."""
        t, s, sel = self.cfg.ttt, self.cfg.sampling, self.cfg.selection
        samples = max(MIN_SAMPLES, min(math.ceil(t.max_samples * scale), 4 * t.max_samples))
        views = max(MIN_VIEWS, min(round(s.n_views * scale), 4 * s.n_views))
        rescore = max(MIN_RESCORE, min(round(sel.max_rescore * scale), sel.max_rescore))
        return samples, views, rescore

    def rescore_amounts(self, scale: float) -> tuple[int, int]:
        """(augmentations, candidates re-scored) at `scale`: the configured augmentations and
        `amounts`' candidates up to scale 1; above it (spare time, `budget.max_scale` > 1) both grow
        with the scale, augmentations up to MAX_RESCORE_AUGMENTATIONS and candidates up to
        RESCORE_GROWTH x the configured ones (never below the configured amounts)."""
        sel = self.cfg.selection
        rescore = self.amounts(scale)[2]
        if scale <= 1.0:
            return sel.rescore_augmentations, rescore
        augmentations = min(round(sel.rescore_augmentations * scale), MAX_RESCORE_AUGMENTATIONS)
        candidates = min(round(sel.max_rescore * scale), RESCORE_GROWTH * sel.max_rescore)
        return max(sel.rescore_augmentations, augmentations), max(rescore, candidates)

    def scale(self, now: float, remaining: list[TaskCost]) -> float:
        """The largest scale (<= budget.max_scale) at which every remaining task fits the
        worker-seconds left, and the longest of them a share of the wall time left (a task runs
        on one worker: near the end its length matters, not the sum). Bisection; the cost is
        monotone in the scale."""
        wall = max(0.0, self.deadline - now)
        left = PLAN_SHARE * wall * self.workers
        longest = max(remaining, key=lambda c: self.full_seconds(c)[1], default=None)

        def fits(x: float) -> bool:
            if longest is not None and self.full_seconds(longest, x)[1] > TAIL_SHARE * wall:
                return False
            return sum(self.full_seconds(c, x)[1] for c in remaining) <= left

        hi = self.cfg.budget.max_scale
        if fits(hi):
            return hi
        lo = 0.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    def plan(self, cost: TaskCost, now: float, remaining: list[TaskCost]) -> TaskPlan:
        """The plan of one task, given every task not yet finished (this one included)."""
        scale = self.scale(now, remaining)
        b = self.cfg.budget
        ttt_s, total_s = self.full_seconds(cost, scale)
        samples, views, _ = self.amounts(scale)
        augmentations, rescore = self.rescore_amounts(scale)
        # Training may run past its estimate up to half the task's fair share of the time left
        # (never past 60% of the hard cap, so sampling still fits); it stops itself there.
        fair = max(0.0, self.deadline - now) * self.workers / max(1, len(remaining))
        cap = b.task_cap_s
        ttt_allowed = min(max(1.5 * ttt_s, 0.5 * fair), 0.6 * cap,
                          0.5 * max(0.0, self.deadline - now))
        extra = self.cfg.sampling.unsure_extra_views if scale >= 1.0 else 0  # spare time only
        return TaskPlan(max_samples=samples, n_views=views, max_rescore=rescore,
                        rescore_augmentations=augmentations, extra_views=extra, ttt_s=ttt_allowed,
                        expected_s=total_s, sample_s=total_s - ttt_s, cap_s=cap)

    def calibrate(self, rates: dict[str, float]) -> None:
        """Take rates measured on this machine (tokens/s by key `train`, `sample`, `score`): the
        first calibration replaces the priors, later ones (other workers) are averaged in."""
        for key in RATE_KEYS:
            rate = rates.get(key)
            if rate is None or not math.isfinite(rate) or rate <= 0:
                continue
            self.rates[key] = 0.5 * (self.rates[key] + rate) if key in self.measured else float(rate)
            self.measured.add(key)

    def observe(self, cost: TaskCost, *, ttt_s: float, train_tokens: float, sample_s: float,
                views: int, rescore_s: float, rescored: int) -> None:
        """Update the rates from one finished task (exponential average, new weight 0.3); `views`
        counts generate requests over all test inputs, `rescored` the (augmentation, candidate) pairs
        re-scored (each counted as a view's tokens: the units of `full_seconds`)."""
        pairs = (("train", train_tokens, ttt_s), ("sample", views * cost.view_tokens, sample_s),
                 ("score", rescored * cost.view_tokens, rescore_s))
        for key, tokens, seconds in pairs:
            if tokens > 0 and seconds > 0.05:
                rate = tokens / seconds  # the first measurement of a rate replaces its prior
                self.rates[key] = 0.7 * self.rates[key] + 0.3 * rate if key in self.measured else rate
                self.measured.add(key)
