"""Per-task record files: the resume points of a run (`workdir/tasks/<safe name>.json`).

A record holds a task's answers and what produced them. It is reused on a rerun only when it is
well-formed (`submit.valid_record`), belongs to the same task id, and was made under the same
identity: the answer-relevant config sections and the model (its path and a fingerprint of its
config and weight files). Anything else is redone, never trusted and never a traceback. File names
come from `paths.task_file_name`, so no task id can reach outside the workdir. This module neither
runs tasks nor writes submission.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .paths import task_file_name
from .files import write_json_atomic
from .submit import read_record

__all__ = ["load_task_record", "record_path", "store_record", "write_task_record"]

IDENTITY_KEY = "config"  # the key older records used for the config part of the identity


def record_path(workdir: str | Path, task_id: str) -> Path:
    return Path(workdir) / "tasks" / f"{task_file_name(task_id)}.json"


def write_task_record(workdir: str | Path, task_id: str, record: dict[str, Any],
                      identity: dict[str, Any]) -> None:
    """Store a finished task's record atomically (OSError on a full disk: the caller decides)."""
    record[IDENTITY_KEY] = identity["config"]
    record["model"] = identity.get("model")
    record["task_id"] = task_id
    write_json_atomic(record_path(workdir, task_id), record)


def load_task_record(workdir: str | Path, task_id: str, identity: dict[str, Any],
                     n_test: int) -> dict[str, Any] | None:
    """The stored record of `task_id` if it can be reused under `identity`, else None."""
    rec = read_record(record_path(workdir, task_id), n_test)
    if rec is None or rec.get("task_id", task_id) != task_id:
        return None
    if rec.get(IDENTITY_KEY) != identity["config"] or rec.get("model") != identity.get("model"):
        return None
    return rec


def store_record(sink: Any, task_id: str, record: dict[str, Any]) -> bool:
    """Write the record of a finished task for `sink` (a run or a worker: `workdir`, `identity`,
    `faults`, `fallbacks`). A failure (a full disk) costs the resume point only: it is recorded
    under faults and the answers still go out. Returns whether the record was written."""
    from .faults import inject

    try:
        inject(task_id, "record", sink.workdir)
        write_task_record(sink.workdir, task_id, record, sink.identity)
    except OSError as exc:
        sink.faults.append({"task": task_id, "stage": "record", "error": repr(exc)})
        sink.fallbacks["record_write_failed"] += 1
        return False
    return True
