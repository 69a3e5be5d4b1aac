"""Simulated 240-task ARC-AGI-2 run on 4 workers: does the budget planner finish in time?

Drives the real `Planner` and `Scheduler` with a simulated clock. Tasks are the 120 ARC-AGI-2
evaluation tasks twice (their real sizes). The "true" machine runs at a fraction of the planner's
prior throughput with per-task noise; some tasks are injected as slow (x4) and some hang (killed at
their cap, re-queued once, then given up). A worker whose chunk is killed restarts its engine.
Half the test inputs are taken to be unsure (they get the extra views when time allows).
Reports, per scenario, the finish time as a fraction of the budget, tasks answered by their own
adapter, tasks that fell back, and the mean planned scale of TTT samples.

    python benchmarks/budget_sim.py [--seed 0]
"""

from __future__ import annotations

import argparse
import heapq
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from submission.budget import Planner  # noqa: E402
from submission.config import Config  # noqa: E402
from submission.grids import Task  # noqa: E402
from submission.schedule import Scheduler  # noqa: E402
from submission.tasks import load_dataset  # noqa: E402

ENGINE_START_S = 120.0
UNSURE_SHARE = 0.5  # test inputs whose answers disagree and get the extra views (when time allows)  # model load + vLLM start per worker (also after a kill)


def simulate(tasks: list[Task], cfg: Config, *, speed: float, slow: float, hang: float,
             rng: np.random.Generator, kinds: dict[str, str] | None = None,
             noise_sd: float = 0.3, engine_start_s: float = ENGINE_START_S) -> dict:
    """One run; `speed` = true throughput / planner prior. `kinds` fixes tasks' kinds ('ok',
    'slow', 'hang') instead of drawing them with the `slow` and `hang` probabilities."""
    workers = cfg.budget.workers
    planner = Planner(cfg, start=0.0, workers=workers)
    sched = Scheduler(tasks, planner, chunk_size=cfg.sampling.max_loras)
    kind = kinds if kinds is not None else {
        t.id: rng.choice(["ok", "slow", "hang"], p=[1 - slow - hang, slow, hang]) for t in tasks}
    kind = {t.id: kind.get(t.id, "ok") for t in tasks}
    noise = {t.id: float(rng.lognormal(0.0, noise_sd)) for t in tasks}
    true_rates = {k: v * speed for k, v in planner.rates.items()}
    events = [(engine_start_s, w) for w in range(workers)]  # (time a worker becomes idle, worker)
    end = planner.deadline - 15.0
    scales, last, adapters, kills, killed_stages = [], 0.0, set(), 0, []
    while events:
        now, w = heapq.heappop(events)
        if now >= end or sched.complete():
            continue
        a = sched.assign(w, now)
        if a is None:
            continue
        # Like pipeline.process_chunk: TTT task by task (a finished adapter survives a kill and is
        # reused on the retry), then one sampling + re-scoring phase for the whole chunk.
        t, stop, killed = now, min(a.cap_at, end), None
        for task_id in a.tasks:
            plan, cost = a.plans[task_id], sched.costs[task_id]
            if task_id in adapters:
                continue
            sched.progress(w, "ttt", task_id, t)
            scales.append(plan.max_samples / cfg.ttt.max_samples)
            factor = noise[task_id] * (4.0 if kind[task_id] == "slow" else 1.0)
            full = plan.max_samples * cfg.ttt.epochs * cost.sample_tokens / true_rates["train"]
            ttt = min(full * factor, plan.ttt_s)  # training stops at its deadline
            if kind[task_id] == "hang" and sched.attempts[task_id] == 1:
                ttt = float("inf")
            if t + ttt > min(a.kill_at(), end):
                killed = min(a.kill_at(), end)
                break
            t += ttt
            adapters.add(task_id)
            planner.observe(cost, ttt_s=ttt, train_tokens=ttt * true_rates["train"] / factor,
                            sample_s=0.0, views=0, rescore_s=0.0, rescored=0)
        if killed is None:
            sched.progress(w, "sample", None, t)
            rest = 0.0
            for task_id in a.tasks:
                plan, cost = a.plans[task_id], sched.costs[task_id]
                factor = noise[task_id] * (4.0 if kind[task_id] == "slow" else 1.0)
                per_input = cost.n_test * cost.view_tokens
                views = plan.n_views + UNSURE_SHARE * plan.extra_views  # adaptive extra views
                sampling = views * per_input / true_rates["sample"] * factor
                n_scored = plan.max_rescore * cfg.selection.rescore_augmentations
                scoring = n_scored * per_input / true_rates["score"] * factor
                rest += sampling + scoring
                planner.observe(cost, ttt_s=0.0, train_tokens=0, sample_s=sampling,
                                views=round(views * cost.n_test), rescore_s=scoring,
                                rescored=n_scored * cost.n_test)
            if t + rest > min(a.kill_at(), end):
                killed = min(a.kill_at(), end)
            else:
                t += rest
        if killed is None:
            for task_id in a.tasks:
                sched.task_done(w, task_id)
            sched.chunk_done(w)
            last = max(last, t)
            heapq.heappush(events, (t, w))
        else:  # killed at a stage deadline or the cap: restart the engine
            stop = min(killed, end)
            kills += 1
            killed_stages.append(a.stage)
            sched.fail(w, "killed")
            last = max(last, stop)
            heapq.heappush(events, (stop + engine_start_s, w))
    done = len(sched.finished)
    return {"finished": set(sched.finished), "killed_stages": killed_stages,"finish_fraction": last / cfg.budget.time_budget_s, "done": done,
            "given_up": len(sched.given_up), "skipped": len(sched.unfinished()),
            "mean_scale": float(np.mean(scales)) if scales else 0.0, "kills": kills,
            "injected": {k: sum(1 for v in kind.values() if v == k) for k in ("slow", "hang")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base = list(load_dataset("arc-agi-2", "evaluation").values())
    tasks = base + [Task(t.id + "b", t.train, t.test_inputs) for t in base]
    scenarios = [
        ("12 h, machine at 100% of prior", 12 * 3600 - 2700, 1.0),
        ("12 h, machine at 40% of prior", 12 * 3600 - 2700, 0.4),
        ("3 h, machine at 40% of prior", 3 * 3600, 0.4),
        ("1 h, machine at 40% of prior", 3600, 0.4),
    ]
    print(f"{len(tasks)} tasks (ARC-AGI-2 evaluation x2), 4 workers, engine start {ENGINE_START_S:.0f} s, "
          "5% slow (x4), 2% hang on first try\n")
    print(f"{'scenario':<34}{'finish/budget':>14}{'own answers':>13}{'fell back':>11}"
          f"{'TTT scale':>11}{'kills':>7}")
    ok = True
    for name, budget, speed in scenarios:
        cfg = Config().with_overrides([f"budget.time_budget_s={budget}", "budget.workers=4"])
        r = simulate(tasks, cfg, speed=speed, slow=0.05, hang=0.02,
                     rng=np.random.default_rng(args.seed))
        fell = r["given_up"] + r["skipped"]
        print(f"{name:<34}{r['finish_fraction']:>14.2f}{r['done']:>13}{fell:>11}"
              f"{r['mean_scale']:>11.2f}{r['kills']:>7}")
        ok &= r["finish_fraction"] <= 1.0
    print("\nfinish/budget <= 1.00 in every scenario:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
