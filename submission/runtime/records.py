"""Per-task record files: the resume points of a run (`workdir/tasks/<safe name>.json`).

A record holds a task's answers and what produced them. It is reused on a rerun only when it is
well-formed (`submit.valid_record`), belongs to the same task id, and was made under the same
identity: the answer-relevant config sections, the model (its path and a fingerprint of its
config and weight files) and the task's content (`task_digest`: a task whose grids changed under
the same id is redone). A record of an older schema version is read through its migration
(task_record.migrate_record); one of an unknown (newer) version, like anything else, is redone,
never trusted and never a traceback. File names come from `paths.task_file_name`, so no task id
can reach outside the workdir. This module neither runs tasks nor writes submission.json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from submission.arc.grids import Task, grid_to_list
from submission.config import upgrade_json
from submission.runtime.paths import task_file_name
from submission.runtime.files import write_json_atomic
from submission.runtime.schema import SCHEMA_KEY, SCHEMA_VERSION, SchemaError
from submission.runtime.task_record import RecordError, TaskRecord, migrate_record
from submission.arc.submit import read_record
from submission.events import RECORD_WRITE_FAILED

__all__ = ["identity_mismatch", "load_task_record", "record_path", "store_record", "task_digest",
           "write_task_record"]

IDENTITY_KEY = "config"  # the key older records used for the config part of the identity
IDENTITY_PARTS = {IDENTITY_KEY: "config", "model": "model", "task_digest": "task"}  # key: what differs


def task_digest(task: Task) -> str:
    """sha256 hex of a task's content: its demonstration pairs and test inputs, as canonical JSON
    (test outputs are left out: answers do not depend on them)."""
    content = {"train": [[grid_to_list(p.input), grid_to_list(p.output)] for p in task.train],
               "test": [grid_to_list(g) for g in task.test_inputs]}
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()


def identity_mismatch(rec: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    """What differs between a record's identity and `want` (keys of IDENTITY_PARTS; a key left
    out of `want` is not compared): [] when the record belongs to it, else e.g. ["model"]. A
    config stored before the LoRA tables compares in today's layout (config.upgrade_json)."""
    def part(d: Mapping[str, Any], k: str) -> Any:
        return upgrade_json(d.get(k)) if k == IDENTITY_KEY else d.get(k)

    return [IDENTITY_PARTS[k] for k in IDENTITY_PARTS if k in want and part(rec, k) != part(want, k)]


def record_path(workdir: str | Path, task_id: str) -> Path:
    return Path(workdir) / "tasks" / f"{task_file_name(task_id)}.json"


def write_task_record(workdir: str | Path, task: Task, record: TaskRecord | dict[str, Any],
                      identity: dict[str, Any]) -> TaskRecord:
    """Store a finished task's record atomically, with its identity and the schema version, and
    return it as stored (OSError on a full disk: the caller decides). A stage's dict gets the
    identity keys too (the run keeps it as it was stored)."""
    digest = task_digest(task)
    if isinstance(record, dict):
        record.update({IDENTITY_KEY: identity["config"], "model": identity.get("model"),
                       "task_digest": digest, "task_id": task.id})
        stored = TaskRecord.from_json(record)
    else:
        stored = record.stamped(task.id, digest, identity["config"], identity.get("model"))
    write_json_atomic(record_path(workdir, task.id), {SCHEMA_KEY: SCHEMA_VERSION, **stored.to_json()})
    return stored


def load_task_record(workdir: str | Path, task: Task, identity: dict[str, Any]
                     ) -> TaskRecord | None:
    """The stored record of `task` if it can be reused under `identity` (a record of an older
    schema version is migrated first), else None: the task is redone."""
    raw = read_record(record_path(workdir, task.id), task.n_test)
    if raw is None:
        return None
    try:
        rec = migrate_record(raw)
        typed = TaskRecord.from_json(rec)
    except (SchemaError, RecordError):
        return None
    if rec.get("task_id", task.id) != task.id:
        return None
    want = {IDENTITY_KEY: identity["config"], "model": identity.get("model"),
            "task_digest": task_digest(task)}
    return None if identity_mismatch(rec, want) else typed


def store_record(sink: Any, task: Task, record: TaskRecord | dict[str, Any]) -> bool:
    """Write the record of a finished task for `sink` (a run or a worker: `workdir`, `identity`,
    `faults`, `fallbacks`). A failure (a full disk) costs the resume point only: it is recorded
    under faults and the answers still go out. Returns whether the record was written."""
    from submission.runtime.faults import inject

    try:
        inject(task.id, "record", sink.workdir)
        write_task_record(sink.workdir, task, record, sink.identity)
    except OSError as exc:
        sink.faults.append({"task": task.id, "stage": "record", "error": repr(exc)})
        sink.fallbacks[RECORD_WRITE_FAILED] += 1
        return False
    return True
