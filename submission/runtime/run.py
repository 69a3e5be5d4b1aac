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
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from submission.runtime.budget import Planner
from submission.config import ANSWER_SECTIONS, Config
from submission.errors import InputError, Interrupted
from submission.events import BAD_TASK, DEADLINE_SKIPPED, GPU_UNUSABLE, TASKS_GIVEN_UP, Counts
from submission.arc.grids import Task
from submission.runtime.lock import workdir_lock
from submission.runtime.modelfiles import check_model_dir, model_identity
from submission.runtime.records import load_task_record, store_record
from submission.runtime.run_report import Backends, Kill, RunReport
from submission.runtime.task_record import TaskRecord, as_record
from submission.runtime.schedule import Scheduler
from submission.runtime.startup import (
    apply_rates,
    engine_started,
    plan_memory_for_run,
    start_rates,
    stop_for_unusable_gpu,
)
from submission.runtime.files import write_json_atomic
from submission.arc.submit import build_submission
from submission.arc.tasks import load_tasks_lenient, read_json_object
from submission.runtime.vllm_tmp import sweep
from submission.runtime.watchdog import Watchdog, WatchdogInterrupt

if TYPE_CHECKING:  # the model side is imported in run_here only: the supervisor stays torch-free
    from submission.lane.service import LaneRunner
    from submission.model.engine import Engine

WEIGHT_DIGESTS = "weight_digests.json"  # in the workdir: each weight file is read in full once


class Run:
    """State of one run: outputs, per-task records, fallback counters and faults."""

    def __init__(self, challenges: str | Path, out: str | Path, workdir: str | Path, cfg: Config,
                 *, model: str | Path | None = None, scratch: str | Path | None = None,
                 limit: int | None = None, all_policies: bool = False,
                 strict_load: bool = True) -> None:
        self.start = time.monotonic()
        self.challenges = Path(challenges)
        self.cfg, self.out, self.workdir = cfg, Path(out), Path(workdir)
        self.scratch = Path(scratch) if scratch is not None else self.workdir
        # a stored task is reused only if the answer-relevant config and the model both match
        self.identity = {"config": cfg.to_json(ANSWER_SECTIONS), "model": model_identity(
            model, cache=self.workdir / WEIGHT_DIGESTS) if model is not None else None}
        self.all_policies = all_policies
        self.tasks, bad = load_tasks_lenient(challenges)
        if strict_load and bad and not self.tasks:  # e.g. a solutions file given as challenges
            first = next(iter(bad))
            raise InputError(f"none of its {len(bad)} task(s) loads (is it a challenges file?); "
                             f"first: {bad[first]}", file=str(challenges))
        (self.workdir / "tasks").mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.workdir / "config.json", cfg.to_dict())
        raw = read_json_object(challenges)
        ids = list(raw)
        self.counts = {i: _raw_test_count(raw[i]) for i in ids}  # every task, so the file validates
        self.faults: list[dict[str, Any]] = [{"task": i, "stage": "load", "error": bad[i]}
                                             for i in ids if i in bad]
        self.fallbacks: Counter = Counts({BAD_TASK: len(self.faults)})
        self.answers: dict[str, list[list[Any]]] = {}
        self.records: dict[str, TaskRecord] = {}
        for i in ids:
            rec = load_task_record(self.workdir, self.tasks[i], self.identity) if i in self.tasks else None
            if rec is not None:
                self.records[i] = rec
                self.answers[i] = rec.attempts
        runnable = [i for i in ids if i in self.tasks][:limit]  # --limit: the rest keep placeholders
        self.pending = [self.tasks[i] for i in runnable if i not in self.records]
        self.resumed = len(self.records)
        self.calibration: dict[str, Any] | None = None  # given by a file, else measured at start
        self.info: dict[str, Any] = {}  # what run.json reports besides the backends
        self.watchdog: Watchdog | None = None
        self.sched: Scheduler | None = None  # the in-process loop's scheduler (heartbeats)
        self.chunk_size = cfg.sampling.max_loras  # tasks per chunk (the memory plan may lower it)
        self.lane: LaneRunner | None = None  # the program-search lane's pool while it runs (lane/service.py)
        self.write_submission()

    def write_submission(self) -> None:
        write_json_atomic(self.out, build_submission(self.counts, self.answers))

    def progress(self, stage: str, task_id: str | None) -> None:
        """A heartbeat: the in-process watchdog and scheduler see progress in `stage`."""
        if self.watchdog is not None:
            self.watchdog.beat()
        if self.sched is not None:
            self.sched.progress(0, stage, task_id, time.monotonic())

    def finish_task(self, task: Task, record: TaskRecord | dict[str, Any]) -> None:
        """Store a finished task's record (resume point), then rewrite submission.json."""
        store_record(self, task, record)
        self.accept(task.id, record)

    def accept(self, task_id: str, record: TaskRecord | dict[str, Any]) -> None:
        """Take a finished task's answers (its record file is already written, or failed to be)."""
        rec = as_record(record)
        if self.lane is not None:
            rec = as_record(self.lane.merge(task_id, rec.to_json()))
        self.records[task_id] = rec
        self.answers[task_id] = rec.attempts
        self.write_submission()

    def report(self, backends: Backends, seconds: float) -> dict[str, Any]:
        """Write run.json (run_report.RunReport) and return its JSON."""
        report = RunReport(
            config=self.cfg.to_dict(), backends=backends, seconds=seconds,
            challenges=str(self.challenges.resolve()), time_budget_s=self.cfg.budget.time_budget_s,
            tasks=len(self.counts), resumed=self.resumed, model=self.identity["model"],
            workdir=str(self.workdir), submission=str(self.out), scratch=str(self.scratch),
            calibration=self.calibration, info=dict(self.info), fallbacks=dict(self.fallbacks),
            faults=self.faults, per_task=dict(self.records)).to_json()
        write_json_atomic(self.workdir / "run.json", report)
        return report


def run(challenges: str | Path, model: str | Path | None, out: str | Path, workdir: str | Path,
        cfg: Config, *, limit: int | None = None, all_policies: bool = False,
        engine: Engine | None = None, scratch: str | Path | None = None,
        calibration: dict[str, Any] | None = None, strict_load: bool = True) -> dict[str, Any]:
    """Run the tasks of `challenges`; returns the run report (also saved as workdir/run.json).
    With `engine` (or budget.workers == 0) everything runs in this process; otherwise in
    `budget.workers` supervised worker processes. Adapters go under `scratch` (default: the
    workdir). `calibration` (rates measured on this machine, calibrate.py) replaces the start-up
    measurement. One run per workdir (lock.py). `strict_load`: InputError when no task of the
    file loads (off only where placeholders must be written anyway: the competition rerun).
    Ctrl-C: run.json is written with the finished tasks (submission.json always holds them) and
    `Interrupted` is raised."""
    if engine is None:
        check_model_dir(model)
    with workdir_lock(workdir):
        sweep()  # temp directories of engines that were killed
        try:
            return _run_locked(challenges, model, out, workdir, cfg, limit=limit,
                               all_policies=all_policies, engine=engine, scratch=scratch,
                               calibration=calibration, strict_load=strict_load)
        finally:
            sweep()  # those of this run's killed workers


def _run_locked(challenges, model, out, workdir, cfg, *, limit, all_policies, engine, scratch,
                calibration, strict_load) -> dict[str, Any]:
    state = Run(challenges, out, workdir, cfg, model=model, scratch=scratch, limit=limit,
                all_policies=all_policies, strict_load=strict_load)
    if calibration is not None:
        state.calibration = {"source": "file", **calibration}
    # A GPU torch cannot use: nothing trains or samples on the CPU in its place; the lane below
    # still answers what it can (the fastest valid submission), the rest keep placeholders.
    unusable = bool(state.pending) and engine is None and stop_for_unusable_gpu(
        state, import_torch=cfg.budget.workers == 0)
    if unusable:
        state.fallbacks[GPU_UNUSABLE] += len(state.pending)
    if not state.pending:
        report = state.report(Backends.in_process(engine.info if engine else None),
                              time.monotonic() - state.start)
        html_report(state.workdir, challenges=challenges)
        return report
    if engine is None and not unusable:
        plan_memory_for_run(state, model)
    from submission.lane.service import start_lane

    state.lane = start_lane(state)
    lane_until = state.start + cfg.budget.time_budget_s  # the lane may use the whole budget
    try:
        try:
            if unusable:
                info = Backends()
            elif engine is None and cfg.budget.workers > 0:
                from submission.runtime.workers import supervise

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
    except KeyboardInterrupt:  # stop the workers; keep what finished
        if engine is None and cfg.budget.workers > 0:
            from submission.runtime.workers import stop_workers

            stop_workers()
        for task in state.pending:  # records a worker wrote that the supervisor did not read
            if task.id not in state.records and (rec := load_task_record(
                    state.workdir, task, state.identity)) is not None:
                state.accept(task.id, rec)
        state.info["interrupted"] = True
        state.report(Backends.in_process(engine.info if engine else None),
                     time.monotonic() - state.start)
        raise Interrupted(f"interrupted: {len(state.records)} of {len(state.counts)} task(s) "
                          f"finished, kept in {state.out} and {state.workdir / 'run.json'}") from None
    report = state.report(info, time.monotonic() - state.start)
    html_report(state.workdir, challenges=challenges)
    return report


def html_report(workdir: str | Path, **kwargs: Any) -> Path | None:
    """Write the run's HTML report (report.py); a failure is printed, never fails the run."""
    import sys

    from submission.errors import SubmissionError
    from submission.tools.report import write_report

    try:
        return write_report(workdir, **kwargs)
    except (SubmissionError, OSError, ValueError) as exc:
        print(f"warning: no HTML report for {workdir}: {exc}", file=sys.stderr)
        return None


def run_here(state: Run, model: str | Path | None, engine: Engine | None) -> Backends:
    """The in-process loop: same planner and scheduler as the workers; the watchdog interrupts a
    chunk that stops making progress (its tasks are re-queued) and the loop at the budget's end."""
    from submission.model.engine import build_engine
    from submission.worker.pipeline import TTT_ERRORS as CHUNK_ERRORS
    from submission.worker.pipeline import process_chunk

    if engine is None:
        assert model is not None  # run() checked the model directory
        t0 = time.monotonic()
        engine = build_engine(model, state.cfg, state.info.get("engine_kwargs"))
        engine.info["load_s"] = time.monotonic() - t0
    engine_started(state, engine)
    planner = Planner(state.cfg, start=state.start, workers=1)
    sched = Scheduler(state.pending, planner, chunk_size=state.chunk_size)
    tasks = {t.id: t for t in state.pending}
    kills: list[Kill] = []
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
                kills.append(Kill(0, reason, list(a.tasks)))
            for task_id in a.tasks:
                if task_id in state.records and task_id not in before:
                    sched.task_done(0, task_id)
                    sched.observe(task_id, state.records[task_id].to_json())
            given_up = sched.fail(0, reason) if reason else sched.chunk_done(0, time.monotonic())
            for task_id in given_up:
                state.faults.append({"task": task_id, "stage": "chunk",
                                     "error": reason or "gave up after retry"})
                state.fallbacks[TASKS_GIVEN_UP] += 1
            bar.update(len(sched.finished) - bar.n)
        state.watchdog = state.sched = None
    skipped = sched.unfinished()
    if skipped:
        state.fallbacks[DEADLINE_SKIPPED] += len(skipped)
    loop_s, compute_s = time.monotonic() - loop_start, engine.compute_seconds() - compute_start
    compute = {"loop_s": loop_s, "compute_s": compute_s,
               "host_share": max(0.0, loop_s - compute_s) / loop_s if loop_s else 0.0}
    return Backends.in_process(engine.info, compute=compute, killed=tuple(kills),
                               calibration=cal, rates=dict(planner.rates))


def _raw_test_count(obj: Any) -> int:
    tests = obj.get("test") if isinstance(obj, dict) else None
    return len(tests) if isinstance(tests, list) and tests else 1
