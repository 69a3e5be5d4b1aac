"""The typed task record: a finished task's answers and what produced them, as stored under
`workdir/tasks/` and listed in run.json's `per_task`.

`TaskRecord`, its `TestEntry`s (one per test input) and their `CandidateRecord`s (the pooled
answers, as `select.to_record` writes them) are frozen dataclasses with `to_json`/`from_json`;
`to_json(from_json(x))` gives back the JSON `x` (keys a stage adds that no field names are kept in
`extra`, so nothing a stage records is lost). The stages build a record as a plain dict while a
chunk runs (pipeline.py); it becomes a `TaskRecord` when the task finishes. `migrate_record` reads
a stored record of an older schema version (schema.py). Whether a stored record may be reused
(its grids, its identity) is decided by records.py and `submit.valid_record`, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from submission.errors import SubmissionError
from submission.runtime.schema import SCHEMA_KEY, migrate

JsonGrid = list[list[int]]
Attempts = list[list[JsonGrid]]  # per test input, at most two grids


class RecordError(SubmissionError):
    """A task record whose parts do not have the record's types (the task is redone)."""


def _take(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """obj[key] when it is a `kind` (None when absent or null); RecordError otherwise."""
    value = obj.get(key)
    if value is None or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        return value
    raise RecordError(f"{where}: {key} is {type(value).__name__}, expected {kind}")


def _set_fields(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dataclass's fields that are set (not None), in declaration order, `extra` left out."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if f.name not in ("extra", *skip) and getattr(obj, f.name) is not None}


def _extra(obj: Mapping[str, Any], cls: type) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in obj.items() if k not in known and k != SCHEMA_KEY}


@dataclass(frozen=True)
class CandidateRecord:
    """One pooled answer of a test input: its grid, votes, views and log-probabilities, and its
    score under each selection policy (`scores`, when listed)."""

    grid: JsonGrid | None
    count: int | None
    views: list[int] | None
    best_logprob: float | None
    rescore_logprobs: list[float | None] | None
    from_base: bool
    scores: dict[str, float | None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    ALWAYS = ("grid", "count", "views", "best_logprob", "rescore_logprobs", "from_base")

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.ALWAYS}
        if self.scores is not None:
            out["scores"] = self.scores
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, obj: Any) -> CandidateRecord:
        where = "candidate"
        if not isinstance(obj, Mapping):
            raise RecordError(f"{where}: not an object")
        return cls(grid=_take(obj, "grid", list, where), count=_take(obj, "count", int, where),
                   views=_take(obj, "views", list, where),
                   best_logprob=_take(obj, "best_logprob", (int, float), where),
                   rescore_logprobs=_take(obj, "rescore_logprobs", list, where),
                   from_base=bool(obj.get("from_base")), scores=_take(obj, "scores", dict, where),
                   extra=_extra(obj, cls))


@dataclass(frozen=True)
class TestEntry:
    """What one test input's selection saw: sample and candidate counts, the listed candidates,
    the policy used when it was not the configured one, and each policy's attempts."""

    __test__ = False  # a record type, not a test class for pytest

    test_index: int
    samples: int | None = None
    rescored_pairs: int | None = None
    unparsed: int | None = None
    candidates: tuple[CandidateRecord, ...] | None = None
    policy: str | None = None
    attempts_by_policy: dict[str, list[JsonGrid]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = _set_fields(self, skip=("candidates",))
        if self.candidates is not None:
            out["candidates"] = [c.to_json() for c in self.candidates]
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, obj: Any) -> TestEntry:
        if not isinstance(obj, Mapping) or type(obj.get("test_index")) is not int:
            raise RecordError("test entry: not an object with an integer test_index")
        where = f"test entry {obj['test_index']}"
        cands = _take(obj, "candidates", list, where)
        return cls(test_index=obj["test_index"], samples=_take(obj, "samples", int, where),
                   rescored_pairs=_take(obj, "rescored_pairs", int, where),
                   unparsed=_take(obj, "unparsed", int, where),
                   candidates=None if cands is None else tuple(map(CandidateRecord.from_json, cands)),
                   policy=_take(obj, "policy", str, where),
                   attempts_by_policy=_take(obj, "attempts_by_policy", dict, where),
                   extra=_extra(obj, cls))


IDENTITY_FIELDS = ("config", "model", "task_digest")  # written together by records.py


@dataclass(frozen=True)
class TaskRecord:
    """A finished task: its attempts, the test entries, the stages' timings, fallback counts and
    details (plan, TTT, views, lenient parses, the chunk's search, the lane's result) and, once
    stored, its identity (task id and digest, the answer-relevant config, the model)."""

    attempts: Attempts
    tests: tuple[TestEntry, ...] | None = None
    timing: dict[str, float] | None = None
    fallbacks: dict[str, int] | None = None
    plan: dict[str, Any] | None = None
    ttt: dict[str, Any] | None = None
    ttt_data: dict[str, Any] | None = None
    ttt_reused: bool | None = None
    views: int | None = None
    lenient_parses: int | None = None
    lenient_fixes: dict[str, int] | None = None
    chunk_search: dict[str, Any] | None = None
    lane: dict[str, Any] | None = None
    task_id: str | None = None
    task_digest: str | None = None
    config: dict[str, Any] | None = None
    model: Any = None  # modelfiles.model_identity: path and fingerprints (None: no model named)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record's JSON (without the schema version: the file or run.json carries it)."""
        out = _set_fields(self, skip=("tests", *IDENTITY_FIELDS))
        if self.tests is not None:
            out["tests"] = [t.to_json() for t in self.tests]
        stamped = self.task_digest is not None  # then the model is written even when None
        for k in IDENTITY_FIELDS:
            if stamped or getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, obj: Any) -> TaskRecord:
        """The record `obj` (of this schema version: see `migrate_record`) describes."""
        if not isinstance(obj, Mapping) or not isinstance(obj.get("attempts"), list):
            raise RecordError("task record: not an object with a list of attempts")
        w = f"task record {obj.get('task_id')!r}"
        tests = _take(obj, "tests", list, w)
        return cls(attempts=obj["attempts"],
                   tests=None if tests is None else tuple(map(TestEntry.from_json, tests)),
                   timing=_take(obj, "timing", dict, w), fallbacks=_take(obj, "fallbacks", dict, w),
                   plan=_take(obj, "plan", dict, w), ttt=_take(obj, "ttt", dict, w),
                   ttt_data=_take(obj, "ttt_data", dict, w),
                   ttt_reused=_take(obj, "ttt_reused", bool, w), views=_take(obj, "views", int, w),
                   lenient_parses=_take(obj, "lenient_parses", int, w),
                   lenient_fixes=_take(obj, "lenient_fixes", dict, w),
                   chunk_search=_take(obj, "chunk_search", dict, w), lane=_take(obj, "lane", dict, w),
                   task_id=_take(obj, "task_id", str, w), task_digest=_take(obj, "task_digest", str, w),
                   config=_take(obj, "config", dict, w), model=obj.get("model"),
                   extra=_extra(obj, cls))

    def stamped(self, task_id: str, task_digest: str, config: dict[str, Any],
                model: Any) -> TaskRecord:
        """This record with its identity set (what records.py compares before reusing it)."""
        return replace(self, task_id=task_id, task_digest=task_digest, config=config, model=model)


def migrate_record_v1(obj: dict[str, Any]) -> dict[str, Any]:
    """Version 1 (no schema key) -> 2: the record's keys are unchanged; only run.json's
    "backends" changed shape (run_report.py), so a version-1 record is read as it is."""
    return dict(obj)


RECORD_STEPS = {1: migrate_record_v1}


def migrate_record(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record's JSON brought to this schema version (SchemaError: a version this code
    does not know, e.g. one written by a newer release; the task is redone)."""
    return migrate(obj, RECORD_STEPS, "task record")


def as_record(record: TaskRecord | Mapping[str, Any]) -> TaskRecord:
    """`record` as a TaskRecord (a stage's dict is read with `from_json`)."""
    return record if isinstance(record, TaskRecord) else TaskRecord.from_json(record)
