"""Supervised worker processes: one per GPU, each with its own engine, pulling chunks of tasks.

The supervisor (this process) never imports torch: it holds the scheduler and the planner, sends
each idle worker a chunk with its plans over a pipe, merges every finished task into
submission.json, and kills a worker that dies or overruns its chunk's cap (its unfinished tasks are
re-queued once, then given fallback answers; a replacement worker is started while time allows).
At the budget's end every worker is killed and the run closes with what it has. Workers get
`CUDA_VISIBLE_DEVICES` and their own unsloth compile cache before anything imports torch.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .budget import Planner
from .config import Config
from .errors import SubmissionError
from .schedule import Scheduler

GRACE_S = 15.0  # stop this long before the budget's end: kill workers, write the final files
POLL_S = 0.5
MAX_RESPAWNS_PER_WORKER = 3


class WorkerStartError(SubmissionError):
    """No worker could build its engine (missing backend, bad model directory)."""


@dataclass
class Handle:
    wid: int
    proc: Any
    inbox: Connection  # supervisor -> worker
    outbox: Connection  # worker -> supervisor
    ready: bool = False
    respawns: int = 0


def worker_env(wid: int, gpus: int, workdir: Path) -> dict[str, str]:
    """Environment a worker needs before importing torch (one GPU each when there are GPUs)."""
    env = {"UNSLOTH_COMPILE_LOCATION": str((workdir / "unsloth_cache" / f"w{wid}").resolve()),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(wid % gpus)
    return env


def supervise(state: Any, model: str | Path) -> dict[str, Any]:
    """Run `state.pending` on `state.cfg.budget.workers` processes; returns backend info."""
    from .kaggle import gpu_count

    cfg: Config = state.cfg
    n = cfg.budget.workers
    gpus = gpu_count()
    planner = Planner(cfg, start=state.start, workers=n)
    sched = Scheduler(state.pending, planner, chunk_size=cfg.sampling.max_loras)
    end = planner.deadline - GRACE_S
    ctx = mp.get_context("spawn")
    handles: dict[int, Handle] = {}
    info: dict[str, Any] = {"workers": n, "worker_info": {}, "killed": []}

    def start(wid: int, respawns: int = 0) -> None:
        inbox_r, inbox_w = ctx.Pipe(duplex=False)
        out_r, out_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=worker_main, name=f"arc-worker-{wid}", daemon=False,
                           args=(wid, worker_env(wid, gpus, state.workdir), str(model),
                                 cfg.to_dict(), str(state.challenges), str(state.workdir),
                                 state.all_policies, inbox_r, out_w))
        proc.start()
        inbox_r.close()
        out_w.close()
        handles[wid] = Handle(wid, proc, inbox_w, out_r, respawns=respawns)

    def kill(h: Handle, reason: str) -> None:
        if h.proc.is_alive():
            h.proc.kill()
        h.proc.join(timeout=10)
        info["killed"].append({"worker": h.wid, "reason": reason})
        for task_id in sched.fail(h.wid, reason):
            state.faults.append({"task": task_id, "stage": "worker", "error": reason})
            state.fallbacks["tasks_given_up"] += 1
        handles.pop(h.wid, None)
        if h.respawns < MAX_RESPAWNS_PER_WORKER and sched.queue and time.monotonic() < end - 60:
            start(h.wid, h.respawns + 1)

    def give_work(h: Handle) -> None:
        a = sched.assign(h.wid, time.monotonic())
        _send(h.inbox, None if a is None else (a.tasks, {k: vars(p) for k, p in a.plans.items()}))

    bar = tqdm(total=len(state.pending), desc=f"tasks ({n} workers)", unit="task")
    for wid in range(n):
        start(wid)
    while not sched.complete() and time.monotonic() < end:
        now = time.monotonic()
        for wid in sched.overdue(now):
            if wid in handles:
                a = sched.active[wid]
                kill(handles[wid], f"stage '{a.stage}' past its deadline ({now - a.started:.0f} s "
                                   f"into its chunk)")
        for h in list(handles.values()):
            if not h.proc.is_alive() and not h.outbox.poll():
                kill(h, f"worker died (exit code {h.proc.exitcode})")
        if not handles:
            break
        for conn in wait([h.outbox for h in handles.values()], timeout=POLL_S):
            h = next(x for x in handles.values() if x.outbox is conn)
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                kill(h, f"worker pipe closed (exit code {h.proc.exitcode})")
                continue
            _handle(msg, h, state, sched, planner, info, give_work)
            bar.n = len(sched.finished)
            bar.refresh()
    bar.close()
    for h in list(handles.values()):
        _send(h.inbox, None)
        h.proc.join(timeout=2)
        if h.proc.is_alive():
            h.proc.kill()
            h.proc.join(timeout=10)
    if "fatal" in info and not info["worker_info"].get("ready"):
        raise WorkerStartError(f"no worker could start its engine: {info['fatal']}")
    skipped = sched.unfinished()
    if skipped:
        state.fallbacks["deadline_skipped_tasks"] += len(skipped)
    return info


def _handle(msg: tuple, h: Handle, state: Any, sched: Scheduler, planner: Planner,
            info: dict[str, Any], give_work) -> None:
    from .run import observe

    kind = msg[0]
    if kind == "ready":
        h.ready = True
        info["worker_info"][str(h.wid)] = msg[2]
        info["worker_info"]["ready"] = True
        give_work(h)
    elif kind == "done":
        _, task_id, record, fallbacks, faults = msg
        state.accept(task_id, record)
        state.fallbacks.update(fallbacks)
        state.faults.extend(faults)
        sched.task_done(h.wid, task_id)
        observe(planner, sched, record, task_id)
    elif kind == "progress":
        sched.progress(h.wid, msg[1], msg[2], time.monotonic())
    elif kind == "chunk_error":
        state.faults.append({"tasks": msg[1], "stage": "chunk", "error": msg[2], "worker": h.wid})
    elif kind == "chunk_done":
        for task_id in sched.chunk_done(h.wid):
            state.faults.append({"task": task_id, "stage": "chunk", "error": "gave up after retry"})
            state.fallbacks["tasks_given_up"] += 1
        info["worker_info"].setdefault(str(h.wid), {})["compute"] = msg[1]
        give_work(h)
    elif kind == "fatal":  # the engine cannot start: retrying the same setup would fail again
        state.faults.append({"stage": "worker_start", "worker": h.wid, "error": msg[1]})
        info["fatal"] = msg[1]
        h.respawns = MAX_RESPAWNS_PER_WORKER


def _send(conn: Connection, obj: Any) -> None:
    try:
        conn.send(obj)
    except (BrokenPipeError, OSError):
        pass  # the worker is gone; the supervisor notices it on the next poll


class WorkerSink:
    """What pipeline.process_chunk reports to, inside a worker: records go to disk and the pipe."""

    def __init__(self, cfg: Config, workdir: Path, all_policies: bool, outbox: Connection) -> None:
        from .config import ANSWER_SECTIONS

        self.cfg, self.workdir, self.all_policies, self.outbox = cfg, workdir, all_policies, outbox
        self.cfg_json = cfg.to_json(ANSWER_SECTIONS)
        self.fallbacks: Counter = Counter()
        self.faults: list[dict[str, Any]] = []

    def progress(self, stage: str, task_id: str | None) -> None:
        self.outbox.send(("progress", stage, task_id))

    def finish_task(self, task, record: dict[str, Any]) -> None:
        from .run import write_task_record

        write_task_record(self.workdir, task.id, record, self.cfg_json)
        self.outbox.send(("done", task.id, record, dict(self.fallbacks), list(self.faults)))
        self.fallbacks.clear()
        self.faults.clear()


def worker_main(wid: int, env: dict[str, str], model: str, cfg_dict: dict, challenges: str,
                workdir: str, all_policies: bool, inbox: Connection, outbox: Connection) -> None:
    """Entry of a worker process: build the engine once, then process chunks until told to stop."""
    os.environ.update(env)  # before torch: CUDA_VISIBLE_DEVICES, the compile cache
    from .budget import TaskPlan
    from .engine import build_engine
    from .pipeline import TTT_ERRORS, process_chunk
    from .run import compute_seconds
    from .tasks import load_tasks_lenient

    cfg = Config.from_dict(cfg_dict)
    tasks, _ = load_tasks_lenient(challenges)
    sink = WorkerSink(cfg, Path(workdir), all_policies, outbox)
    try:
        t0 = time.monotonic()
        engine = build_engine(model, cfg)
        engine.info["load_s"] = time.monotonic() - t0
    except (SubmissionError, OSError, RuntimeError, ValueError) as exc:
        outbox.send(("fatal", repr(exc)))
        return
    engine.fallbacks = sink.fallbacks
    outbox.send(("ready", wid, engine.info))
    while (msg := inbox.recv()) is not None:
        ids, plans = msg
        start, compute0 = time.monotonic(), compute_seconds(engine)
        try:
            process_chunk(engine, sink, [tasks[i] for i in ids],
                          {k: TaskPlan(**p) for k, p in plans.items()})
        except TTT_ERRORS as exc:
            outbox.send(("chunk_error", ids, repr(exc)))
        outbox.send(("chunk_done", {"loop_s": time.monotonic() - start,
                                    "compute_s": compute_seconds(engine) - compute0}))
