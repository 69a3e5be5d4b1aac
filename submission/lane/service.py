"""The lane beside the GPU workers: a pool of low-priority, memory-limited processes that search
programs for the run's tasks while the workers train and sample, and the merge of its answers
into the task records (ensemble.py) as they and the records arrive and at the run's end.

Sizing: `lane.processes` (0: the machine's cores counted at start-up, minus `reserve_cores`, minus
one more per GPU worker beyond the first; at least 1). Each process runs at `lane.nice` (the
workers win every contended core) under an address-space limit of `lane.mem_mib`. The per-task
CPU cap is `lane.task_cap_s`, lowered so that all tasks fit in half of the run's budget. At the
end the pool is terminated (unfinished tasks count as not found)."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

from submission.config import Config
from submission.arc.grids import Task, grid_to_list
from submission.lane.ensemble import merge_record
from submission.events import LANE_ONLY_TASKS

POLL_S = 0.5


def lane_processes(cfg: Config, cpus: int | None = None) -> int:
    lane = cfg.lane
    if lane.processes:
        return lane.processes
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus - lane.reserve_cores - max(0, cfg.budget.workers - 1))


def task_cap(cfg: Config, n_tasks: int, processes: int) -> float:
    """The per-task CPU cap: `lane.task_cap_s`, or less where half the budget cannot pay it."""
    share = 0.5 * cfg.budget.time_budget_s * processes / max(1, n_tasks)
    return max(1.0, min(cfg.lane.task_cap_s, share))


def _init(mem_mib: int, nice: int) -> None:
    """A lane process: low priority, memory-capped, deaf to Ctrl-C. A terminal's Ctrl-C reaches the
    whole process group; the run's own handler records what finished and terminates this pool,
    where a KeyboardInterrupt here would only print a pool worker's traceback."""
    import signal

    from submission.lane.pool import limit_memory

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(nice)
    limit_memory(mem_mib)


def _solve(task: Task, cap_s: float) -> dict[str, Any]:
    from submission.lane.pool import solve_guarded

    r = solve_guarded(task, cap_s)
    return {**r.to_json(), "answers": [[grid_to_list(g) for g in a] for a in r.answers]}


class LaneRunner:
    """The lane's pool for one run; `merge` and `finish` are called from the run's thread."""

    def __init__(self, tasks: list[Task], cfg: Config, *, all_policies: bool = False) -> None:
        self.cfg = cfg
        self.all_policies = all_policies
        self.processes = lane_processes(cfg)
        self.cap_s = task_cap(cfg, len(tasks), self.processes)
        self.n_tasks = len(tasks)
        self.results: dict[str, dict[str, Any]] = {}
        self.merged: set[str] = set()
        self.t0 = time.monotonic()
        ctx = mp.get_context("spawn")
        self.pool = ctx.Pool(self.processes, initializer=_init,
                             initargs=(cfg.lane.mem_mib, cfg.lane.nice))
        self.pending = {t.id: self.pool.apply_async(_solve, (t, self.cap_s)) for t in tasks}
        self.closed = False

    def pids(self) -> list[int]:
        return [p.pid for p in getattr(self.pool, "_pool", [])]

    def poll(self) -> None:
        """Collect the results that are ready (never blocks)."""
        for tid, res in list(self.pending.items()):
            if res.ready():
                del self.pending[tid]
                if res.successful():
                    self.results[tid] = res.get()

    def merge(self, task_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """`record` with the lane's answers merged in, if the lane has finished this task."""
        self.poll()
        lane = self.results.get(task_id)
        if lane is None or task_id in self.merged:
            return record
        self.merged.add(task_id)
        return merge_record(record, lane, self.cfg.lane.policy, self.all_policies)

    def finish(self, state: Any, until: float) -> None:
        """Wait for the lane (until all tasks are done or `until`), terminate the pool, merge every
        result not merged yet into the run's records; tasks without a neural record get the lane's
        answers alone (kept in memory only, so that a rerun retries the neural path)."""
        from submission.runtime.records import store_record

        while self.pending and time.monotonic() < until:
            self.poll()
            if self.pending:
                time.sleep(POLL_S)
        self.close()
        self.poll()
        for tid, lane in self.results.items():
            if tid in self.merged:
                if tid in state.records:
                    store_record(state, state.tasks[tid], state.records[tid])
                continue
            rec = state.records.get(tid)
            if rec is not None:
                merged = self.merge(tid, rec.to_json())
                store_record(state, state.tasks[tid], merged)
                state.accept(tid, merged)
            elif lane["found"]:
                n = len(lane["answers"])
                empty: dict[str, Any] = {"attempts": [[] for _ in range(n)], "timing": {}, "fallbacks": {}}
                self.merged.add(tid)
                state.accept(tid, merge_record(empty, lane, self.cfg.lane.policy,
                                               self.all_policies))
                state.fallbacks[LANE_ONLY_TASKS] += 1
        state.info["lane"] = self.info()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.terminate()
            self.pool.join()

    def info(self) -> dict[str, Any]:
        found = [r for r in self.results.values() if r["found"]]
        cpu = sorted(r["cpu_s"] for r in self.results.values())
        return {"processes": self.processes, "task_cap_s": self.cap_s, "tasks": self.n_tasks,
                "finished": len(self.results), "found": len(found),
                "unfinished": self.n_tasks - len(self.results),
                "cpu_s_total": round(sum(cpu), 2),
                "cpu_s_median": cpu[len(cpu) // 2] if cpu else 0.0,
                "wall_s": round(time.monotonic() - self.t0, 2),
                "policy": self.cfg.lane.policy}


def start_lane(state: Any) -> LaneRunner | None:
    """The lane for the run's tasks that have no lane result yet (None when disabled)."""
    if not state.cfg.lane.enabled:
        return None
    wanted = {t.id for t in state.pending} | set(state.records)
    todo = [state.tasks[i] for i in state.counts if i in state.tasks and i in wanted
            and (i not in state.records or state.records[i].lane is None)]
    if not todo:
        return None
    return LaneRunner(todo, state.cfg, all_policies=state.all_policies)
