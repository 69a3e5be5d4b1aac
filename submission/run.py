"""The run: load tasks, write a placeholder submission.json at once, then process the tasks (in
this process, or in supervised worker processes: workers.py) and rewrite submission.json
atomically after every finished task; finally write `workdir/run.json`.

Tasks go in chunks of `sampling.max_loras` (pipeline.py), planned against the time budget
(budget.py) and scheduled longest first (schedule.py). Finished tasks are stored under
`workdir/tasks/`, so a rerun with the same workdir and config resumes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .budget import Planner
from .config import ANSWER_SECTIONS, Config
from .engine import Engine, build_engine, check_model_dir
from .grids import Task
from .pipeline import TTT_ERRORS as CHUNK_ERRORS
from .pipeline import process_chunk
from .schedule import Scheduler
from .submit import build_submission, write_json_atomic
from .tasks import load_tasks_lenient, read_json_object


class Run:
    """State of one run: outputs, per-task records and fallback counters."""

    def __init__(self, challenges: str | Path, out: str | Path, workdir: str | Path, cfg: Config,
                 *, limit: int | None = None, all_policies: bool = False) -> None:
        self.start = time.monotonic()
        self.challenges = Path(challenges)
        self.cfg, self.out, self.workdir = cfg, Path(out), Path(workdir)
        self.cfg_json = cfg.to_json(ANSWER_SECTIONS)  # a stored task is reused only if these match
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
            rec = self._load_record(i)
            if rec is not None:
                self.records[i] = rec
                self.answers[i] = rec["attempts"]
        runnable = [i for i in ids if i in self.tasks][:limit]  # --limit: the rest keep placeholders
        self.pending = [self.tasks[i] for i in runnable if i not in self.records]
        self.resumed = len(self.records)
        self.write_submission()

    def _load_record(self, task_id: str) -> dict[str, Any] | None:
        path = self.workdir / "tasks" / f"{task_id}.json"
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return rec if rec.get("config") == self.cfg_json else None

    def write_submission(self) -> None:
        write_json_atomic(self.out, build_submission(self.counts, self.answers))

    def progress(self, stage: str, task_id: str | None) -> None:
        """In-process runs have no supervisor to tell."""

    def finish_task(self, task: Task, record: dict[str, Any]) -> None:
        """Store a finished task's record (resume point), then rewrite submission.json."""
        write_task_record(self.workdir, task.id, record, self.cfg_json)
        self.accept(task.id, record)

    def accept(self, task_id: str, record: dict[str, Any]) -> None:
        """Take a finished task's answers (its record file is already written)."""
        self.records[task_id] = record
        self.answers[task_id] = record["attempts"]
        self.write_submission()

    def report(self, engine_info: dict[str, Any], seconds: float) -> dict[str, Any]:
        report = {"config": self.cfg.to_dict(), "backends": engine_info, "seconds": seconds,
                  "tasks": len(self.counts), "resumed": self.resumed,
                  "fallbacks": dict(self.fallbacks), "faults": self.faults,
                  "per_task": {k: {f: v for f, v in r.items() if f != "config"}
                               for k, r in self.records.items()}}
        write_json_atomic(self.workdir / "run.json", report)
        return report


def write_task_record(workdir: Path, task_id: str, record: dict[str, Any], cfg_json: dict) -> None:
    record["config"] = cfg_json
    write_json_atomic(Path(workdir) / "tasks" / f"{task_id}.json", record)


def run(challenges: str | Path, model: str | Path | None, out: str | Path, workdir: str | Path,
        cfg: Config, *, limit: int | None = None, all_policies: bool = False,
        engine: Engine | None = None) -> dict[str, Any]:
    """Run the tasks of `challenges`; returns the run report (also saved as workdir/run.json).
    With `engine` (or budget.workers == 0) everything runs in this process; otherwise in
    `budget.workers` supervised worker processes."""
    state = Run(challenges, out, workdir, cfg, limit=limit, all_policies=all_policies)
    if engine is None:
        check_model_dir(model)
    if not state.pending:
        return state.report(engine.info if engine else {}, time.monotonic() - state.start)
    if engine is None and cfg.budget.workers > 0:
        from .workers import supervise

        info = supervise(state, model)
    else:
        info = run_here(state, model, engine)
    return state.report(info, time.monotonic() - state.start)


def run_here(state: Run, model: str | Path | None, engine: Engine | None) -> dict[str, Any]:
    """The in-process loop: same planner and scheduler as the workers, no kill on overrun."""
    if engine is None:
        t0 = time.monotonic()
        engine = build_engine(model, state.cfg)
        engine.info["load_s"] = time.monotonic() - t0
    planner = Planner(state.cfg, start=state.start, workers=1)
    sched = Scheduler(state.pending, planner, chunk_size=state.cfg.sampling.max_loras)
    tasks = {t.id: t for t in state.pending}
    loop_start, compute_start = time.monotonic(), compute_seconds(engine)
    with tqdm(total=len(tasks), desc="tasks", unit="task") as bar:
        while (a := sched.assign(0, time.monotonic())) is not None:
            before = set(state.records)
            try:
                process_chunk(engine, state, [tasks[i] for i in a.tasks], a.plans)
            except CHUNK_ERRORS as exc:  # a failed batch: its tasks are re-queued once
                state.faults.append({"tasks": a.tasks, "stage": "chunk", "error": repr(exc)})
            for task_id in a.tasks:
                if task_id in state.records and task_id not in before:
                    sched.task_done(0, task_id)
                    observe(planner, sched, state.records[task_id], task_id)
            sched.chunk_done(0)
            bar.update(len(a.tasks))
    skipped = sched.unfinished() + list(sched.given_up)
    if skipped:
        state.fallbacks["deadline_skipped_tasks"] += len(skipped)
    loop_s, compute_s = time.monotonic() - loop_start, compute_seconds(engine) - compute_start
    engine.info["compute"] = {"loop_s": loop_s, "compute_s": compute_s,
                              "host_share": max(0.0, loop_s - compute_s) / loop_s if loop_s else 0.0}
    return engine.info


def observe(planner: Planner, sched: Scheduler, rec: dict[str, Any], task_id: str) -> None:
    """Feed a finished task's measured stage times back into the planner's rates."""
    t = rec.get("timing", {})
    ttt = rec.get("ttt") or {}
    rescored = sum(len(c.get("rescore_logprobs") or []) for x in rec.get("tests", [])
                   for c in x.get("candidates", []))
    planner.observe(sched.costs[task_id], ttt_s=ttt.get("seconds", 0.0), train_tokens=ttt.get("tokens", 0),
                    sample_s=t.get("sample_s", 0.0), views=rec.get("views", 0),
                    rescore_s=t.get("rescore_s", 0.0), rescored=rescored)


def compute_seconds(engine: Engine) -> float:
    """Seconds spent in model compute so far (training steps, generate and scoring calls); the rest
    of the task loop is host work (data, views, parsing, selection, writing)."""
    samplers = {id(s): s for s in (engine.sampler, engine.forward)}.values()
    return engine.trainer.compute_s + sum(getattr(s, "compute_s", 0.0) for s in samplers)


def _raw_test_count(obj: Any) -> int:
    tests = obj.get("test") if isinstance(obj, dict) else None
    return len(tests) if isinstance(tests, list) and tests else 1
