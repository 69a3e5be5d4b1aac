"""Time budget: a cost model per task, throughput calibrated on finished tasks, and per-task plans.

Cost units are tokens: TTT costs (samples x epochs x tokens per sample) at the training rate; sampling
costs (views x test inputs x (prompt + answer) tokens) at the sampling rate, except under speculative
search the share of answer paths verified whole by a prefill (measured on finished tasks, 0 until
then: no saving is assumed before one is seen), which costs the same tokens at the verification
rate; a DFS threshold below the configured one multiplies the search's cost by their ratio (more
branches clear it; conservative: at most 1/threshold answers exist); re-scoring costs
(candidates x augmentations x test inputs x (prompt + answer) tokens, as if every pair were one
forward pass) at the scoring rate. The re-scorer computes each augmented prompt once for all the
candidates (rescore.py), so its measured rate in these units is several times its raw token rate;
the estimate stays conservative when candidates are added (they cost only answer tokens). Rates
start from priors (an L4 with a 4B model), are replaced by the engine's start-up calibration on this
machine, and then follow the measured ones. Each plan gives the task its share of the worker-seconds
left, scaled down (fewer TTT samples, views, re-scored candidates and augmentations, never below
floors, and a floor never above what the config asks for) when the time is short; with
`budget.max_scale` > 1, spare time buys, in this order as the one scale grows, more TTT samples
and views (from scale 1), a lower DFS threshold (from `THRESHOLD_FROM`, down to
`MIN_DFS_THRESHOLD`) and more re-scoring (from `RESCORE_FROM`, up to `MAX_RESCORE_AUGMENTATIONS`
augmentations and `RESCORE_GROWTH` x the configured candidates).
The tasks left are kept as running totals (`Remaining`), so planning one task costs the same with
10 or 10,000 tasks left. Estimates plan work; they never kill it (the scheduler's watchdog looks at
heartbeats). This module only computes numbers.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from submission.config import MAX_VIEWS, Config
from submission.arc.grids import Task

# Floors of the scaled-down amounts; a config below a floor is kept as configured.
MIN_SAMPLES = 8  # below this TTT barely moves the adapter; skip-by-deadline is the next step down
MIN_VIEWS = 4
MIN_RESCORE = 2
MIN_AUGMENTATIONS = 2  # the identity and one more transform
MAX_RESCORE_AUGMENTATIONS = 32  # the 2025 ARChitects scored under 32 once prefix reuse made it cheap
RESCORE_GROWTH = 2  # spare time re-scores at most this many times the configured candidates
MIN_DFS_THRESHOLD = 0.07  # the 2025 ARChitects lowered theirs from 17% to 7% with the time their
# speculative DFS freed
THRESHOLD_FROM = 1.5  # spare time lowers the threshold from this scale on (views come first)
RESCORE_FROM = 2.0  # and re-scores more from this one on (views, then the threshold, then this)
RATE_KEYS = ("train", "sample", "score", "verify")
PLAN_SHARE = 0.85  # plans fill this share of the worker-seconds left: slow tasks, hangs and
# engine restarts are not in the cost model, and a chunk still running at the end is lost whole
TAIL_SHARE = 0.2  # no remaining task is planned longer than this share of the wall time left
GRACE_S = 15.0  # runs stop this long before the budget's end to write their final files
ANSWER_MARGIN_S = 20.0  # answers are due this long before a chunk's kill (at most 10% of its time):
# selecting and writing take well under a second; a scoring call already running needs room to end
ANSWER_GUESS = 1.0  # expected answer tokens as a multiple of the test input's cells (+ row breaks)


@dataclass(frozen=True)
class TaskPlan:
    max_samples: int
    n_views: int
    max_rescore: int
    rescore_augmentations: int  # augmented prompts each candidate is re-scored under
    dfs_threshold: float  # the answer search's probability threshold (lower with spare time)
    extra_views: int  # views added to test inputs whose answers disagree (0 when time is short)
    ttt_s: float  # training time allowed (training stops itself there)
    expected_s: float  # whole task at this plan
    sample_s: float  # expected sampling + re-scoring time at this plan
    cap_s: float  # hard cap (budget.task_cap_s): past it the worker is killed, the task re-queued
    answer_s: float  # answers due this long after the chunk starts (before its cap and the run's
    # end): re-scoring that would end later is skipped and the answers go by vote


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
                      "score": b.prior_score_tokens_per_s, "verify": b.prior_verify_tokens_per_s}
        self.measured: set[str] = set()  # rates measured at least once ("accept" too)
        self.accept = 0.0  # share of answer paths verified whole (speculative search), measured

    def full_seconds(self, cost: TaskCost, scale: float = 1.0) -> tuple[float, float]:
        """(TTT seconds, total seconds) of one task at `scale` of the configured work."""
        return self._seconds(cost.sample_tokens, cost.n_test * cost.view_tokens, scale)

    def _seconds(self, sample_tokens: float, input_tokens: float, scale: float
                 ) -> tuple[float, float]:
        """(TTT seconds, total seconds) at `scale` of tasks with these tokens (one TTT sample;
        one view of every test input), for one task or summed over many: the cost is linear."""
        t, s = self.cfg.ttt, self.cfg.sampling
        samples, views, _ = self.amounts(scale)
        augmentations, rescore = self.rescore_amounts(scale)
        ttt = samples * t.epochs * sample_tokens / self.rates["train"]
        threshold = self.dfs_threshold(scale)
        branches = s.dfs_threshold / threshold if threshold > 0 else 1.0
        accept = self.accept if s.speculative and threshold > 0 else 0.0
        greedy = branches * ((1 - accept) / self.rates["sample"] + accept / self.rates["verify"])
        samp = views * input_tokens * (greedy + s.n_samples / self.rates["sample"])
        score = rescore * augmentations * input_tokens / self.rates["score"]
        return ttt, ttt + samp + score

    def amounts(self, scale: float) -> tuple[int, int, int]:
        """(TTT samples, views, candidates re-scored) at `scale`, within floors and 4x the config
        (views also within config.MAX_VIEWS; candidates never above the config)."""
        t, s, sel = self.cfg.ttt, self.cfg.sampling, self.cfg.selection
        samples = _scaled(t.max_samples, scale, MIN_SAMPLES, 4 * t.max_samples, up=True)
        views = _scaled(s.n_views, scale, MIN_VIEWS, min(4 * s.n_views, MAX_VIEWS))
        rescore = _scaled(sel.max_rescore, scale, MIN_RESCORE, sel.max_rescore)
        return samples, views, rescore

    def dfs_threshold(self, scale: float) -> float:
        """The DFS threshold at `scale`: the configured one up to THRESHOLD_FROM; above it (spare
        time) the configured one x THRESHOLD_FROM / scale, never below MIN_DFS_THRESHOLD (nor a
        configured one below it raised; 0, greedy only, stays 0)."""
        conf = self.cfg.sampling.dfs_threshold
        if scale <= THRESHOLD_FROM or conf <= MIN_DFS_THRESHOLD:
            return conf
        return max(MIN_DFS_THRESHOLD, conf * THRESHOLD_FROM / scale)

    def rescore_amounts(self, scale: float) -> tuple[int, int]:
        """(augmentations, candidates re-scored) at `scale`: up to scale 1 both shrink with it
        (`amounts`' candidates; augmentations down to MIN_AUGMENTATIONS); from RESCORE_FROM on
        (spare time, `budget.max_scale` > 1) both grow with scale / RESCORE_FROM, augmentations
        up to MAX_RESCORE_AUGMENTATIONS and candidates up to RESCORE_GROWTH x the configured ones
        (never below the configured amounts)."""
        sel = self.cfg.selection
        rescore = self.amounts(scale)[2]
        if scale <= 1.0:
            conf = sel.rescore_augmentations
            return _scaled(conf, scale, MIN_AUGMENTATIONS, conf), rescore
        grow = max(1.0, scale / RESCORE_FROM)
        augmentations = min(round(sel.rescore_augmentations * grow), MAX_RESCORE_AUGMENTATIONS)
        candidates = min(round(sel.max_rescore * grow), RESCORE_GROWTH * sel.max_rescore)
        return max(sel.rescore_augmentations, augmentations), max(rescore, candidates)

    def scale(self, now: float, remaining: "Remaining | Iterable[TaskCost]") -> float:
        """The largest scale (<= budget.max_scale) at which every remaining task fits the
        worker-seconds left, and the longest of them a share of the wall time left (a task runs
        on one worker: near the end its length matters, not the sum). Bisection over running
        totals; the cost is monotone in the scale. The longest task is bounded by the largest
        TTT sample and the largest test-input tokens left (`Remaining.largest`), which may be two
        tasks: conservative, and what keeps this independent of the number of tasks."""
        left_tasks = as_remaining(remaining)
        wall = max(0.0, self.deadline - now)
        left = PLAN_SHARE * wall * self.workers
        largest = left_tasks.largest()

        def fits(x: float) -> bool:
            if largest is not None and self._seconds(*largest, x)[1] > TAIL_SHARE * wall:
                return False
            return self._seconds(left_tasks.sample_tokens, left_tasks.input_tokens, x)[1] <= left

        hi = self.cfg.budget.max_scale
        if fits(hi):
            return hi
        lo = 0.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    def plan(self, cost: TaskCost, now: float, remaining: "Remaining | Iterable[TaskCost]"
             ) -> TaskPlan:
        """The plan of one task, given every task not yet finished (this one included)."""
        left_tasks = as_remaining(remaining)
        scale = self.scale(now, left_tasks)
        b = self.cfg.budget
        ttt_s, total_s = self.full_seconds(cost, scale)
        samples, views, _ = self.amounts(scale)
        augmentations, rescore = self.rescore_amounts(scale)
        # Training may run past its estimate up to half the task's fair share of the time left
        # (never past 60% of the hard cap, so sampling still fits); it stops itself there.
        fair = max(0.0, self.deadline - now) * self.workers / max(1, left_tasks.n)
        cap = b.task_cap_s
        ttt_allowed = min(max(1.5 * ttt_s, 0.5 * fair), 0.6 * cap,
                          0.5 * max(0.0, self.deadline - now))
        extra = self.cfg.sampling.unsure_extra_views if scale >= 1.0 else 0  # spare time only
        return TaskPlan(max_samples=samples, n_views=views, max_rescore=rescore,
                        rescore_augmentations=augmentations,
                        dfs_threshold=self.dfs_threshold(scale), extra_views=extra, ttt_s=ttt_allowed,
                        expected_s=total_s, sample_s=total_s - ttt_s, cap_s=cap,
                        answer_s=self.answer_s(now, cap))

    def answer_s(self, now: float, cap_s: float) -> float:
        """Seconds from `now` until the answers of a chunk with hard cap `cap_s` are due: before
        the cap and the run's end, ANSWER_MARGIN_S (at most a tenth of the window) earlier."""
        window = max(0.0, min(cap_s, self.end - now))
        return window - min(ANSWER_MARGIN_S, 0.1 * window)

    def calibrate(self, rates: Mapping[str, float | None]) -> None:
        """Take rates measured on this machine (tokens/s by key `train`, `sample`, `score`,
        `verify`; a missing one keeps its value): the first calibration replaces the priors,
        later ones (other workers) are averaged in."""
        for key in RATE_KEYS:
            rate = rates.get(key)
            if rate is None or not math.isfinite(rate) or rate <= 0:
                continue
            self.rates[key] = 0.5 * (self.rates[key] + rate) if key in self.measured else float(rate)
            self.measured.add(key)

    def observe(self, cost: TaskCost, *, ttt_s: float, train_tokens: float, sample_s: float,
                views: int, rescore_s: float, rescored: int, accepted: float | None = None,
                verify_s: float = 0.0, verify_tokens: float = 0.0,
                dfs_threshold: float | None = None) -> None:
        """Update the rates from one finished task (exponential average, new weight 0.3); `views`
        counts generate requests over all test inputs, `rescored` the (augmentation, candidate) pairs
        re-scored (each counted as a view's tokens: the units of `full_seconds`). Speculative
        search adds `accepted` (share of its answer paths verified whole), `verify_s` (of
        `sample_s`, the seconds spent verifying) and `verify_tokens` (prompt + draft tokens
        checked): the sampling rate is then measured on the decoded part alone. `dfs_threshold`:
        the one the task searched at (its plan's), priced as `_seconds` prices it."""
        if accepted is not None and 0.0 <= accepted <= 1.0:
            self._average("accept", accepted)
        share = accepted if accepted is not None and 0.0 <= accepted <= 1.0 else 0.0
        conf = self.cfg.sampling.dfs_threshold
        branches = conf / dfs_threshold if dfs_threshold and conf > dfs_threshold else 1.0
        pairs = (("train", train_tokens, ttt_s),
                 ("sample", views * cost.view_tokens * (1 - share) * branches, sample_s - verify_s),
                 ("verify", verify_tokens, verify_s),
                 ("score", rescored * cost.view_tokens, rescore_s))
        for key, tokens, seconds in pairs:
            if tokens > 0 and seconds > 0.05:
                self._average(key, tokens / seconds)

    def _average(self, key: str, value: float) -> None:
        """The first measurement of a rate (or of the accepted share) replaces its prior; later
        ones are averaged in with weight 0.3."""
        old = self.accept if key == "accept" else self.rates[key]
        new = 0.7 * old + 0.3 * value if key in self.measured else value
        if key == "accept":
            self.accept = new
        else:
            self.rates[key] = new
        self.measured.add(key)


def _scaled(configured: int, scale: float, floor: int, cap: int, *, up: bool = False) -> int:
    """`configured` x `scale` (rounded, or up with `up`) within [floor, cap]; a floor above
    what the config asks for is lowered to the config: floors never raise a setting."""
    value = math.ceil(configured * scale) if up else round(configured * scale)
    return max(min(floor, configured), min(value, cap))


class Remaining:
    """The tasks not finished yet, as running totals: their count, summed TTT-sample tokens and
    test-input tokens (what `Planner._seconds` needs for the sum), and the largest of each
    (max-heaps with lazy deletion). Adding or removing a task is O(log n), reading O(1)."""

    def __init__(self, costs: Iterable[TaskCost] = ()) -> None:
        self.n, self.sample_tokens, self.input_tokens = 0, 0.0, 0.0
        self._heaps: tuple[list[float], list[float]] = ([], [])
        self._gone: tuple[Counter, Counter] = (Counter(), Counter())
        for c in costs:
            self.add(c)

    @staticmethod
    def _keys(cost: TaskCost) -> tuple[float, float]:
        return cost.sample_tokens, cost.n_test * cost.view_tokens

    def add(self, cost: TaskCost) -> None:
        keys = self._keys(cost)
        self.n += 1
        self.sample_tokens += keys[0]
        self.input_tokens += keys[1]
        for heap, key in zip(self._heaps, keys):
            heapq.heappush(heap, -key)

    def remove(self, cost: TaskCost) -> None:
        keys = self._keys(cost)
        self.n -= 1
        if self.n == 0:  # no rounding left over
            self.sample_tokens = self.input_tokens = 0.0
        else:
            self.sample_tokens -= keys[0]
            self.input_tokens -= keys[1]
        for gone, key in zip(self._gone, keys):
            gone[key] += 1

    def largest(self) -> tuple[float, float] | None:
        """(largest TTT-sample tokens, largest test-input tokens) left; None when none is left."""
        if self.n == 0:
            return None
        top = []
        for heap, gone in zip(self._heaps, self._gone):
            while gone[-heap[0]]:
                gone[-heap[0]] -= 1
                heapq.heappop(heap)
            top.append(-heap[0])
        return top[0], top[1]


def as_remaining(remaining: "Remaining | Iterable[TaskCost]") -> Remaining:
    """`remaining` as running totals (a list of costs is summed once)."""
    return remaining if isinstance(remaining, Remaining) else Remaining(remaining)
