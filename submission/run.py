"""The run: load tasks, write a placeholder submission.json at once, then process the tasks (in
this process, or in supervised worker processes: workers.py) and rewrite submission.json
atomically after every finished task; finally write `workdir/run.json`.

Tasks go in chunks of `sampling.max_loras` (pipeline.py), planned against the time budget
(budget.py) and scheduled longest first (schedule.py). Before the first chunk the engine measures
this machine's rates (calibrate.py), unless a calibration file is given. Finished tasks are stored
under `workdir/tasks/` (records.py), so a rerun with the same workdir, config and model resumes.
The in-process loop is guarded by the watchdog (watchdog.py): a chunk that stops making progress
is interrupted and its tasks re-queued, and the loop stops at the budget's end.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .budget import Planner
from .config import ANSWER_SECTIONS, Config
from .engine import Engine, build_engine, check_model_dir
from .grids import Task
from .modelfiles import model_identity
from .pipeline import TTT_ERRORS as CHUNK_ERRORS
from .pipeline import process_chunk
from .records import load_task_record, store_record
from .schedule import Scheduler
from .startup import apply_rates, engine_started, plan_memory_for_run, start_rates
from .files import write_json_atomic
from .submit import build_submission
from .tasks import load_tasks_lenient, read_json_object
from .watchdog import Watchdog, WatchdogInterrupt


class Run:
    """State of one run: outputs, per-task records, fallback counters and faults."""

    def __init__(self, challenges: str | Path, out: str | Path, workdir: str | Path, cfg: Config,
                 *, model: str | Path | None = None, scratch: str | Path | None = None,
                 limit: int | None = None, all_policies: bool = False) -> None:
        self.start = time.monotonic()
        self.challenges = Path(challenges)
        self.cfg, self.out, self.workdir = cfg, Path(out), Path(workdir)
        self.scratch = Path(scratch) if scratch is not None else self.workdir
        # a stored task is reused only if the answer-relevant config and the model both match
        self.identity = {"config": cfg.to_json(ANSWER_SECTIONS),
                         "model": model_identity(model) if model is not None else None}
        self.all_policies = all_policies
        (self.workdir / "tasks").mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.workdir / "config.json", cfg.to_dict())
        self.tasks, bad = load_tasks_lenient(challenges)
        raw = read_json_object(challenges)
        ids = list(raw)
        self.counts = {i: _raw_test_count(raw[i]) for i in ids}  # every task, so the file validates
        self.faults: list[dict[str, Any]] = [{"task": i, "stage": "load", "error": bad[i]}
                                             for i in ids if i in bad]
        self.fallbacks: Counter = Counter(bad_task=len(self.faults))
        self.answers: dict[str, list[list[Any]]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        for i in ids:
            rec = load_task_record(self.workdir, i, self.identity, self.counts[i]) if i in self.tasks else None
            if rec is not None:
                self.records[i] = rec
                self.answers[i] = rec["attempts"]
        runnable = [i for i in ids if i in self.tasks][:limit]  # --limit: the rest keep placeholders
        self.pending = [self.tasks[i] for i in runnable if i not in self.records]
        self.resumed = len(self.records)
        self.calibration: dict[str, Any] | None = None  # given by a file, else measured at start
        self.info: dict[str, Any] = {}  # what run.json reports besides the backends
        self.watchdog: Watchdog | None = None
        self.sched: Scheduler | None = None  # the in-process loop's scheduler (heartbeats)
        self.chunk_size = cfg.sampling.max_loras  # tasks per chunk (the memory plan may lower it)
        self.lane = None  # the program-search lane's pool while it runs (lane/service.py)
        self.write_submission()

    def write_submission(self) -> None:
        write_json_atomic(self.out, build_submission(self.counts, self.answers))

    def progress(self, stage: str, task_id: str | None) -> None:
        """A heartbeat: the in-process watchdog and scheduler see progress in `stage`."""
        if self.watchdog is not None:
            self.watchdog.beat()
        if self.sched is not None:
            self.sched.progress(0, stage, task_id, time.monotonic())

    def finish_task(self, task: Task, record: dict[str, Any]) -> None:
        """Store a finished task's record (resume point), then rewrite submission.json."""
        store_record(self, task.id, record)
        self.accept(task.id, record)

    def accept(self, task_id: str, record: dict[str, Any]) -> None:
        """Take a finished task's answers (its record file is already written, or failed to be)."""
        if self.lane is not None:
            record = self.lane.merge(task_id, record)
        self.records[task_id] = record
        self.answers[task_id] = record["attempts"]
        self.write_submission()

    def report(self, engine_info: dict[str, Any], seconds: float) -> dict[str, Any]:
        report = {"config": self.cfg.to_dict(), "backends": engine_info, "seconds": seconds,
                  "challenges": str(self.challenges.resolve()),
                  "time_budget_s": self.cfg.budget.time_budget_s,
                  "tasks": len(self.counts), "resumed": self.resumed,
                  "model": self.identity["model"], "workdir": str(self.workdir),
                  "scratch": str(self.scratch), "calibration": self.calibration, **self.info,
                  "fallbacks": dict(self.fallbacks), "faults": self.faults,
                  "lenient_parses": sum(r.get("lenient_parses", 0) for r in self.records.values()),
                  "per_task": {k: {f: v for f, v in r.items() if f not in ("config", "model")}
                               for k, r in self.records.items()}}
        write_json_atomic(self.workdir / "run.json", report)
        return report


def run(challenges: str | Path, model: str | Path | None, out: str | Path, workdir: str | Path,
        cfg: Config, *, limit: int | None = None, all_policies: bool = False,
        engine: Engine | None = None, scratch: str | Path | None = None,
        calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the tasks of `challenges`; returns the run report (also saved as workdir/run.json).
    With `engine` (or budget.workers == 0) everything runs in this process; otherwise in
    `budget.workers` supervised worker processes. Adapters go under `scratch` (default: the
    workdir). `calibration` (rates measured on this machine, calibrate.py) replaces the start-up
    measurement."""
    if engine is None:
        check_model_dir(model)
    state = Run(challenges, out, workdir, cfg, model=model, scratch=scratch, limit=limit,
                all_policies=all_policies)
    if calibration is not None:
        state.calibration = {"source": "file", **calibration}
    if not state.pending:
        report = state.report(engine.info if engine else {}, time.monotonic() - state.start)
        html_report(state.workdir, challenges=challenges)
        return report
    if engine is None:
        plan_memory_for_run(state, model)
    from .lane.service import start_lane

    state.lane = start_lane(state)
    lane_until = state.start + cfg.budget.time_budget_s  # the lane may use the whole budget
    try:
        if engine is None and cfg.budget.workers > 0:
            from .workers import supervise

            info = supervise(state, model)
        else:
            info = run_here(state, model, engine)
    except BaseException:
        lane_until = 0.0  # stopping (Ctrl-C, an error): keep what the lane has, wait for nothing
        raise
    finally:
        if state.lane is not None:
            lane, state.lane = state.lane, None
            try:
                lane.finish(state, lane_until)
            finally:
                lane.close()
    report = state.report(info, time.monotonic() - state.start)
    html_report(state.workdir, challenges=challenges)
    return report


def html_report(workdir: str | Path, **kwargs: Any) -> Path | None:
    """Write the run's HTML report (report.py); a failure is printed, never fails the run."""
    import sys

    from .errors import SubmissionError
    from .report import write_report

    try:
        return write_report(workdir, **kwargs)
    except (SubmissionError, OSError, ValueError) as exc:
        print(f"warning: no HTML report for {workdir}: {exc}", file=sys.stderr)
        return None


def run_here(state: Run, model: str | Path | None, engine: Engine | None) -> dict[str, Any]:
    """The in-process loop: same planner and scheduler as the workers; the watchdog interrupts a
    chunk that stops making progress (its tasks are re-queued) and the loop at the budget's end."""
    if engine is None:
        t0 = time.monotonic()
        engine = build_engine(model, state.cfg, state.info.get("engine_kwargs"))
        engine.info["load_s"] = time.monotonic() - t0
    engine_started(state, engine)
    planner = Planner(state.cfg, start=state.start, workers=1)
    sched = Scheduler(state.pending, planner, chunk_size=state.chunk_size)
    tasks = {t.id: t for t in state.pending}
    kills: list[dict[str, Any]] = []
    with Watchdog() as dog, tqdm(total=len(tasks), desc="tasks", unit="task") as bar:
        state.watchdog, state.sched = dog, sched
        cal = None
        try:
            try:
                dog.arm(state.cfg.budget.stall_s, planner.end, planner.end)
                cal = start_rates(state, engine)
            finally:
                dog.disarm()
        except CHUNK_ERRORS as exc:  # no measurement: the planner keeps its priors
            state.faults.append({"stage": "calibrate", "error": repr(exc)})
        except WatchdogInterrupt as exc:
            state.faults.append({"stage": "calibrate", "error": f"watchdog: {exc}"})
        if cal is not None and state.calibration is None:
            state.calibration = cal
        apply_rates(planner, sched, cal)
        loop_start, compute_start = time.monotonic(), engine.compute_seconds()
        while time.monotonic() < planner.end and (a := sched.assign(0, time.monotonic())) is not None:
            before, reason = set(state.records), None
            try:
                try:
                    dog.arm(a.stall_s, a.cap_at, planner.end)
                    process_chunk(engine, state, [tasks[i] for i in a.tasks], a.plans)
                finally:
                    dog.disarm()
            except CHUNK_ERRORS as exc:  # a failed batch: its tasks are re-queued once
                state.faults.append({"tasks": a.tasks, "stage": "chunk", "error": repr(exc)})
            except WatchdogInterrupt as exc:
                reason = f"watchdog: {exc} (stage '{a.stage}')"
                kills.append({"worker": 0, "reason": reason, "tasks": a.tasks})
            for task_id in a.tasks:
                if task_id in state.records and task_id not in before:
                    sched.task_done(0, task_id)
                    sched.observe(task_id, state.records[task_id])
            given_up = sched.fail(0, reason) if reason else sched.chunk_done(0, time.monotonic())
            for task_id in given_up:
                state.faults.append({"task": task_id, "stage": "chunk",
                                     "error": reason or "gave up after retry"})
                state.fallbacks["tasks_given_up"] += 1
            bar.update(len(sched.finished) - bar.n)
        state.watchdog = state.sched = None
    skipped = sched.unfinished()
    if skipped:
        state.fallbacks["deadline_skipped_tasks"] += len(skipped)
    loop_s, compute_s = time.monotonic() - loop_start, engine.compute_seconds() - compute_start
    engine.info["compute"] = {"loop_s": loop_s, "compute_s": compute_s,
                              "host_share": max(0.0, loop_s - compute_s) / loop_s if loop_s else 0.0}
    engine.info["killed"] = kills
    engine.info["rates"] = dict(planner.rates)
    return engine.info


def _raw_test_count(obj: Any) -> int:
    tests = obj.get("test") if isinstance(obj, dict) else None
    return len(tests) if isinstance(tests, list) and tests else 1
