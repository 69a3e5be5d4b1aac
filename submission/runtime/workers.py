"""Supervised worker processes: one per GPU, each with its own engine, pulling chunks of tasks.

The supervisor (this process) never imports torch: it holds the scheduler and the planner, sends
each idle worker a chunk with its plans over a pipe, merges every finished task into
submission.json, and kills a worker that dies, stops sending heartbeats for its stall allowance, or
passes its chunk's hard cap (its unfinished tasks are re-queued once with a larger allowance, then
given fallback answers; a replacement worker is started while time allows). A worker measures its
machine's rates right after building its engine and sends them with its `Ready` message. At the
budget's end every worker is killed and the run closes with what it has. Workers get
`CUDA_VISIBLE_DEVICES` and their own unsloth compile cache before anything imports torch. The
messages both ways are the types of runtime/messages.py, dispatched on type.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from submission.runtime.budget import Planner
from submission.config import Config
from submission.environment import WORKER_ENV, set_offline
from submission.errors import SubmissionError
from submission.events import DEADLINE_SKIPPED, GPU_UNUSABLE, TASKS_GIVEN_UP
from submission.runtime.messages import (Chunk, ChunkDone, ChunkError, Fatal, FromWorker, Progress, Ready,
                                         Stop, TaskDone, ToWorker, Unusable)
from submission.runtime.run_report import Backends, Kill, WorkerInfo
from submission.runtime.schedule import Scheduler

POLL_S = 0.5
MAX_RESPAWNS_PER_WORKER = 3
STARTUP_S = 1800.0  # a worker not ready by then (engine load + calibration) is killed and replaced
STOP_S = 5.0  # a worker told to stop (SIGTERM) that has not exited by then is killed
WORKER_NAME = "arc-worker-"


class WorkerStartError(SubmissionError):
    """No worker could build its engine (missing backend, bad model directory)."""


@dataclass
class Handle:
    wid: int
    proc: Any
    inbox: Connection  # supervisor -> worker
    outbox: Connection  # worker -> supervisor
    started: float = 0.0
    ready: bool = False
    respawns: int = 0


def worker_env(wid: int, gpus: int, workdir: Path, scratch: Path | None = None) -> dict[str, str]:
    """Environment a worker needs before importing torch (one GPU each when there are GPUs), with
    its own unsloth and vLLM compile caches: vLLM writes its cache index in place, without an
    atomic rename (vllm/compilation/backends.py:218-224), and parses it back without error
    handling (:188-194), all under VLLM_CACHE_ROOT (:1074-1076), so workers compiling at once
    must not share one. vLLM's goes under `scratch` (room; default the workdir)."""
    env = {"UNSLOTH_COMPILE_LOCATION": str((workdir / "unsloth_cache" / f"w{wid}").resolve()),
           "VLLM_CACHE_ROOT": str(((scratch or workdir) / "vllm_cache" / f"w{wid}").resolve()),
           **WORKER_ENV}
    set_offline(env, force=True)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(wid % gpus)
    return env


def supervise(state: Any, model: str | Path) -> Backends:
    """Run `state.pending` on `state.cfg.budget.workers` processes; returns what the engines did."""
    from submission.tools.kaggle import gpu_count

    cfg: Config = state.cfg
    n = cfg.budget.workers
    gpus = gpu_count()
    planner = Planner(cfg, start=state.start, workers=n)
    sched = Scheduler(state.pending, planner, chunk_size=state.chunk_size)
    end = planner.end
    ctx = mp.get_context("spawn")
    handles: dict[int, Handle] = {}
    # worker_info, killed, calibrations, ready, gpu_unusable, fatal: Backends' fields as they come
    info: dict[str, Any] = {"worker_info": {}, "killed": [], "calibrations": {}, "ready": False}
    job = {"model": str(model), "cfg": cfg.to_dict(), "challenges": str(state.challenges),
           "workdir": str(state.workdir), "scratch": str(state.scratch), "identity": state.identity,
           "all_policies": state.all_policies, "calibration": state.calibration,
           "engine_kwargs": state.info.get("engine_kwargs"), "supervisor": os.getpid()}

    def start(wid: int, respawns: int = 0) -> None:
        inbox_r, inbox_w = ctx.Pipe(duplex=False)
        out_r, out_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker_entry, name=f"{WORKER_NAME}{wid}", daemon=False,
                           args=(wid, worker_env(wid, gpus, state.workdir, state.scratch), job,
                                 inbox_r, out_w))
        proc.start()
        inbox_r.close()
        out_w.close()
        handles[wid] = Handle(wid, proc, inbox_w, out_r, started=time.monotonic(), respawns=respawns)

    def kill(h: Handle, reason: str) -> None:
        if h.proc.is_alive():
            h.proc.kill()
        h.proc.join(timeout=10)
        a = sched.active.get(h.wid)
        info["killed"].append(Kill(h.wid, reason, list(a.tasks) if a else []))
        for task_id in sched.fail(h.wid, reason):
            state.faults.append({"task": task_id, "stage": "worker", "error": reason})
            state.fallbacks[TASKS_GIVEN_UP] += 1
        handles.pop(h.wid, None)
        if h.respawns < MAX_RESPAWNS_PER_WORKER and sched.queue and time.monotonic() < end - 60:
            start(h.wid, h.respawns + 1)

    def give_work(h: Handle) -> None:
        a = sched.assign(h.wid, time.monotonic())
        _send(h.inbox, Stop() if a is None else Chunk(a.tasks, a.plans))

    bar = tqdm(total=len(state.pending), desc=f"tasks ({n} workers)", unit="task")
    try:  # the bar is closed before any error line (Ctrl-C)
        for wid in range(n):
            start(wid)
        while not sched.complete() and time.monotonic() < end and "gpu_unusable" not in info:
            now = time.monotonic()
            for wid in sched.overdue(now):
                if wid in handles:
                    kill(handles[wid], sched.active[wid].why(now))
            for h in list(handles.values()):
                if not h.proc.is_alive() and not h.outbox.poll():
                    kill(h, f"worker died (exit code {h.proc.exitcode})")
                elif not h.ready and now - h.started > STARTUP_S:
                    kill(h, f"worker not ready {now - h.started:.0f} s after its start")
            if not handles:
                break
            for conn in wait([h.outbox for h in handles.values()], timeout=POLL_S):
                h = next(x for x in handles.values() if x.outbox is conn)
                try:
                    msg = h.outbox.recv()
                except (EOFError, OSError):
                    kill(h, f"worker pipe closed (exit code {h.proc.exitcode})")
                    continue
                _handle(msg, h, state, sched, planner, info, give_work)
                bar.n = len(sched.finished)
                bar.refresh()
    finally:
        bar.close()
    for h in list(handles.values()):
        _send(h.inbox, Stop())
        h.proc.join(timeout=2)
        if h.proc.is_alive():
            h.proc.kill()
            h.proc.join(timeout=10)
    if "fatal" in info and not info["ready"]:
        raise WorkerStartError(info.get("fatal_message")
                               or f"no worker could start its engine: {info['fatal']}")
    skipped = sched.unfinished()
    if skipped:
        state.fallbacks[GPU_UNUSABLE if "gpu_unusable" in info else DEADLINE_SKIPPED] += len(skipped)
    return Backends(workers=n, worker_info={k: WorkerInfo.from_json(v)
                                            for k, v in info["worker_info"].items()},
                    killed=tuple(info["killed"]), calibrations=info["calibrations"],
                    rates=dict(planner.rates), ready=info["ready"],
                    gpu_unusable=info.get("gpu_unusable"), fatal=info.get("fatal"))


def _handle(msg: FromWorker, h: Handle, state: Any, sched: Scheduler, planner: Planner,
            info: dict[str, Any], give_work) -> None:
    from submission.runtime.startup import apply_rates

    match msg:
        case Ready():
            h.ready = True
            info["worker_info"][str(h.wid)] = msg.engine_info
            info["ready"] = True
            state.fallbacks.update(msg.fallbacks)
            state.faults.extend(msg.faults)
            cal = msg.calibration
            if cal is not None:
                info["calibrations"][str(h.wid)] = cal
                if state.calibration is None:
                    state.calibration = cal
                if cal.get("source") == "measured" or not planner.measured:
                    apply_rates(planner, sched, cal)
            give_work(h)
        case TaskDone():
            state.accept(msg.task_id, msg.record)
            state.fallbacks.update(msg.fallbacks)
            state.faults.extend(msg.faults)
            sched.task_done(h.wid, msg.task_id)
            sched.observe(msg.task_id, msg.record.to_json())
        case Progress():
            sched.progress(h.wid, msg.stage, msg.task_id, time.monotonic())
        case ChunkError():
            state.faults.append({"tasks": msg.tasks, "stage": "chunk", "error": msg.error, "worker": h.wid})
        case ChunkDone():
            for task_id in sched.chunk_done(h.wid, time.monotonic()):
                state.faults.append({"task": task_id, "stage": "chunk", "error": "gave up after retry"})
                state.fallbacks[TASKS_GIVEN_UP] += 1
            mine = info["worker_info"].setdefault(str(h.wid), {})
            mine["compute"] = msg.compute
            mine.update(msg.rescore_info)  # the re-scoring check's result, once it has decided
            give_work(h)
        case Unusable():  # a GPU torch cannot use: stop, nothing trains on the CPU
            state.faults.append({"stage": "gpu", "worker": h.wid, "error": msg.reason})
            info["gpu_unusable"] = msg.reason
            h.respawns = MAX_RESPAWNS_PER_WORKER
        case Fatal():  # the engine cannot start: retrying the same setup would fail again
            state.faults.append({"stage": "worker_start", "worker": h.wid, "error": msg.error})
            info["fatal"] = msg.error
            info["fatal_message"] = msg.message  # ours: said as in-process
            h.respawns = MAX_RESPAWNS_PER_WORKER


def stop_workers() -> None:
    """Stop this process's worker processes now (Ctrl-C ended the supervisor's loop): SIGTERM,
    which a worker turns into a normal exit (its semaphores and temp files are released, so the
    resource tracker has nothing to warn about), then SIGKILL for any still alive after STOP_S."""
    procs = [p for p in mp.active_children() if p.name.startswith(WORKER_NAME)]
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + STOP_S
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)


def _send(conn: Connection, msg: ToWorker) -> None:
    try:
        conn.send(msg)
    except (BrokenPipeError, OSError):
        pass  # the worker is gone; the supervisor notices it on the next poll


def _worker_entry(*args: Any) -> None:
    """The spawn target: the worker side is imported in the child only, so this module (and the
    supervisor that imports it) never loads the model side (tests/test_boundary.py)."""
    from submission.worker.main import worker_main

    worker_main(*args)
