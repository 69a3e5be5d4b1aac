"""Tests of submission.runtime.budget (TaskCost, Planner, TaskPlan) and submission.runtime.schedule (Scheduler):
the cost model, scaling against the time left, per-task plans, rate calibration, chunk assignment,
liveness (stall allowances that grow on retry, never estimate-based kills), the hard cap,
re-queue-once-then-give-up, and a small simulated run on a fake clock."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from submission.runtime.budget import (
    ANSWER_GUESS,
    MAX_RESCORE_AUGMENTATIONS,
    MIN_AUGMENTATIONS,
    MIN_DFS_THRESHOLD,
    RESCORE_FROM,
    THRESHOLD_FROM,
    MIN_RESCORE,
    MIN_SAMPLES,
    MIN_VIEWS,
    PLAN_SHARE,
    RESCORE_GROWTH,
    TAIL_SHARE,
    Planner,
    Remaining,
    TaskCost,
    TaskPlan,
)
from submission.config import Config
from submission.arc.grids import Pair, Task
from submission.runtime.schedule import CHUNK_SHARE, MAX_ATTEMPTS, STALL_FACTOR, Scheduler


def grid(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w), dtype=np.uint8)


def make_task(task_id: str, side: int = 5, *, n_train: int = 2, test_sides: tuple[int, ...] | None = None,
              ) -> Task:
    """A task of square grids: `n_train` demo pairs of `side` x `side`, test inputs of `test_sides`."""
    sides = (side,) if test_sides is None else test_sides
    train = tuple(Pair(grid(side, side), grid(side, side)) for _ in range(n_train))
    return Task(task_id, train, tuple(grid(s, s) for s in sides))


def cfg_with(*sets: str) -> Config:
    """The default config, but spending no spare time (`budget.max_scale=1`) unless `sets` say:
    these tests check the planner up to scale 1 and set a larger one where they test it."""
    return Config().with_overrides(["budget.max_scale=1", *sets])


def demand(planner: Planner, costs: list[TaskCost], scale: float) -> float:
    return sum(planner.full_seconds(c, scale)[1] for c in costs)


def fits(planner: Planner, costs: list[TaskCost], now: float, scale: float) -> bool:
    """The planner's rule, written out: the sum fits PLAN_SHARE of the worker-seconds left and
    the longest task TAIL_SHARE of the wall time left."""
    wall = max(0.0, planner.deadline - now)
    longest = max((planner.full_seconds(c, scale)[1] for c in costs), default=0.0)
    return (demand(planner, costs, scale) <= PLAN_SHARE * wall * planner.workers * (1 + 1e-9)
            and longest <= TAIL_SHARE * wall * (1 + 1e-9))


# ---------------------------------------------------------------- TaskCost


def test_task_cost_exact_numbers():
    # demo: one pair 2x3 -> 3x4: cells 2*(3+1)=8 and 3*(4+1)=15, plus 8 -> 31 tokens
    # test inputs 1x1 (2 cells) and 3x3 (12 cells): views 31 + 2*2 + 8 = 43 and 31 + 12*2 + 8 = 63
    task = Task("t", (Pair(grid(2, 3), grid(3, 4)),), (grid(1, 1), grid(3, 3)))
    c = TaskCost.of(task)
    assert ANSWER_GUESS == 1.0  # the numbers below assume it
    assert c.sample_tokens == 31.0
    assert c.n_test == 2
    assert c.view_tokens == pytest.approx((43 + 63) / 2)


def test_task_cost_grows_with_grid_size_and_demos():
    small, big = TaskCost.of(make_task("a", 3)), TaskCost.of(make_task("b", 20))
    assert big.sample_tokens > small.sample_tokens
    assert big.view_tokens > small.view_tokens
    more_demos = TaskCost.of(make_task("c", 3, n_train=4))
    assert more_demos.sample_tokens > small.sample_tokens
    assert more_demos.view_tokens > small.view_tokens


def test_task_cost_counts_tests_and_averages_views():
    one = TaskCost.of(make_task("a", 5, test_sides=(5,)))
    two_same = TaskCost.of(make_task("b", 5, test_sides=(5, 5)))
    assert (one.n_test, two_same.n_test) == (1, 2)
    assert two_same.view_tokens == one.view_tokens  # an average, not a sum
    assert two_same.sample_tokens == one.sample_tokens  # demos do not depend on the tests
    mixed = TaskCost.of(make_task("c", 5, test_sides=(2, 10)))
    lo = TaskCost.of(make_task("d", 5, test_sides=(2,))).view_tokens
    hi = TaskCost.of(make_task("e", 5, test_sides=(10,))).view_tokens
    assert mixed.view_tokens == pytest.approx((lo + hi) / 2)
    assert mixed.n_test == 2


# ---------------------------------------------------------------- Planner: seconds and amounts


def test_full_seconds_formula_at_defaults():
    cfg = cfg_with()
    p = Planner(cfg, start=0.0, workers=1)
    c = TaskCost.of(make_task("a", 10, n_train=3))
    ttt, total = p.full_seconds(c)
    b = cfg.budget
    exp_ttt = cfg.ttt.max_samples * cfg.ttt.epochs * c.sample_tokens / b.prior_train_tokens_per_s
    per_input = c.n_test * c.view_tokens
    exp_samp = cfg.sampling.n_views * (1 + cfg.sampling.n_samples) * per_input / b.prior_sample_tokens_per_s
    exp_score = (cfg.selection.max_rescore * cfg.selection.rescore_augmentations * per_input
                 / b.prior_score_tokens_per_s)
    assert ttt == pytest.approx(exp_ttt)
    assert total == pytest.approx(exp_ttt + exp_samp + exp_score)


def test_full_seconds_grows_with_scale_and_size():
    p = Planner(cfg_with("budget.max_scale=4"), start=0.0, workers=1)
    small, big = TaskCost.of(make_task("a", 4)), TaskCost.of(make_task("b", 15, n_train=3))
    totals = [p.full_seconds(small, s)[1] for s in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(x < y for x, y in zip(totals, totals[1:]))
    ttts = [p.full_seconds(small, s)[0] for s in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(x < y for x, y in zip(ttts, ttts[1:]))
    for s in (0.0, 0.5, 1.0, 2.0):
        assert p.full_seconds(big, s)[1] > p.full_seconds(small, s)[1]
        assert p.full_seconds(big, s)[0] > p.full_seconds(small, s)[0]
        ttt, total = p.full_seconds(big, s)
        assert 0 < ttt < total


def test_full_seconds_counts_extra_samples():
    c = TaskCost.of(make_task("a", 6))
    base = Planner(cfg_with(), start=0.0, workers=1)
    extra = Planner(cfg_with("sampling.n_samples=3"), start=0.0, workers=1)
    assert extra.full_seconds(c)[0] == base.full_seconds(c)[0]
    assert extra.full_seconds(c)[1] > base.full_seconds(c)[1]


def test_amounts_at_scale_one_is_the_config():
    cfg = cfg_with()
    p = Planner(cfg, start=0.0, workers=1)
    assert p.amounts(1.0) == (cfg.ttt.max_samples, cfg.sampling.n_views, cfg.selection.max_rescore)


def test_amounts_floors():
    p = Planner(cfg_with(), start=0.0, workers=1)
    assert p.amounts(0.0) == (MIN_SAMPLES, MIN_VIEWS, MIN_RESCORE)
    assert p.amounts(1e-6) == (MIN_SAMPLES, MIN_VIEWS, MIN_RESCORE)
    for s in np.linspace(0.0, 1.0, 41):
        samples, views, rescore = p.amounts(float(s))
        assert samples >= MIN_SAMPLES and views >= MIN_VIEWS and rescore >= MIN_RESCORE


def test_amounts_caps():
    cfg = cfg_with()
    p = Planner(cfg, start=0.0, workers=1)
    cap = (4 * cfg.ttt.max_samples, 4 * cfg.sampling.n_views, cfg.selection.max_rescore)
    assert p.amounts(4.0) == cap
    assert p.amounts(100.0) == cap
    assert p.amounts(2.0) == (2 * cfg.ttt.max_samples, 2 * cfg.sampling.n_views, cfg.selection.max_rescore)
    for s in np.linspace(0.0, 10.0, 101):
        samples, views, rescore = p.amounts(float(s))
        assert samples <= cap[0] and views <= cap[1] and rescore <= cap[2]


def test_amounts_monotone_in_scale():
    p = Planner(cfg_with(), start=0.0, workers=1)
    prev = p.amounts(0.0)
    for s in np.linspace(0.0, 6.0, 121):
        cur = p.amounts(float(s))
        assert all(c >= q for c, q in zip(cur, prev))
        prev = cur


# ---------------------------------------------------------------- Planner.scale

BUDGET_S = 300.0


def short_setup(workers: int = 2, n: int = 20, budget: float = BUDGET_S):
    cfg = cfg_with(f"budget.time_budget_s={budget}", f"budget.workers={workers}")
    planner = Planner(cfg, start=0.0, workers=workers)
    costs = [TaskCost.of(make_task(f"t{i}", 6 + i % 5, n_train=2 + i % 3)) for i in range(n)]
    return planner, costs


def test_scale_is_max_when_time_is_plentiful():
    planner, costs = short_setup(budget=12 * 3600)
    assert planner.scale(0.0, costs) == planner.cfg.budget.max_scale
    big = Planner(cfg_with("budget.time_budget_s=43200", "budget.max_scale=3"), start=0.0, workers=2)
    assert big.scale(0.0, costs) == 3.0
    assert planner.scale(0.0, []) == planner.cfg.budget.max_scale  # nothing left to do


def test_scale_short_time_fits_the_worker_seconds_left():
    planner, costs = short_setup(workers=2)
    now = 0.0
    assert not fits(planner, costs, now, 1.0)  # the setup really is short on time
    assert fits(planner, costs, now, 0.0)  # ... but the floors fit
    s = planner.scale(now, costs)
    assert 0.0 < s < 1.0
    assert fits(planner, costs, now, s)
    assert not fits(planner, costs, now, s + 1e-6)  # the largest scale that fits


@pytest.mark.parametrize("now", [0.0, 50.0, 150.0, 250.0, 290.0, 299.0])
def test_scale_fits_or_is_at_floor(now):
    planner, costs = short_setup(workers=2)
    s = planner.scale(now, costs)
    assert 0.0 <= s <= planner.cfg.budget.max_scale
    if s > 0.0:
        assert fits(planner, costs, now, s)
    else:  # not even the floors fit
        assert not fits(planner, costs, now, 1e-6)
    if s < planner.cfg.budget.max_scale:
        assert not fits(planner, costs, now, s + 1e-6)


def test_near_the_end_the_longest_task_limits_the_scale():
    """With plenty of worker-seconds but little wall time, one long task must still fit."""
    planner = Planner(cfg_with("budget.time_budget_s=43200", "budget.workers=64"), start=0.0,
                      workers=64)
    long = TaskCost.of(make_task("big", 30, n_train=6, test_sides=(30, 30)))
    short = [TaskCost.of(make_task(f"s{i}", 3)) for i in range(3)]
    wall = 5 * planner.full_seconds(long, 0.0)[1] / TAIL_SHARE  # room for it at the floors only
    now = planner.deadline - wall / 5 * 2
    s = planner.scale(now, [long] + short)
    assert planner.full_seconds(long, s)[1] <= TAIL_SHARE * (planner.deadline - now) * (1 + 1e-9)
    assert planner.scale(now, short) > s  # without the long task the scale is higher


def test_scale_is_zero_past_the_deadline():
    planner, costs = short_setup()
    assert planner.scale(planner.deadline, costs) == 0.0
    assert planner.scale(planner.deadline + 100.0, costs) == 0.0
    assert planner.amounts(planner.scale(planner.deadline + 100.0, costs)) == (MIN_SAMPLES, MIN_VIEWS,
                                                                               MIN_RESCORE)


def test_scale_grows_with_workers():
    scales = []
    for w in (1, 2, 3, 4):
        planner, costs = short_setup(workers=w, budget=400.0)
        scales.append(planner.scale(0.0, costs))
    assert all(a <= b for a, b in zip(scales, scales[1:]))
    assert scales[0] < scales[-1]


def test_planner_workers_at_least_one():
    planner, costs = short_setup()
    zero = Planner(planner.cfg, start=0.0, workers=0)
    one = Planner(planner.cfg, start=0.0, workers=1)
    assert zero.workers == 1
    assert zero.scale(0.0, costs) == one.scale(0.0, costs)


def test_scale_monotone_in_time_left():
    planner, costs = short_setup(workers=2)
    nows = np.linspace(0.0, planner.deadline + 10.0, 40)
    scales = [planner.scale(float(t), costs) for t in nows]
    assert all(a >= b for a, b in zip(scales, scales[1:]))  # less time left -> smaller scale
    assert scales[0] > scales[-1] == 0.0


def test_scale_grows_as_tasks_finish():
    planner, costs = short_setup(workers=2)
    scales = [planner.scale(0.0, costs[:k]) for k in (20, 15, 10, 5, 1)]
    assert all(a <= b for a, b in zip(scales, scales[1:]))


# ---------------------------------------------------------------- Planner.plan


def test_plan_full_when_time_is_plentiful():
    cfg = cfg_with("budget.time_budget_s=43200")
    planner = Planner(cfg, start=0.0, workers=1)
    c = TaskCost.of(make_task("a", 8))
    plan = planner.plan(c, 0.0, [c])
    assert isinstance(plan, TaskPlan)
    assert (plan.max_samples, plan.n_views, plan.max_rescore) == (
        cfg.ttt.max_samples, cfg.sampling.n_views, cfg.selection.max_rescore)
    ttt, total = planner.full_seconds(c, 1.0)
    assert plan.expected_s == pytest.approx(total)
    assert plan.sample_s == pytest.approx(total - ttt)


def test_plans_shrink_as_time_runs_short():
    planner, costs = short_setup(workers=2, budget=600.0)
    c = costs[0]
    plans = [planner.plan(c, float(t), costs) for t in np.linspace(0.0, planner.deadline, 25)]
    for a, b in zip(plans, plans[1:]):
        assert b.max_samples <= a.max_samples
        assert b.n_views <= a.n_views
        assert b.max_rescore <= a.max_rescore
        assert b.expected_s <= a.expected_s + 1e-9
    assert plans[0].max_samples > plans[-1].max_samples == MIN_SAMPLES
    assert plans[0].n_views >= plans[-1].n_views == MIN_VIEWS
    assert plans[-1].max_rescore == MIN_RESCORE


@pytest.mark.parametrize("budget", [60.0, 300.0, 3600.0, 43200.0])
@pytest.mark.parametrize("frac", [0.0, 0.3, 0.9, 0.999, 1.0, 1.5])
def test_plan_invariants(budget, frac):
    planner, costs = short_setup(workers=2, budget=budget)
    b = planner.cfg.budget
    now = frac * budget
    for c in (costs[0], costs[7], costs[-1]):
        plan = planner.plan(c, now, costs)
        assert plan.cap_s == b.task_cap_s
        assert plan.ttt_s <= 0.6 * plan.cap_s + 1e-9
        assert plan.ttt_s <= 0.5 * max(0.0, planner.deadline - now) + 1e-9
        assert plan.ttt_s >= 0.0
        scale = planner.scale(now, costs)
        ttt_est, total = planner.full_seconds(c, scale)
        assert plan.expected_s == pytest.approx(ttt_est + plan.sample_s)
        assert plan.expected_s == pytest.approx(total)
        assert (plan.max_samples, plan.n_views, plan.max_rescore) == planner.amounts(scale)


def test_plan_cap_is_the_hard_cap_whatever_the_estimate():
    """Estimates never shorten the cap: a machine 100x slower than the priors is not killed."""
    planner = Planner(cfg_with("budget.time_budget_s=43200"), start=0.0, workers=1)
    for task in (make_task("a", 1, n_train=1), make_task("b", 30, n_train=10, test_sides=(30, 30)),
                 make_task("c", 12, n_train=3)):
        c = TaskCost.of(task)
        assert planner.plan(c, 0.0, [c]).cap_s == planner.cfg.budget.task_cap_s


def test_plan_ttt_allowance_exceeds_estimate_when_time_allows():
    planner = Planner(cfg_with("budget.time_budget_s=43200"), start=0.0, workers=1)
    c = TaskCost.of(make_task("a", 12, n_train=3))
    plan = planner.plan(c, 0.0, [c])
    ttt_est = planner.full_seconds(c)[0]
    assert plan.ttt_s >= 1.5 * ttt_est - 1e-9 or plan.ttt_s == pytest.approx(0.6 * plan.cap_s)


def test_plan_past_deadline_allows_no_training():
    planner, costs = short_setup()
    plan = planner.plan(costs[0], planner.deadline + 5.0, costs)
    assert plan.ttt_s == 0.0
    assert (plan.max_samples, plan.n_views, plan.max_rescore) == (MIN_SAMPLES, MIN_VIEWS, MIN_RESCORE)
    assert plan.cap_s == planner.cfg.budget.task_cap_s


def test_calibrate_replaces_priors_then_averages_and_ignores_junk():
    planner = Planner(cfg_with("budget.prior_train_tokens_per_s=1e6"), start=0.0, workers=1)
    planner.calibrate({"train": 100.0, "sample": float("inf"), "score": -1.0})
    assert planner.rates["train"] == 100.0 and planner.measured == {"train"}
    assert planner.rates["sample"] == planner.cfg.budget.prior_sample_tokens_per_s
    planner.calibrate({"train": 300.0, "sample": None})
    assert planner.rates["train"] == pytest.approx(200.0)


def test_planner_end_leaves_grace_before_the_deadline():
    planner = Planner(cfg_with("budget.time_budget_s=900"), start=100.0, workers=1)
    assert planner.deadline == 1000.0 and 900.0 < planner.end < 1000.0
    short = Planner(cfg_with("budget.time_budget_s=20"), start=0.0, workers=1)
    assert 0.0 < short.end < short.deadline == 20.0


# ---------------------------------------------------------------- Planner.observe


def test_observe_first_replaces_then_averages():
    planner = Planner(cfg_with(), start=0.0, workers=1)
    c = TaskCost.of(make_task("a", 8))
    planner.observe(c, ttt_s=10.0, train_tokens=10000.0, sample_s=2.0, views=16, rescore_s=4.0,
                    rescored=64)
    assert planner.rates["train"] == pytest.approx(1000.0)
    assert planner.rates["sample"] == pytest.approx(16 * c.view_tokens / 2.0)
    assert planner.rates["score"] == pytest.approx(64 * c.view_tokens / 4.0)
    first = dict(planner.rates)
    planner.observe(c, ttt_s=10.0, train_tokens=30000.0, sample_s=1.0, views=16, rescore_s=1.0,
                    rescored=64)
    assert planner.rates["train"] == pytest.approx(0.7 * 1000.0 + 0.3 * 3000.0)
    assert planner.rates["sample"] == pytest.approx(0.7 * first["sample"] + 0.3 * 16 * c.view_tokens)
    assert planner.rates["score"] == pytest.approx(0.7 * first["score"] + 0.3 * 64 * c.view_tokens)
    assert planner.measured == {"train", "sample", "score"}


def test_observe_moves_rates_toward_measured():
    planner = Planner(cfg_with(), start=0.0, workers=1)
    c = TaskCost.of(make_task("a", 8))
    target = 500.0
    planner.observe(c, ttt_s=1.0, train_tokens=5000.0, sample_s=0, views=0, rescore_s=0, rescored=0)
    gaps = []
    for _ in range(10):
        planner.observe(c, ttt_s=10.0, train_tokens=10 * target, sample_s=0, views=0, rescore_s=0,
                        rescored=0)
        gaps.append(abs(planner.rates["train"] - target))
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 0.05 * abs(5000.0 - target)


def test_observe_slower_machine_means_longer_estimates():
    planner = Planner(cfg_with(), start=0.0, workers=1)
    c = TaskCost.of(make_task("a", 8))
    before = planner.full_seconds(c)
    prior = planner.rates["train"]
    planner.observe(c, ttt_s=10.0, train_tokens=prior * 10.0 / 2, sample_s=0, views=0, rescore_s=0,
                    rescored=0)
    after = planner.full_seconds(c)
    assert after[0] == pytest.approx(2 * before[0])
    assert after[1] > before[1]


def test_observe_ignores_tiny_durations_and_zero_tokens():
    planner = Planner(cfg_with(), start=0.0, workers=1)
    prior = dict(planner.rates)
    c = TaskCost.of(make_task("a", 8))
    planner.observe(c, ttt_s=0.04, train_tokens=1e6, sample_s=0.049, views=16, rescore_s=0.01,
                    rescored=64)
    assert planner.rates == prior
    planner.observe(c, ttt_s=10.0, train_tokens=0, sample_s=10.0, views=0, rescore_s=10.0, rescored=0)
    assert planner.rates == prior


def test_observe_first_real_measurement_replaces_prior_even_after_ignored_ones():
    planner = Planner(cfg_with(), start=0.0, workers=1)
    c = TaskCost.of(make_task("a", 8))
    # a task whose stages were all too short to measure: nothing learnt
    planner.observe(c, ttt_s=0.01, train_tokens=100.0, sample_s=0.01, views=16, rescore_s=0.01,
                    rescored=64)
    planner.observe(c, ttt_s=10.0, train_tokens=10000.0, sample_s=0.0, views=0, rescore_s=0.0,
                    rescored=0)
    assert planner.rates["train"] == pytest.approx(1000.0)


def test_observe_first_sampling_measurement_replaces_prior_after_ttt_only_call():
    planner = Planner(cfg_with(), start=0.0, workers=1)
    c = TaskCost.of(make_task("a", 8))
    planner.observe(c, ttt_s=10.0, train_tokens=10000.0, sample_s=0.0, views=0, rescore_s=0.0,
                    rescored=0)
    planner.observe(c, ttt_s=0.0, train_tokens=0, sample_s=2.0, views=16, rescore_s=0.0, rescored=0)
    assert planner.rates["sample"] == pytest.approx(16 * c.view_tokens / 2.0)


# ---------------------------------------------------------------- Scheduler


def sched_setup(n: int = 10, *, chunk: int = 4, budget: float = 43200.0, workers: int = 2,
                sides: list[int] | None = None, extra: tuple[str, ...] = ()):
    cfg = cfg_with(f"budget.time_budget_s={budget}", f"budget.workers={workers}", *extra)
    planner = Planner(cfg, start=0.0, workers=workers)
    sides = sides or [3 + (7 * i) % 17 for i in range(n)]  # distinct sizes, shuffled
    tasks = [make_task(f"t{i:02d}", s) for i, s in enumerate(sides)]
    return Scheduler(tasks, planner, chunk_size=chunk), planner, tasks


def test_scheduler_longest_first_in_chunks():
    sched, planner, tasks = sched_setup(10, chunk=3)
    full = {t.id: planner.full_seconds(TaskCost.of(t))[1] for t in tasks}
    expected_order = sorted(full, key=lambda i: -full[i])
    assert list(sched.queue) == expected_order
    got, w = [], 0
    while (a := sched.assign(w, 0.0)) is not None:
        assert 1 <= len(a.tasks) <= 3
        assert set(a.plans) == set(a.tasks)
        got.extend(a.tasks)
        w += 1
    assert got == expected_order
    assert [len(sched.active[i].tasks) for i in range(w)] == [3, 3, 3, 1]
    assert all(sched.attempts[t] == 1 for t in got)


def test_scheduler_chunk_size_at_least_one():
    sched, _, _ = sched_setup(3, chunk=0)
    assert sched.chunk_size == 1
    assert len(sched.assign(0, 0.0).tasks) == 1


def test_assignment_fields():
    sched, planner, _ = sched_setup(6, chunk=2)
    a = sched.assign(1, 10.0)
    assert a.worker == 1 and a.started == 10.0
    assert sched.active[1] is a
    assert a.cap_at == pytest.approx(10.0 + planner.cfg.budget.task_cap_s * len(a.tasks))
    assert a.stage == f"ttt {a.tasks[0]}"  # assign starts the first task's TTT stage
    assert a.stall_s == planner.cfg.budget.stall_s and a.last_beat == 10.0
    assert a.kill_at() == min(a.cap_at, 10.0 + a.stall_s)


def test_assign_none_when_queue_empty_or_past_deadline():
    sched, planner, _ = sched_setup(4, chunk=4)
    assert sched.assign(0, planner.deadline) is None
    assert sched.assign(0, planner.deadline + 1.0) is None
    assert not sched.active and len(sched.queue) == 4 and not sched.attempts
    a = sched.assign(0, 0.0)
    assert len(a.tasks) == 4
    assert sched.assign(1, 0.0) is None
    assert 1 not in sched.active


def test_chunks_shrink_near_the_deadline():
    # ten equal tasks, one worker, so little time left that every plan sits at the floors
    sched, planner, tasks = sched_setup(10, chunk=8, budget=3600.0, workers=1, sides=[8] * 10)
    floor_total = planner.full_seconds(TaskCost.of(tasks[0]), 0.0)[1]
    left = 2.5 * floor_total / CHUNK_SHARE  # a chunk's share of the time left holds 2.5 tasks
    now = planner.deadline - left
    assert planner.scale(now, list(sched.costs.values())) == 0.0
    a = sched.assign(0, now)
    assert len(a.tasks) == 2
    assert sum(p.expected_s for p in a.plans.values()) <= CHUNK_SHARE * left
    # with less time than one task needs, a chunk still gets one task
    b = sched.assign(1, planner.deadline - 0.5 * floor_total)
    assert len(b.tasks) == 1


@pytest.mark.parametrize("frac", [0.5, 0.9, 0.97, 0.99, 0.999])
def test_chunk_fits_its_share_of_the_time_left(frac):
    sched, planner, _ = sched_setup(12, chunk=6, budget=1800.0, workers=2)
    now = frac * planner.deadline
    left = planner.deadline - now
    remaining = [sched.costs[i] for i in sched.queue]
    a = sched.assign(0, now)
    assert 1 <= len(a.tasks) <= 6
    total = sum(a.plans[t].expected_s for t in a.tasks)
    assert len(a.tasks) == 1 or total <= CHUNK_SHARE * left
    if len(a.tasks) < 6 and sched.queue:  # stopped early: the next task would not have fitted
        nxt = planner.plan(sched.costs[sched.queue[0]], now, remaining)
        assert total + nxt.expected_s > CHUNK_SHARE * left


def test_task_done_and_chunk_done_complete_the_run():
    sched, _, tasks = sched_setup(5, chunk=3)
    while not sched.complete():
        for w in (0, 1):
            a = sched.assign(w, 0.0)
            if a is None:
                continue
            for t in a.tasks:
                sched.task_done(w, t)
            assert a.done == set(a.tasks)
            assert sched.chunk_done(w) == []
            assert w not in sched.active
    assert sched.finished == {t.id for t in tasks}
    assert sched.unfinished() == [] and sched.given_up == {}
    assert all(sched.attempts[t.id] == 1 for t in tasks)
    assert sched.assign(0, 0.0) is None


def test_chunk_done_without_results_requeues_unreported():
    sched, _, _ = sched_setup(6, chunk=3)
    a = sched.assign(0, 0.0)
    sched.task_done(0, a.tasks[0])
    assert sched.chunk_done(0) == []  # first failure: re-queued, nothing given up
    assert list(sched.queue)[:2] == a.tasks[1:]
    assert a.tasks[0] not in sched.queue
    assert not sched.complete()


def test_failed_chunk_requeued_once_then_given_up():
    sched, _, _ = sched_setup(8, chunk=3)
    a = sched.assign(0, 0.0)
    first, rest = a.tasks[0], a.tasks[1:]
    untouched = list(sched.queue)
    sched.task_done(0, first)
    assert sched.fail(0, "worker died") == []
    # the unfinished ones go to the front, in chunk order; the finished one is not re-queued
    assert list(sched.queue) == rest + untouched
    assert first not in sched.queue and first in sched.finished
    assert all(sched.attempts[t] == 1 for t in rest)

    b = sched.assign(1, 5.0)
    assert b.tasks == rest + untouched[:1]
    assert all(sched.attempts[t] == 2 for t in rest)
    assert sched.attempts[untouched[0]] == 1
    gave_up = sched.fail(1, "killed: past its cap")
    assert sorted(gave_up) == sorted(rest)  # second failure: given up (order not specified)
    assert sched.given_up == {t: "killed: past its cap" for t in rest}
    assert list(sched.queue) == untouched  # its first attempt: re-queued at the front
    assert MAX_ATTEMPTS == 2
    for t in rest:
        assert t not in sched.queue and t not in sched.unfinished()


def test_fail_unknown_worker_is_noop():
    sched, _, _ = sched_setup(3)
    before = list(sched.queue)
    assert sched.fail(7, "x") == []
    assert list(sched.queue) == before
    sched.progress(7, "ttt", "t00", 0.0)  # no error for an idle worker
    assert sched.overdue(1e9) == []


def test_task_done_reported_before_a_kill_is_not_requeued():
    sched, _, _ = sched_setup(4, chunk=4)
    a = sched.assign(0, 0.0)
    for t in a.tasks[:3]:
        sched.task_done(0, t)
    sched.fail(0, "killed")
    assert list(sched.queue) == a.tasks[3:]
    b = sched.assign(0, 1.0)
    sched.task_done(0, b.tasks[0])
    sched.chunk_done(0)
    assert sched.complete()
    assert sched.unfinished() == [] and sched.given_up == {}


def test_silence_longer_than_the_stall_allowance_is_overdue():
    sched, planner, _ = sched_setup(4, chunk=2, extra=("budget.stall_s=60",))
    a = sched.assign(0, 0.0)
    sched.progress(0, "ttt", a.tasks[1], 100.0)
    assert a.stage == f"ttt {a.tasks[1]}"
    assert sched.overdue(160.0) == []
    assert sched.overdue(160.01) == [0]
    assert "no progress for 60 s" in a.why(160.5)


def test_progress_keeps_a_slow_stage_alive_far_past_any_estimate():
    """Sampling 100x slower than its estimate is not killed while requests keep finishing."""
    sched, _, _ = sched_setup(4, chunk=2, extra=("budget.stall_s=60",))
    a = sched.assign(0, 0.0)
    estimate = sum(a.plans[t].sample_s for t in a.tasks)
    t = 0.0
    while t < min(100 * estimate, a.cap_at - 60):
        t += 50.0
        sched.progress(0, "sample", None, t)
        assert sched.overdue(t + 59.0) == []


def test_heartbeats_keep_a_worker_alive_until_the_cap():
    sched, _, _ = sched_setup(4, chunk=2)
    a = sched.assign(0, 0.0)
    t = 0.0
    while t + 10.0 < a.cap_at:  # a worker that keeps reporting progress
        t += 10.0
        sched.progress(0, "ttt", a.tasks[0], t)
        assert sched.overdue(min(t + 1.0, a.cap_at)) == []
    assert sched.overdue(a.cap_at + 0.01) == [0]  # the overall cap still kills it
    assert "hard cap" in a.why(a.cap_at + 0.01)


def test_retry_gets_a_larger_stall_allowance():
    sched, planner, _ = sched_setup(2, chunk=1, extra=("budget.stall_s=60",))
    a = sched.assign(0, 0.0)
    assert a.stall_s == 60.0
    sched.fail(0, a.why(61.0))  # killed for silence: re-queued
    b = sched.assign(0, 62.0)
    assert b.tasks == a.tasks and sched.attempts[a.tasks[0]] == 2
    assert b.stall_s == 120.0
    c = sched.assign(1, 62.0)  # a first attempt keeps the base allowance
    assert c.stall_s == 60.0


def test_healthy_gaps_widen_later_allowances():
    sched, _, _ = sched_setup(6, chunk=1, extra=("budget.stall_s=10",))
    a = sched.assign(0, 0.0)
    sched.progress(0, "sample", None, 40.0)  # a slow but healthy machine: 40 s between beats
    sched.task_done(0, a.tasks[0])
    sched.chunk_done(0, 45.0)
    assert sched.healthy_gap == 40.0
    assert sched.assign(0, 50.0).stall_s == STALL_FACTOR * 40.0
    sched.note_gap(5.0)  # smaller gaps never shrink it
    assert sched.healthy_gap == 40.0


def test_cap_triggers_overdue_while_beats_continue():
    sched, _, _ = sched_setup(4, chunk=1, extra=("budget.task_cap_s=100",))
    a = sched.assign(0, 0.0)
    assert a.cap_at == pytest.approx(100.0)
    sched.progress(0, "sample", None, 99.0)
    assert a.kill_at() == a.cap_at
    assert sched.overdue(100.0) == []
    assert sched.overdue(100.5) == [0]


def test_overdue_lists_only_late_workers():
    sched, _, _ = sched_setup(6, chunk=2, extra=("budget.stall_s=60",))
    a0 = sched.assign(0, 0.0)
    a1 = sched.assign(1, 0.0)
    sched.progress(1, "ttt", a1.tasks[0], 30.0)
    assert sched.overdue(59.0) == []
    assert sched.overdue(61.0) == [0]
    assert sorted(sched.overdue(91.0)) == [0, 1]
    sched.fail(0, "killed")
    sched.progress(1, "ttt", a1.tasks[-1], 91.0)  # a heartbeat moves the worker's limit
    assert sched.overdue(120.0) == []
    assert a0.worker == 0


def test_observe_feeds_the_planner_from_a_record():
    sched, planner, tasks = sched_setup(3, chunk=1)
    task_id = sched.queue[0]
    rec = {"timing": {"sample_s": 2.0, "rescore_s": 1.0}, "ttt": {"seconds": 4.0, "tokens": 8000},
           "views": 8, "tests": [{"candidates": [{"rescore_logprobs": [-1.0, -2.0]}]}]}
    sched.observe(task_id, rec)
    assert planner.rates["train"] == pytest.approx(2000.0)
    assert planner.measured == {"train", "sample", "score"}
    sched.observe(task_id, {"attempts": []})  # an old or partial record: no error, no change
    assert planner.rates["train"] == pytest.approx(2000.0)


def test_unfinished_lists_queued_and_active_tasks():
    sched, _, tasks = sched_setup(6, chunk=2)
    ids = {t.id for t in tasks}
    assert set(sched.unfinished()) == ids
    a = sched.assign(0, 0.0)
    assert set(sched.unfinished()) == ids  # active tasks are not finished yet
    sched.task_done(0, a.tasks[0])
    assert set(sched.unfinished()) == ids - {a.tasks[0]}
    sched.fail(0, "x")
    b = sched.assign(0, 1.0)
    assert b.tasks[0] == a.tasks[1]
    sched.fail(0, "y")  # a.tasks[1] given up; b.tasks[1] re-queued
    assert a.tasks[1] in sched.given_up
    assert set(sched.unfinished()) == ids - {a.tasks[0], a.tasks[1]}
    assert len(sched.unfinished()) == len(set(sched.unfinished()))


# ---------------------------------------------------------------- mini simulation


def test_mini_simulation_hang_is_retried_and_finishes():
    """20 tasks on 2 workers against the benchmark's simulated clock; one task hangs in TTT on its
    first attempt: its worker is killed at the stage deadline, restarts, and the retry finishes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from budget_sim import simulate

    cfg = cfg_with("budget.time_budget_s=4000", "budget.workers=2", "sampling.max_loras=4")
    tasks = [make_task(f"s{i:02d}", 4 + (i * 5) % 13, n_train=2 + i % 3, test_sides=(5,) * (1 + i % 2))
             for i in range(20)]
    r = simulate(tasks, cfg, speed=1.0, slow=0.0, hang=0.0, rng=np.random.default_rng(0),
                 kinds={"s07": "hang"}, noise_sd=0.0, engine_start_s=30.0)
    assert r["killed_stages"] == ["ttt s07"]
    assert r["finished"] == {t.id for t in tasks} and r["given_up"] == 0 and r["skipped"] == 0
    assert r["finish_fraction"] < 1.0


# ---------------------------------------------------------------- re-scoring amounts


def test_rescore_amounts_shrink_with_the_plan_up_to_scale_one():
    cfg = cfg_with()
    conf = cfg.selection.rescore_augmentations
    p = Planner(cfg, start=0.0, workers=1)
    assert p.rescore_amounts(1.0) == (conf, cfg.selection.max_rescore)
    assert p.rescore_amounts(0.0) == (MIN_AUGMENTATIONS, MIN_RESCORE)
    assert p.rescore_amounts(0.5)[0] == round(conf * 0.5) < conf
    prev = p.rescore_amounts(0.0)
    for s in np.linspace(0.0, 1.0, 21):
        augs, cands = p.rescore_amounts(float(s))
        assert MIN_AUGMENTATIONS <= augs <= conf and cands == p.amounts(float(s))[2]
        assert augs >= prev[0]
        prev = (augs, cands)


def test_rescore_amounts_grow_with_spare_time_within_caps():
    cfg = cfg_with("budget.max_scale=8")
    sel = cfg.selection
    p = Planner(cfg, start=0.0, workers=1)
    conf = (sel.rescore_augmentations, sel.max_rescore)
    assert p.rescore_amounts(1.5) == p.rescore_amounts(RESCORE_FROM) == conf  # views come first
    assert p.rescore_amounts(2 * RESCORE_FROM) == (2 * conf[0], 2 * conf[1])
    assert p.rescore_amounts(8.0) == (MAX_RESCORE_AUGMENTATIONS, RESCORE_GROWTH * sel.max_rescore)
    assert p.rescore_amounts(100.0) == p.rescore_amounts(8.0)
    prev = p.rescore_amounts(0.0)
    for s in np.linspace(0.0, 8.0, 81):
        cur = p.rescore_amounts(float(s))
        assert all(c >= q for c, q in zip(cur, prev))
        prev = cur
    many = Planner(cfg_with("selection.rescore_augmentations=40"), start=0.0, workers=1)
    assert many.rescore_amounts(3.0)[0] == 40  # a config above the cap is never lowered


def test_spare_time_plans_more_rescoring_and_prices_it():
    cfg = cfg_with("budget.time_budget_s=43200", "budget.max_scale=4")
    planner = Planner(cfg, start=0.0, workers=1)
    c = TaskCost.of(make_task("a", 8))
    plan = planner.plan(c, 0.0, [c])
    assert (plan.rescore_augmentations, plan.max_rescore) == planner.rescore_amounts(4.0) == (
        2 * cfg.selection.rescore_augmentations, RESCORE_GROWTH * cfg.selection.max_rescore)
    ttt, total = planner.full_seconds(c, 4.0)
    samples, views, _ = planner.amounts(4.0)
    score = (plan.max_rescore * plan.rescore_augmentations * c.n_test * c.view_tokens
             / planner.rates["score"])
    assert plan.expected_s == pytest.approx(total)
    branches = cfg.sampling.dfs_threshold / planner.dfs_threshold(4.0)  # a lower threshold
    assert plan.dfs_threshold == planner.dfs_threshold(4.0) == MIN_DFS_THRESHOLD
    assert total - ttt == pytest.approx(views * c.n_test * c.view_tokens * branches
                                        / planner.rates["sample"] + score)
    plain = Planner(cfg_with("budget.time_budget_s=43200"), start=0.0, workers=1).plan(c, 0.0, [c])
    assert (plain.rescore_augmentations, plain.max_rescore) == (
        cfg.selection.rescore_augmentations, cfg.selection.max_rescore)


def test_short_time_shrinks_the_augmentations_and_prices_them():
    planner, costs = short_setup(workers=2, budget=600.0)
    plans = [planner.plan(costs[0], float(t), costs) for t in np.linspace(0.0, planner.deadline, 7)]
    augs = [p.rescore_augmentations for p in plans]
    assert all(a >= b for a, b in zip(augs, augs[1:]))
    assert planner.cfg.selection.rescore_augmentations >= augs[0] > augs[-1] == MIN_AUGMENTATIONS
    for t, plan in zip(np.linspace(0.0, planner.deadline, 7), plans):
        assert plan.rescore_augmentations == planner.rescore_amounts(planner.scale(float(t), costs))[0]
    c, scale = costs[0], planner.scale(0.0, costs)
    ttt, total = planner.full_seconds(c, scale)
    views = planner.amounts(scale)[1]
    assert total - ttt == pytest.approx(
        views * c.n_test * c.view_tokens / planner.rates["sample"]
        + plans[0].max_rescore * plans[0].rescore_augmentations * c.n_test * c.view_tokens
        / planner.rates["score"])


def test_planned_config_carries_the_rescore_amounts():
    from dataclasses import replace

    from submission.worker.pipeline import planned_config

    cfg = cfg_with("budget.time_budget_s=43200", "budget.max_scale=4")
    planner = Planner(cfg, start=0.0, workers=1)
    c = TaskCost.of(make_task("a", 8))
    plan = planner.plan(c, 0.0, [c])
    task_cfg = planned_config(cfg, plan)
    assert task_cfg.selection.rescore_augmentations == plan.rescore_augmentations == 16  # 4 / RESCORE_FROM x 8
    assert task_cfg.selection.max_rescore == plan.max_rescore
    assert planned_config(cfg, replace(plan, rescore_augmentations=8)).selection.rescore_augmentations == 8


# ---------------------------------------------------------------- floors and the config


SMALL_SETS = ("ttt.max_samples=2", "sampling.n_views=1", "selection.max_rescore=1",
              "selection.rescore_augmentations=1")


def test_floors_never_raise_what_the_config_asks_for():
    from submission.worker.pipeline import planned_config

    cfg = cfg_with(*SMALL_SETS)
    assert (2, 1, 1) < (MIN_SAMPLES, MIN_VIEWS, MIN_RESCORE) and MIN_AUGMENTATIONS > 1
    p = Planner(cfg, start=0.0, workers=1)
    for s in (0.0, 1e-6, 0.3, 1.0):
        assert p.amounts(s) == (2, 1, 1)
        assert p.rescore_amounts(s) == (1, 1)
    c = TaskCost.of(make_task("a", 8))
    for now in (0.0, p.deadline - 1.0, p.deadline + 5.0):  # plenty of time, almost none, none
        plan = p.plan(c, now, [c])
        assert (plan.max_samples, plan.n_views, plan.max_rescore, plan.rescore_augmentations) == (
            2, 1, 1, 1)
        used = planned_config(cfg, plan)  # what the task runs with: the record's plan
        assert (used.ttt.max_samples, used.sampling.n_views, used.selection.max_rescore,
                used.selection.rescore_augmentations) == (2, 1, 1, 1)
    # a config between the floor and the usual size: the floor holds, never above the config
    mid = Planner(cfg_with("ttt.max_samples=12", "sampling.n_views=6"), start=0.0, workers=1)
    assert mid.amounts(0.0)[:2] == (MIN_SAMPLES, MIN_VIEWS)
    assert mid.amounts(1.0)[:2] == (12, 6)


def test_spare_time_views_stay_within_the_config_range():
    from submission.config import MAX_VIEWS
    from submission.worker.pipeline import planned_config

    cfg = cfg_with("sampling.n_views=200", "budget.max_scale=4", "budget.time_budget_s=43200")
    p = Planner(cfg, start=0.0, workers=1)
    assert p.amounts(4.0)[1] == MAX_VIEWS
    c = TaskCost.of(make_task("a", 4))
    plan = p.plan(c, 0.0, [c])
    assert plan.n_views == MAX_VIEWS
    assert planned_config(cfg, plan).sampling.n_views == MAX_VIEWS  # a valid config


# ---------------------------------------------------------------- planning cost is flat


def test_remaining_running_totals_follow_the_tasks_left():
    tasks = [make_task(f"t{i}", 3 + i % 7, n_train=1 + i % 4, test_sides=(4,) * (1 + i % 3))
             for i in range(30)]
    costs = {t.id: TaskCost.of(t) for t in tasks}
    rng = np.random.default_rng(0)
    # remove in a random order; totals and maxima always match a fresh sum over the rest
    left = Remaining(costs.values())
    ids = list(costs)
    for tid in rng.permutation(ids):
        ids.remove(tid)
        left.remove(costs[tid])
        rest = [costs[i] for i in ids]
        assert left.n == len(rest)
        assert left.sample_tokens == pytest.approx(sum(c.sample_tokens for c in rest), abs=1e-6)
        assert left.input_tokens == pytest.approx(sum(c.n_test * c.view_tokens for c in rest),
                                                  abs=1e-6)
        assert left.largest() == (None if not rest else (
            max(c.sample_tokens for c in rest), max(c.n_test * c.view_tokens for c in rest)))


def test_scheduler_remaining_excludes_finished_and_given_up_tasks():
    sched, planner, tasks = sched_setup(8, chunk=2)
    a = sched.assign(0, 0.0)
    sched.task_done(0, a.tasks[0])
    sched.task_done(0, a.tasks[0])  # reported twice: counted once
    sched.fail(0, "killed")
    b = sched.assign(0, 1.0)
    sched.fail(0, "killed again")  # a.tasks[1] is given up now
    left = [i for i in sched.costs if i not in sched.finished and i not in sched.given_up]
    assert sched.remaining.n == len(left) == 6
    assert sched.remaining.sample_tokens == pytest.approx(
        sum(sched.costs[i].sample_tokens for i in left))
    assert b.tasks[0] == a.tasks[1] and a.tasks[1] in sched.given_up


@pytest.mark.parametrize("workers", [1, 4])
def test_planning_a_chunk_costs_the_same_with_a_hundred_or_ten_thousand_tasks_left(monkeypatch,
                                                                                  workers):
    """Work is counted (calls to the planner's amounts: one per cost evaluation), not timed."""
    calls = {"n": 0}
    amounts = Planner.amounts

    def counted(self, scale):
        calls["n"] += 1
        return amounts(self, scale)

    per_chunk = {}
    for n in (100, 10_000):
        # every task alike, the time short: the bisection runs, the chunks are full
        cfg = cfg_with(f"budget.time_budget_s={10 * n // workers}", f"budget.workers={workers}")
        planner = Planner(cfg, start=0.0, workers=workers)
        sched = Scheduler([make_task(f"t{i}", 8) for i in range(n)], planner, chunk_size=4)
        monkeypatch.setattr(Planner, "amounts", counted)
        calls["n"] = 0
        a = sched.assign(0, 10.0)
        for t in a.tasks:
            sched.task_done(0, t)
        sched.chunk_done(0, 20.0)
        b = sched.assign(0, 20.0)
        monkeypatch.setattr(Planner, "amounts", amounts)
        assert len(a.tasks) == len(b.tasks) == 4
        assert 0.0 < planner.scale(20.0, sched.remaining) < 1.0
        per_chunk[n] = calls["n"]
    assert per_chunk[100] == per_chunk[10_000] > 0


# ---------------------------------------------------------------- the plan in the pipeline


class _Sink:
    """What process_chunk reports to, in memory."""

    def __init__(self, cfg: Config, tmp: Path) -> None:
        from collections import Counter

        self.cfg, self.workdir, self.scratch = cfg, tmp, tmp
        self.identity = {"config": cfg.to_json(), "model": None}
        self.all_policies, self.fallbacks, self.faults = False, Counter(), []
        self.records: dict = {}

    def progress(self, stage, task_id) -> None:
        pass

    def finish_task(self, task, record) -> None:
        self.records[task.id] = record


A, B = np.zeros((2, 2), dtype=np.uint8), np.zeros((1, 1), dtype=np.uint8)  # same in every view


def _fake_engine(cfg: Config, sleep_s: float = 0.0):
    """No model: a task's three views answer A, B, A (A wins the vote); the re-scorer prefers B
    (B wins count-nll) and takes `sleep_s` per call."""
    import time as _time

    from submission.model.engine import Engine
    from submission.arc.formats import build_tokenizer, get_format
    from submission.answers.sampling import Generation

    fmt = get_format("qwen-chat", build_tokenizer("qwen-chat"))
    b_len = len(fmt.encode_answer(B))

    class Sampler:
        name = "fake"

        def generate(self, requests):
            return [[Generation(list(fmt.encode_answer(B if i % 3 == 1 else A)), -1.0)]
                    for i, _ in enumerate(requests)]

    class Scorer:
        name = "fake-scorer"
        calls = 0

        def score_groups(self, groups, adapter):
            Scorer.calls += 1
            _time.sleep(sleep_s)
            return [[-50.0 if len(a) > b_len else 0.0 for a in answers] for _, answers in groups]

    return Engine(cfg=cfg, fmt=fmt, trainer=None, sampler=Sampler(), forward=Scorer()), Scorer


def _chunk_setup(tmp_path, *sets: str, n_tasks: int = 2):
    import time as _time

    cfg = cfg_with("ttt.enabled=false", "sampling.dfs_threshold=0", "sampling.unsure_extra_views=0",
                   "sampling.n_views=3", "selection.max_rescore=2",
                   "selection.rescore_augmentations=2", "selection.rescore_backend=forward",
                   "budget.time_budget_s=600", *sets)
    tasks = [make_task(f"c{i}", 2) for i in range(n_tasks)]
    planner = Planner(cfg, start=_time.monotonic(), workers=1)
    sched = Scheduler(tasks, planner, chunk_size=n_tasks)
    return cfg, tasks, planner, sched


def test_no_time_left_answers_by_vote_never_placeholders(tmp_path):
    from dataclasses import replace

    from submission.arc.grids import grid_to_list
    from submission.worker.pipeline import process_chunk

    cfg, tasks, planner, sched = _chunk_setup(tmp_path)
    a = sched.assign(0, planner.end + 1.0)  # assigned past the end: no time left to answer in
    assert all(p.answer_s == 0.0 for p in a.plans.values())
    engine, scorer = _fake_engine(cfg)
    sink = _Sink(cfg, tmp_path)
    process_chunk(engine, sink, tasks, a.plans)
    assert scorer.calls == 0
    for t in tasks:
        rec = sink.records[t.id]
        assert rec["attempts"] == [[grid_to_list(A), grid_to_list(B)]]  # vote's order
        assert rec["fallbacks"] == {"rescore_out_of_time_vote": 1}
        assert rec["tests"][0]["policy"] == "vote" and rec["tests"][0]["rescored_pairs"] == 0
    assert sink.fallbacks["rescore_out_of_time_vote"] == 2
    assert sink.fallbacks["attempt_placeholder"] == 0
    # with time left, the same chunk is re-scored and count-nll puts B first
    plans = {k: replace(p, answer_s=600.0) for k, p in a.plans.items()}
    sink = _Sink(cfg, tmp_path)
    process_chunk(engine, sink, tasks, plans)
    assert scorer.calls == 2
    assert all(r["attempts"] == [[grid_to_list(B), grid_to_list(A)]] for r in sink.records.values())
    assert sink.fallbacks["rescore_out_of_time_vote"] == 0


def test_a_rescorer_that_overruns_leaves_the_rest_of_the_chunk_to_vote(tmp_path):
    from dataclasses import replace

    from submission.arc.grids import grid_to_list
    from submission.worker.pipeline import process_chunk

    cfg, tasks, planner, sched = _chunk_setup(tmp_path, n_tasks=3)
    a = sched.assign(0, 0.0 + planner.deadline - planner.cfg.budget.time_budget_s)
    plans = {k: replace(p, answer_s=0.4) for k, p in a.plans.items()}  # less than one call takes
    engine, scorer = _fake_engine(cfg, sleep_s=0.6)
    sink = _Sink(cfg, tmp_path)
    process_chunk(engine, sink, tasks, plans)
    assert scorer.calls == 1  # the first task's call overran; nothing else was re-scored
    first, *rest = (sink.records[t] for t in a.tasks)
    assert first["attempts"] == [[grid_to_list(B), grid_to_list(A)]]
    assert first["tests"][0]["rescored_pairs"] == 2 * 2
    for rec in rest:
        assert rec["attempts"] == [[grid_to_list(A), grid_to_list(B)]]
        assert rec["fallbacks"] == {"rescore_out_of_time_vote": 1}
    assert sink.fallbacks["attempt_placeholder"] == 0 and not sink.faults


def test_the_record_says_the_plan_the_task_ran(tmp_path):
    from submission.worker.pipeline import process_chunk

    cfg, tasks, planner, sched = _chunk_setup(
        tmp_path, "sampling.n_views=1", "selection.max_rescore=1",
        "selection.rescore_augmentations=1", "ttt.max_samples=2", n_tasks=1)
    from dataclasses import replace

    now = planner.deadline + 5.0  # out of time: every amount at its floor (scale 0)
    assert planner.scale(now, sched.remaining) == 0.0
    plan = planner.plan(sched.costs[tasks[0].id], now, sched.remaining)
    engine, scorer = _fake_engine(cfg)
    sink = _Sink(cfg, tmp_path)
    process_chunk(engine, sink, tasks, {tasks[0].id: replace(plan, answer_s=600.0)})
    rec = sink.records[tasks[0].id]
    plan = rec["plan"]
    assert (plan["max_samples"], plan["n_views"], plan["max_rescore"],
            plan["rescore_augmentations"]) == (2, 1, 1, 1)
    assert rec["views"] == 1 and rec["tests"][0]["samples"] == 1  # one view was sampled
    assert rec["tests"][0]["rescored_pairs"] == 1  # one candidate under one augmentation


# ---------------------------------------------------------------- speculative search and the threshold


def test_dfs_threshold_lowers_with_spare_time_down_to_the_floor():
    p = Planner(cfg_with("budget.max_scale=8"), start=0.0, workers=1)
    conf = p.cfg.sampling.dfs_threshold
    assert p.dfs_threshold(0.3) == p.dfs_threshold(1.0) == conf  # short time never raises it
    assert p.dfs_threshold(THRESHOLD_FROM) == conf  # views come first
    assert p.dfs_threshold(2 * THRESHOLD_FROM) == pytest.approx(conf / 2)
    assert p.dfs_threshold(8.0) == MIN_DFS_THRESHOLD
    prev = conf
    for s in np.linspace(1.0, 8.0, 29):
        cur = p.dfs_threshold(float(s))
        assert MIN_DFS_THRESHOLD <= cur <= prev
        prev = cur
    for low in ("0", "0.05"):  # greedy only, or a configured threshold below the floor, stay
        q = Planner(cfg_with("budget.max_scale=8", f"sampling.dfs_threshold={low}"), start=0.0, workers=1)
        assert q.dfs_threshold(8.0) == float(low)


def test_a_lower_threshold_is_priced_by_the_ratio_and_the_plan_carries_it():
    from submission.worker.pipeline import planned_config

    cfg = cfg_with("budget.max_scale=2", "budget.time_budget_s=1e6")
    p = Planner(cfg, start=0.0, workers=1)
    c = TaskCost.of(make_task("a", 10, n_train=3))
    s = cfg.sampling
    views = p.amounts(2.0)[1]
    augs, cands = p.rescore_amounts(2.0)
    ttt, total = p.full_seconds(c, 2.0)
    per_input = c.n_test * c.view_tokens
    exp_samp = views * per_input * (s.dfs_threshold / p.dfs_threshold(2.0)) / p.rates["sample"]
    assert total - ttt == pytest.approx(exp_samp + cands * augs * per_input / p.rates["score"])
    plan = p.plan(c, 0.0, [c])
    assert plan.dfs_threshold == p.dfs_threshold(2.0) < s.dfs_threshold
    assert planned_config(cfg, plan).sampling.dfs_threshold == plan.dfs_threshold


def test_no_saving_is_assumed_before_one_is_seen_then_the_verified_share_is_priced():
    cfg = cfg_with()
    assert cfg.sampling.speculative  # the default
    p = Planner(cfg, start=0.0, workers=1)
    off = Planner(cfg_with("sampling.speculative=false"), start=0.0, workers=1)
    c = TaskCost.of(make_task("a", 10, n_train=3))
    assert p.accept == 0.0 and p.full_seconds(c) == off.full_seconds(c)
    true = {"sample": 2000.0, "verify": 8000.0}
    views = cfg.sampling.n_views * c.n_test
    decoded = views * c.view_tokens * (1 - 0.75)
    checked = views * c.view_tokens * 0.75
    verify_s = checked / true["verify"]
    for planner in (p, off):
        planner.observe(c, ttt_s=0.0, train_tokens=0, sample_s=decoded / true["sample"] + verify_s,
                        views=views, rescore_s=0.0, rescored=0, accepted=0.75, verify_s=verify_s,
                        verify_tokens=checked)
    # the rates come out exactly: decoded part at the sampling rate, verification at its own
    assert p.rates["sample"] == pytest.approx(true["sample"])
    assert p.rates["verify"] == pytest.approx(true["verify"])
    assert p.accept == 0.75
    samp = views * c.view_tokens * (0.25 / true["sample"] + 0.75 / true["verify"])
    ttt, total = p.full_seconds(c)
    score = cfg.selection.max_rescore * cfg.selection.rescore_augmentations * c.n_test * c.view_tokens
    assert total - ttt == pytest.approx(samp + score / p.rates["score"])
    assert off.full_seconds(c)[1] - ttt > total - ttt  # plain DFS prices every view decoded
    p.observe(c, ttt_s=0.0, train_tokens=0, sample_s=0.0, views=0, rescore_s=0.0, rescored=0,
              accepted=0.25)
    assert p.accept == pytest.approx(0.7 * 0.75 + 0.3 * 0.25)  # averaged in like the rates


def test_scheduler_feeds_the_search_stats_of_a_record_to_the_planner():
    cfg = cfg_with()
    tasks = [make_task("a", 6), make_task("b", 6)]
    planner = Planner(cfg, start=0.0, workers=1)
    sched = Scheduler(tasks, planner, chunk_size=2)
    search = {"paths": 40, "drafts_accepted": 30, "verify_s": 2.0, "verify_prompt_tokens": 30000,
              "verify_tokens": 2000}
    rec = {"timing": {"sample_s": 10.0, "verify_s": 1.0}, "views": 16, "chunk_search": search}
    sched.observe("a", rec)
    assert planner.accept == 0.75
    assert planner.rates["verify"] == pytest.approx(16000 / 1.0)  # half the chunk's verification
    cost = sched.costs["a"]
    assert planner.rates["sample"] == pytest.approx(16 * cost.view_tokens * 0.25 / 9.0)


def test_default_max_scale_leaves_every_task_its_own_adapter_at_40_percent_of_the_priors():
    """The default spends spare time (max_scale > 1), and the budget simulation of 240
    ARC-AGI-2-sized tasks on 4 workers still answers every one with its own adapter in 12 h on a
    machine at 40% of the priors (5% slow tasks, 2% hangs)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from budget_sim import simulate
    from submission.arc.tasks import load_dataset

    assert Config().budget.max_scale > 1
    base = list(load_dataset("arc-agi-2", "evaluation").values())
    tasks = base + [Task(t.id + "b", t.train, t.test_inputs) for t in base]
    cfg = Config().with_overrides([f"budget.time_budget_s={12 * 3600 - 2700}", "budget.workers=4"])
    r = simulate(tasks, cfg, speed=0.4, slow=0.05, hang=0.02, rng=np.random.default_rng(0))
    assert r["own_adapter"] == len(tasks) == 240 and r["finish_fraction"] <= 1.0
    assert r["mean_scale"] > 1.0  # the spare time was spent


def test_each_task_searches_at_its_planned_threshold_one_call_per_threshold():
    """A chunk whose tasks were planned at two DFS thresholds: each task's requests are searched
    at its own (the branch width k = ceil(1 / threshold) shows which), one call per threshold,
    and the answers come back in request order."""
    from types import SimpleNamespace

    from submission.answers.sampling import GenRequest, Generation
    from submission.worker.sampling_stage import _search

    calls = []

    class Recorder:
        name = "recorder"

        def generate(self, requests):
            calls.append([(r.prompt[0], r.top_logprobs) for r in requests])
            return [[Generation([r.prompt[0], 1], -0.1, [{r.prompt[0]: -0.05}, {1: -0.05}])]
                    for r in requests]

    engine = SimpleNamespace(sampler=Recorder(), fmt=SimpleNamespace(stop_token_ids=[1]))
    views = [(SimpleNamespace(task_id=t), False) for t in ("a", "b", "a", "b")]
    requests = [GenRequest((10 + i,), None, 4) for i in range(4)]
    cfg = cfg_with("sampling.speculative=false")
    got = _search(engine, cfg, views, requests, None, {"a": 0.17, "b": 0.07})
    assert calls == [[(10, 6), (12, 6)], [(11, 15), (13, 15)]]
    assert [g[0].ids for g in got] == [[10 + i, 1] for i in range(4)]
