"""A worker process's side: its signals, the supervisor watch, the sink its records and messages go
through, and `worker_main`, which builds the engine once, measures the machine's rates and runs
chunks until told to stop. Imported only inside the worker (runtime/workers.py spawns it through a
trampoline); the supervisor side is runtime/workers.py."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from submission.config import Config
from submission.errors import SubmissionError
from submission.events import Counts
from submission.runtime.messages import Chunk, ChunkDone, ChunkError, Fatal, Progress, Ready, TaskDone, Unusable

RESCORE_INFO = ("rescore_check", "rescore_backend", "rescore_prefix_kv", "vllm_lost")  # decided mid-run
PARENT_POLL_S = 0.5  # how often a worker checks that its supervisor is still alive


def install_signals() -> None:
    """A worker's dispositions: Ctrl-C is the supervisor's to handle (ignored here); SIGTERM from
    `stop_workers` exits normally, running the cleanups."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def exit_with_supervisor(supervisor: int) -> None:
    """In a worker: a daemon thread ends the process as soon as its supervisor is gone (the worker
    is re-parented), not at its next pipe write, which may be minutes away in a long stage."""
    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(PARENT_POLL_S)
        os._exit(3)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


class WorkerSink:
    """What pipeline.process_chunk reports to, inside a worker: records go to disk and the pipe."""

    def __init__(self, cfg: Config, job: dict[str, Any], outbox: Connection) -> None:
        self.cfg, self.outbox = cfg, outbox
        self.workdir, self.scratch = Path(job["workdir"]), Path(job["scratch"])
        self.identity, self.all_policies = job["identity"], job["all_policies"]
        self.calibration = job["calibration"]
        self.fallbacks: Counter = Counts()
        self.faults: list[dict[str, Any]] = []

    def progress(self, stage: str, task_id: str | None) -> None:
        self.outbox.send(Progress(stage, task_id))

    def take_counts(self) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """The fallbacks and faults since the last message (sent along with it)."""
        out = dict(self.fallbacks), list(self.faults)
        self.fallbacks.clear()
        self.faults.clear()
        return out

    def finish_task(self, task, record: dict[str, Any]) -> None:
        from submission.runtime.records import store_record
        from submission.runtime.task_record import as_record

        store_record(self, task, record)
        self.outbox.send(TaskDone(task.id, as_record(record), *self.take_counts()))


def worker_main(wid: int, env: dict[str, str], job: dict[str, Any], inbox: Connection,
                outbox: Connection) -> None:
    """Entry of a worker process: build the engine once, measure the machine's rates, then
    process chunks until told to stop."""
    os.environ.update(env)  # before torch: CUDA_VISIBLE_DEVICES, the compile cache
    exit_with_supervisor(job["supervisor"])
    install_signals()
    from submission.model.engine import build_engine
    from submission.worker.pipeline import TTT_ERRORS, process_chunk
    from submission.runtime.startup import engine_started, gpu_unusable_reason, start_rates
    from submission.arc.tasks import load_tasks_lenient

    unusable = gpu_unusable_reason(import_torch=True)
    if unusable is not None:
        outbox.send(Unusable(unusable))
        return
    cfg = Config.from_dict(job["cfg"])
    tasks, _ = load_tasks_lenient(job["challenges"])
    sink = WorkerSink(cfg, job, outbox)
    try:
        t0 = time.monotonic()
        engine = build_engine(job["model"], cfg, job["engine_kwargs"])
        engine.info["load_s"] = time.monotonic() - t0
    except SubmissionError as exc:  # a bad model directory (InputError naming the file), ...
        outbox.send(Fatal(repr(exc), str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - anything else a model directory throws: reported,
        outbox.send(Fatal(repr(exc), None))  # never a crash and respawn loop
        return
    engine_started(sink, engine)
    try:
        cal = start_rates(sink, engine)
    except TTT_ERRORS as exc:  # no measurement: the planner keeps its priors
        cal = None
        sink.faults.append({"stage": "calibrate", "worker": wid, "error": repr(exc)})
    outbox.send(Ready(wid, engine.info, cal, *sink.take_counts()))
    while isinstance(msg := inbox.recv(), Chunk):  # until Stop
        start, compute0 = time.monotonic(), engine.compute_seconds()
        try:
            process_chunk(engine, sink, [tasks[i] for i in msg.tasks], msg.plans)
        except TTT_ERRORS as exc:
            outbox.send(ChunkError(msg.tasks, repr(exc)))
        outbox.send(ChunkDone({"loop_s": time.monotonic() - start,
                               "compute_s": engine.compute_seconds() - compute0},
                              {k: engine.info[k] for k in RESCORE_INFO if k in engine.info}))
