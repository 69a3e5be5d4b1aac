"""Simulated 240-task ARC-AGI-2 run on 4 workers: does the budget planner finish in time?

Drives the real `Planner` and `Scheduler` with a simulated clock. Tasks are the 120 ARC-AGI-2
evaluation tasks twice (their real sizes). The "true" machine runs at a multiple of the planner's
prior throughput (from 10% to 1000%) with per-task noise; each worker measures it when its engine
starts (calibration, with noise) before its first chunk. Some tasks are injected as slow (x4) and
some hang: a hang stops the heartbeats, so it is killed after the stall allowance, re-queued once
with a doubled allowance, then given up. Healthy work beats all along (every optimizer step and
finished request) and is only ever stopped by the hard cap or the budget's end. A worker whose
chunk is killed restarts its engine. Half the test inputs are taken to be unsure (they get the
extra views when time allows). Re-scoring runs the amounts each plan chose (augmentations x
candidates) on the prefix re-scorer: per test input and augmentation the prompt once and every
candidate's answer, at the machine's scoring rate (the planner prices it as one pass per pair and
learns the difference from what it observes).
Reports, per scenario, the finish time as a fraction of the budget, tasks answered by their own
adapter, tasks that fell back, the mean planned scale of TTT samples, the mean re-scoring amounts
planned, and the re-scoring hours spent (summed over workers) beside what the same amounts would
have cost with one forward pass per (augmentation, candidate).

    python benchmarks/budget_sim.py [--seed 0]
"""

from __future__ import annotations

import argparse
import heapq
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from submission.runtime.budget import ANSWER_GUESS, Planner  # noqa: E402
from submission.config import Config  # noqa: E402
from submission.environment import TIME_BUDGET_S  # noqa: E402
from submission.arc.grids import Task  # noqa: E402
from submission.runtime.schedule import Scheduler  # noqa: E402
from submission.arc.tasks import load_dataset  # noqa: E402

ENGINE_START_S = 120.0  # model load + vLLM start + calibration per worker (also after a kill)
UNSURE_SHARE = 0.5  # test inputs whose answers disagree and get the extra views (when time allows)
BEAT_S = 30.0  # a healthy stage beats at least this often (real ones: every step or request)


def beat_through(sched: Scheduler, w: int, stage: str, task_id: str | None, t0: float,
                 t1: float) -> None:
    """The heartbeats of a healthy stage running from t0 to t1."""
    for t in np.arange(t0 + BEAT_S, t1, BEAT_S):
        sched.progress(w, stage, task_id, float(t))


def answer_tokens(task: Task) -> float:
    """Expected answer tokens of one test input, averaged (budget.TaskCost's guess)."""
    return sum(g.shape[0] * (g.shape[1] + 1) * ANSWER_GUESS for g in task.test_inputs) / task.n_test


def simulate(tasks: list[Task], cfg: Config, *, speed: float, slow: float, hang: float,
             rng: np.random.Generator, kinds: dict[str, str] | None = None,
             noise_sd: float = 0.3, engine_start_s: float = ENGINE_START_S,
             calibrate: bool = True, accept: float = 0.0) -> dict:
    """One run; `speed` = true throughput / planner prior. `kinds` fixes tasks' kinds ('ok',
    'slow', 'hang') instead of drawing them with the `slow` and `hang` probabilities. With
    `calibrate`, each starting worker measures the true rates (noise 20%) before its first chunk.
    `accept`: the share of answer paths speculative search verifies instead of decoding."""
    workers = cfg.budget.workers
    planner = Planner(cfg, start=0.0, workers=workers)
    sched = Scheduler(tasks, planner, chunk_size=cfg.sampling.max_loras)
    kind = kinds if kinds is not None else {
        t.id: rng.choice(["ok", "slow", "hang"], p=[1 - slow - hang, slow, hang]) for t in tasks}
    kind = {t.id: kind.get(t.id, "ok") for t in tasks}
    noise = {t.id: float(rng.lognormal(0.0, noise_sd)) for t in tasks}
    true_rates = {k: v * speed for k, v in planner.rates.items()}
    events = [(engine_start_s, w) for w in range(workers)]  # (time a worker becomes idle, worker)
    end = planner.end
    scales, last, adapters, kills, killed_stages = [], 0.0, set(), 0, []
    answers = {t.id: answer_tokens(t) for t in tasks}
    rescored: list[tuple[int, int]] = []  # (augmentations, candidates) of every sampled task
    thresholds: list[float] = []  # DFS threshold of every sampled task
    score_s = one_pass_s = 0.0
    fresh = set(range(workers))  # workers whose engine just started: they calibrate first
    while events:
        now, w = heapq.heappop(events)
        if now >= end or sched.complete():
            continue
        if calibrate and w in fresh:
            planner.calibrate({k: v * float(rng.lognormal(0.0, 0.2)) for k, v in true_rates.items()})
        fresh.discard(w)
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
                killed = min(t + a.stall_s, a.cap_at, end)  # silence from here on
                break
            if t + ttt > min(a.cap_at, end):  # beating all along: only the cap or the end stop it
                killed = min(a.cap_at, end)
                break
            beat_through(sched, w, "ttt", task_id, t, t + ttt)
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
                # a lower threshold opens more branches; verified answers cost a prefill
                threshold = plan.dfs_threshold
                branches = cfg.sampling.dfs_threshold / threshold if threshold > 0 else 1.0
                accepted = accept if cfg.sampling.speculative and threshold > 0 else 0.0
                checked = views * per_input * branches * accepted
                verify_s = checked / true_rates["verify"] * factor
                sampling = (views * per_input * branches * (1 - accepted) / true_rates["sample"]
                            * factor + verify_s)
                augs, cands = plan.rescore_augmentations, plan.max_rescore
                n_scored = cands * augs
                prompt = cost.view_tokens - answers[task_id]
                scoring = (cost.n_test * augs * (prompt + cands * answers[task_id])
                           / true_rates["score"] * factor)
                rescored.append((augs, cands))
                thresholds.append(threshold)
                score_s += scoring
                one_pass_s += n_scored * per_input / true_rates["score"] * factor
                rest += sampling + scoring
                planner.observe(cost, ttt_s=0.0, train_tokens=0, sample_s=sampling,
                                views=round(views * cost.n_test), rescore_s=scoring,
                                rescored=n_scored * cost.n_test, accepted=accepted,
                                verify_s=verify_s, verify_tokens=checked,
                                dfs_threshold=threshold)
            if t + rest > min(a.cap_at, end):
                killed = min(a.cap_at, end)
            else:
                beat_through(sched, w, "sample", None, t, t + rest)
                t += rest
        if killed is None:
            for task_id in a.tasks:
                sched.task_done(w, task_id)
            sched.chunk_done(w, t)
            last = max(last, t)
            heapq.heappush(events, (t, w))
        else:  # killed (a stall, the cap) or the budget ended: restart the engine
            stop = min(killed, end)
            kills += 1
            killed_stages.append(a.stage)
            sched.fail(w, "killed")
            last = max(last, stop)
            fresh.add(w)
            heapq.heappush(events, (stop + engine_start_s, w))
    done = len(sched.finished)
    own = len(adapters & sched.finished)
    return {"finished": set(sched.finished), "killed_stages": killed_stages, "own_adapter": own,
            "finish_fraction": last / cfg.budget.time_budget_s, "done": done,
            "given_up": len(sched.given_up), "skipped": len(sched.unfinished()),
            "mean_scale": float(np.mean(scales)) if scales else 0.0, "kills": kills,
            "rescore": tuple(float(np.mean(x)) for x in zip(*rescored)) if rescored else (0.0, 0.0),
            "threshold": float(np.mean(thresholds)) if thresholds else 0.0,
            "score_h": score_s / 3600, "one_pass_h": one_pass_s / 3600,
            "injected": {k: sum(1 for v in kind.values() if v == k) for k in ("slow", "hang")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base = list(load_dataset("arc-agi-2", "evaluation").values())
    tasks = base + [Task(t.id + "b", t.train, t.test_inputs) for t in base]
    full = TIME_BUDGET_S
    # (name, budget, speed, must every task be answered by its own adapter?, sets, verified share)
    # At the defaults spare time is spent (budget.max_scale 4: more TTT, views, a lower DFS
    # threshold, re-scoring up to 32 augmentations); max_scale 1 is the run that spends none.
    scenarios = [
        ("12 h, machine at 1000% of prior", full, 10.0, True, [], 0.0),
        ("12 h, machine at 100% of prior", full, 1.0, True, [], 0.0),
        ("12 h, machine at 40% of prior", full, 0.4, True, [], 0.0),
        ("12 h, machine at 10% of prior", full, 0.1, True, [], 0.0),
        ("3 h, machine at 40% of prior", 3 * 3600, 0.4, False, [], 0.0),
        ("1 h, machine at 40% of prior", 3600, 0.4, False, [], 0.0),
        ("12 h, 100% of prior, max_scale 1", full, 1.0, True, ["budget.max_scale=1"], 0.0),
        ("12 h, 40% of prior, max_scale 1", full, 0.4, True, ["budget.max_scale=1"], 0.0),
        # speculative search verifying 60% of the answer paths instead of decoding them
        ("12 h, 40% of prior, 60% verified", full, 0.4, True, [], 0.6),
    ]
    print(f"{len(tasks)} tasks (ARC-AGI-2 evaluation x2), 4 workers, engine start {ENGINE_START_S:.0f} s, "
          "5% slow (x4), 2% hang on first try\n")
    print(f"{'scenario':<34}{'finish/budget':>14}{'own adapter':>13}{'fell back':>11}"
          f"{'TTT scale':>11}{'DFS p':>7}{'kills':>7}{'augs x cands':>14}{'score h':>9}{'1-pass h':>10}")
    ok = True
    for name, budget, speed, all_own, sets, accept in scenarios:
        cfg = Config().with_overrides([f"budget.time_budget_s={budget}", "budget.workers=4", *sets])
        r = simulate(tasks, cfg, speed=speed, slow=0.05, hang=0.02,
                     rng=np.random.default_rng(args.seed), accept=accept)
        fell = r["given_up"] + r["skipped"]
        augs, cands = r["rescore"]
        print(f"{name:<34}{r['finish_fraction']:>14.2f}{r['own_adapter']:>13}{fell:>11}"
              f"{r['mean_scale']:>11.2f}{r['threshold']:>7.3f}{r['kills']:>7}{f'{augs:.1f} x {cands:.1f}':>14}"
              f"{r['score_h']:>9.2f}{r['one_pass_h']:>10.2f}")
        ok &= r["finish_fraction"] <= 1.0 and (not all_own or r["own_adapter"] == len(tasks))
    print("\nfinish/budget <= 1.00 everywhere, and every task answered by its own adapter in the"
          " 12 h runs (10% to 1000% of the priors):", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
