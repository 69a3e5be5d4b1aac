"""The messages between the supervisor (runtime/workers.py) and a worker process (worker/main.py),
one frozen dataclass per kind; the receiver dispatches on the type. They cross a multiprocessing
Connection, so they hold plain data only (they are pickled). Torch-free: the supervisor imports it.

Supervisor -> worker: `Chunk` (tasks to run), `Stop`. Worker -> supervisor: `Unusable` or `Fatal`
(and the worker exits), else `Ready`, then per chunk `Progress` heartbeats, a `TaskDone` per
finished task, a `ChunkError` if the chunk failed, and `ChunkDone`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from submission.runtime.budget import TaskPlan
from submission.runtime.task_record import TaskRecord

Fallbacks = dict[str, int]  # fallback counts since the worker's last message
Faults = list[dict[str, Any]]  # faults since the worker's last message


@dataclass(frozen=True)
class Chunk:
    """Run these tasks (ids, in order) under their plans."""

    tasks: list[str]
    plans: dict[str, TaskPlan]


@dataclass(frozen=True)
class Stop:
    """No more work: the worker returns."""


@dataclass(frozen=True)
class Unusable:
    """The GPU cannot be used by torch (why); nothing trains on the CPU instead."""

    reason: str


@dataclass(frozen=True)
class Fatal:
    """The engine could not start: the exception's repr, and its message when it is one of ours."""

    error: str
    message: str | None


@dataclass(frozen=True)
class Ready:
    """The engine is built: its info, the measured or given rates (None: not measured)."""

    wid: int
    engine_info: dict[str, Any]
    calibration: dict[str, Any] | None
    fallbacks: Fallbacks
    faults: Faults


@dataclass(frozen=True)
class Progress:
    """A heartbeat from inside `stage` ('ttt' or 'rescore' of a task, 'sample' of the chunk)."""

    stage: str
    task_id: str | None


@dataclass(frozen=True)
class TaskDone:
    """A task finished: its record (also stored on disk by the worker)."""

    task_id: str
    record: TaskRecord
    fallbacks: Fallbacks
    faults: Faults


@dataclass(frozen=True)
class ChunkError:
    """The chunk stopped on an error (repr) before finishing `tasks`."""

    tasks: list[str]
    error: str


@dataclass(frozen=True)
class ChunkDone:
    """The chunk is over: its loop and compute seconds, and the re-scoring decisions so far."""

    compute: dict[str, float]
    rescore_info: dict[str, Any]


ToWorker = Chunk | Stop
FromWorker = Unusable | Fatal | Ready | Progress | TaskDone | ChunkError | ChunkDone
