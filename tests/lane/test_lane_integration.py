"""The program-search lane inside a run, without a model: merging its answers into task records,
sizing and memory limits of its pool, answers for tasks the neural path left empty, the workers'
share of the CPU while it runs, and its processes gone at the end."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from submission.runtime.run_report import Backends
from submission.config import Config
from submission.arc.grids import Pair, Task, as_grid, grid_to_list
from submission.lane.ensemble import merge_record, merge_two
from submission.lane.service import LaneRunner, lane_processes, start_lane, task_cap
from submission.arc.tasks import export_kaggle
from tests.helpers import flip_task, noise_task

A, B, C = [[1]], [[2]], [[3]]


def test_merge_policies():
    assert merge_two([A, B], [C], "lane-first") == [C, A]
    assert merge_two([A, B], [A, C], "lane-first") == [A, B]  # model's first differs: it stays
    assert merge_two([A, B], [C], "neural-first") == [A, B]
    assert merge_two([A], [C], "neural-first") == [A, C]
    assert merge_two([], [C, B], "neural-first") == [C, B]  # nothing from the model: the lane's
    assert merge_two([A, B], [], "lane-first") == [A, B]


def test_merge_record_keeps_both_sources_and_counts_lane_only_attempts():
    rec = {"attempts": [[], [A]], "fallbacks": {"ttt_failed": 1},
           "tests": [{"test_index": 1, "attempts_by_policy": {"vote": [A]}}]}
    lane = {"found": True, "program": "flip_lr", "cpu_s": 0.1, "answers": [[B], [C]]}
    out = merge_record(rec, lane, "lane-first", all_policies=True)
    assert out["attempts"] == [[B], [C, A]]
    assert out["lane"] == {"found": True, "program": "flip_lr", "cpu_s": 0.1}
    assert out["fallbacks"] == {"ttt_failed": 1, "attempts_from_lane_only": 1}
    by = {t["test_index"]: t["attempts_by_policy"] for t in out["tests"]}
    assert by[1] == {"vote": [A], "lane-only": [C], "neural-only": [A]}
    assert by[0] == {"lane-only": [B], "neural-only": []}
    assert rec["attempts"] == [[], [A]]  # the input record is not changed


def test_pool_size_from_cores_and_cap_from_budget():
    cfg = Config()
    assert lane_processes(cfg, cpus=16) == 14
    assert lane_processes(cfg.with_overrides(["budget.workers=4"]), cpus=16) == 11
    assert lane_processes(cfg, cpus=2) == 1
    assert lane_processes(cfg.with_overrides(["lane.processes=3"]), cpus=2) == 3
    assert task_cap(cfg, 120, 4) == 60.0
    small = cfg.with_overrides(["budget.time_budget_s=100"])
    assert task_cap(small, 100, 2) == 1.0
    assert task_cap(small, 10, 2) == 10.0


def _limited_alloc(mib: int, q) -> None:
    from submission.lane.pool import limit_memory

    limit_memory(mib)
    try:
        np.ones(2 ** 30, dtype=np.uint8)  # 1 GiB
        q.put("allocated")
    except MemoryError:
        q.put("memory")


def test_memory_limit_stops_allocations_in_a_lane_process():
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_limited_alloc, args=(900, q))
    p.start()
    p.join(60)
    assert q.get(timeout=5) == "memory"


def test_running_out_of_memory_is_a_result(monkeypatch):
    from submission.lane import pool

    def boom(task, cap):
        raise MemoryError

    monkeypatch.setattr(pool, "solve", boom)
    t = Task("m", (Pair(as_grid([[1]]), as_grid([[1]])),), (as_grid([[1]]), as_grid([[2]])))
    r = pool.solve_guarded(t, 1.0)
    assert not r.found and r.error == "memory" and r.answers == ((), ())


def test_run_gets_lane_answers_where_the_model_gave_none(tmp_path):
    from submission.runtime.run import Run

    tasks = {"flip0001": flip_task("flip0001", 1), "flip0002": flip_task("flip0002", 2),
             "noise003": noise_task("noise003", 3)}
    challenges, _ = export_kaggle(tasks, tmp_path / "data", "evaluation")
    cfg = Config().with_overrides(["lane.processes=1", "lane.task_cap_s=5"])
    state = Run(challenges, tmp_path / "sub.json", tmp_path / "w", cfg, all_policies=True)
    state.lane = start_lane(state)
    assert state.lane is not None and state.lane.n_tasks == 3
    # the neural path answers flip0001 with nothing (e.g. TTT failed); flip0002 is given up
    state.finish_task(tasks["flip0001"], {"attempts": [[]], "timing": {}, "fallbacks": {}})
    lane, state.lane = state.lane, None
    pids = lane.pids()
    assert len(pids) == 1 and all(map(_alive, pids))
    lane.finish(state, time.monotonic() + 120)
    sub = json.loads((tmp_path / "sub.json").read_text())
    for tid in ("flip0001", "flip0002"):
        assert sub[tid][0]["attempt_1"] == grid_to_list(tasks[tid].test_outputs[0])
    assert sub["noise003"][0]["attempt_1"] == [[0]]  # no program, no neural answer: placeholder
    report = state.report(Backends(), 1.0)
    rec = report["per_task"]["flip0001"]
    assert rec["lane"]["found"] and rec["lane"]["program"] == "flip_lr"
    assert rec["tests"][0]["attempts_by_policy"]["neural-only"] == []
    assert report["lane"]["found"] == 2 and report["lane"]["processes"] == 1
    assert report["fallbacks"]["tasks_answered_by_lane_only"] == 1
    stored = json.loads((tmp_path / "w" / "tasks" / "flip0001.json").read_text())
    assert stored["lane"]["found"]  # the resume point keeps the lane's result
    assert not any(map(_alive, pids))  # the pool is gone


def test_disabled_lane_starts_nothing(tmp_path):
    from submission.runtime.run import Run

    task = flip_task("flip0001", 1)
    challenges, _ = export_kaggle({task.id: task}, tmp_path / "d", "evaluation")
    cfg = Config().with_overrides(["lane.enabled=false"])
    state = Run(challenges, tmp_path / "s.json", tmp_path / "w", cfg)
    assert start_lane(state) is None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _spin(seconds: float) -> tuple[float, float]:
    """A CPU-bound stand-in for a worker: its CPU seconds and the longest gap between beats."""
    cpu0 = time.process_time()
    end, last, gap = time.monotonic() + seconds, time.monotonic(), 0.0
    while (now := time.monotonic()) < end:
        sum(i * i for i in range(2000))
        gap, last = max(gap, now - last), now
    return time.process_time() - cpu0, gap


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat") or (os.cpu_count() or 1) > 8,
                    reason="measures CPU shares on a small Linux machine")
def test_worker_is_not_starved_by_the_lane(tmp_path, nice=19):
    """Four lane processes on a 2-core machine beside a CPU-bound worker, measured in the same
    window (so other load on the machine hits both alike): at nice 19 the worker keeps a full
    core's share, far more than any lane process, and beats far within its stall allowance;
    unniced all five would share the two cores about equally."""
    cfg = Config().with_overrides(["lane.processes=4", "lane.task_cap_s=30", f"lane.nice={nice}"])
    runner = LaneRunner([noise_task(f"n{i}", i, side=20) for i in range(8)], cfg)
    try:
        time.sleep(3.0)  # the pool is started and searching
        pids = runner.pids()
        assert len(pids) == 4
        assert all(os.getpriority(os.PRIO_PROCESS, p) == nice for p in pids)
        before = [_cpu_s(p) for p in pids]
        worker_cpu, gap = _spin(3.0)
        lane_cpu = [_cpu_s(p) - b for p, b in zip(pids, before)]
        assert runner.pending  # the lane was still busy the whole time
    finally:
        runner.close()
    assert worker_cpu >= 2.0 * (sum(lane_cpu) / len(lane_cpu)), (worker_cpu, lane_cpu)
    assert gap < 0.05 * cfg.budget.stall_s  # 15 s of the default 300 s (a loaded machine)
    assert not any(map(_alive, pids))


def test_lane_processes_survive_a_ctrl_c_to_the_process_group():
    """Ctrl-C in a terminal reaches every process of the group: a lane process ignores it (the run's
    handler terminates the pool), so no pool worker dies printing a KeyboardInterrupt traceback."""
    import signal

    from submission.lane.service import _init

    with mp.get_context("fork").Pool(1, initializer=_init, initargs=(0, 0)) as pool:
        pid = pool.apply(os.getpid)
        os.kill(pid, signal.SIGINT)
        time.sleep(0.2)
        assert pool.apply(os.getpid) == pid  # the same process, alive, still answering
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
