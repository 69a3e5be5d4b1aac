"""The schema version of what a run writes (task records, run.json) and how an older one is read.

Every file the run writes for a later reader carries `SCHEMA_KEY: SCHEMA_VERSION`. A file without
the key was written before versions existed: version 1. `migrate` brings a file of an older
version up to this one, one named step per version (registered by the modules that own the
types: task_record.py, run_report.py); a file of a version this code does not know raises
`SchemaError`, and its reader redoes or skips it. This module holds no record type itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from submission.errors import SubmissionError

SCHEMA_KEY = "schema_version"
SCHEMA_VERSION = 2  # 1: before the key existed (run.json's "backends" had two shapes)
FIRST_VERSION = 1  # what a file without SCHEMA_KEY is

Step = Callable[[dict[str, Any]], dict[str, Any]]  # version n -> n + 1, on a copy


class SchemaError(SubmissionError):
    """A record or run.json of a schema version this code cannot read (newer, or not a number)."""


def version_of(obj: Mapping[str, Any]) -> int:
    """The schema version `obj` declares (FIRST_VERSION when it declares none); SchemaError when
    the declared value is not a positive integer."""
    version = obj.get(SCHEMA_KEY, FIRST_VERSION)
    if type(version) is not int or version < FIRST_VERSION:
        raise SchemaError(f"{SCHEMA_KEY} {version!r} is not a schema version")
    return version


def migrate(obj: Mapping[str, Any], steps: Mapping[int, Step], what: str) -> dict[str, Any]:
    """`obj` (a `what`: "task record", "run.json") brought up to SCHEMA_VERSION by `steps` (from
    version n to n + 1, keyed by n), with SCHEMA_KEY set; `obj` itself is not changed.
    SchemaError for a version newer than this code or a missing step."""
    version = version_of(obj)
    if version > SCHEMA_VERSION:
        raise SchemaError(f"{what} of schema version {version}: this code reads versions up to "
                          f"{SCHEMA_VERSION}")
    out = dict(obj)
    for n in range(version, SCHEMA_VERSION):
        if n not in steps:
            raise SchemaError(f"{what}: no migration from schema version {n}")
        out = steps[n](out)
    out[SCHEMA_KEY] = SCHEMA_VERSION
    return out
