"""What every stage of a chunk reports to and shares: the `Sink` that takes each finished task's
answers, heartbeats and faults (the run in this process, or a worker's pipe to the supervisor),
a fallback counted in the sink and the task's record alike, and each task's own random stream per
stage, independent of processing order. This module runs no stage.
"""

from __future__ import annotations

import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from submission.config import Config
from submission import events as ev
from submission.arc.grids import Task


class Sink(Protocol):
    cfg: Config
    workdir: Path  # small files: per-task records, fault markers
    identity: dict[str, Any]  # answer-relevant config and the model (what a stored result needs)
    scratch: Path  # large files: adapters (deleted once their task is answered)
    all_policies: bool
    fallbacks: Counter
    faults: list[dict[str, Any]]

    def progress(self, stage: str, task_id: str | None) -> None:
        """Heartbeat: work of `stage` ('ttt' of a task, 'sample', 'rescore' of a task) progressed."""

    def finish_task(self, task: Task, record: dict[str, Any]) -> None:
        """Deliver the task's answers; a failure to store its record is recorded, not raised."""


def task_rng(seed: int, task_id: str, stage: str) -> np.random.Generator:
    """An explicit, reproducible stream per (seed, task, stage), independent of processing order."""
    key = task_id.encode("utf-8", "surrogatepass")  # any JSON key, lone surrogates included
    return np.random.default_rng([seed, zlib.crc32(key), zlib.crc32(stage.encode())])


def count_fallback(state: Sink, rec: dict[str, Any], name: str) -> None:
    """One `name` fallback, counted in the run's fallbacks and in the task's record."""
    state.fallbacks[name] += 1
    rec["fallbacks"][ev.check(name)] = rec["fallbacks"].get(name, 0) + 1
