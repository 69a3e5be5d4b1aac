"""The typed run report, `workdir/run.json`: what a run did, in one shape for both run modes.

`RunReport` holds the run's facts (config, time, counts, fallbacks, faults, the per-task records);
`Backends` what the engines did, the same whether the tasks ran in this process (one engine,
worker "0", `workers` 0) or in `budget.workers` worker processes: each engine's `WorkerInfo`, the
chunks killed (`Kill`), the calibrations, the planner's final rates. All are frozen dataclasses
with `to_json`/`from_json`; run.json carries the schema version (schema.py), and `migrate_run`
reads one of version 1, whose "backends" was an engine's info in process and this shape (with
"ready" among the workers) under `--workers`. This module runs nothing and writes no file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from submission.runtime.schema import SCHEMA_KEY, SCHEMA_VERSION, migrate
from submission.runtime.task_record import RecordError, TaskRecord

IN_PROCESS = "0"  # the worker id of the engine in the run's own process
PER_TASK_LEFT_OUT = ("config", "model")  # run.json's copies: the run's own, said once at its top


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RecordError(f"{what}: not an object")
    return value


@dataclass(frozen=True)
class Kill:
    """A chunk stopped by the supervisor or the watchdog: the worker, why, its tasks."""

    worker: int
    reason: str
    tasks: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"worker": self.worker, "reason": self.reason, "tasks": list(self.tasks)}

    @classmethod
    def from_json(cls, obj: Any) -> Kill:
        o = _obj(obj, "kill")
        return cls(worker=int(o.get("worker", 0)), reason=str(o.get("reason", "")),
                   tasks=list(o.get("tasks") or []))


@dataclass(frozen=True)
class WorkerInfo:
    """One engine's report: its own info (the backends it chose and why, its text format, load
    time, vLLM's start or loss, the re-scoring decisions) and its task loop's compute share."""

    engine: dict[str, Any]
    compute: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.engine, **({} if self.compute is None else {"compute": self.compute})}

    @classmethod
    def from_json(cls, obj: Any) -> WorkerInfo:
        o = dict(_obj(obj, "worker info"))
        compute = o.pop("compute", None)
        return cls(engine=o, compute=dict(compute) if isinstance(compute, Mapping) else None)


@dataclass(frozen=True)
class Backends:
    """What the engines did. `workers`: worker processes run (0: this process, or none ran);
    `worker_info`, `calibrations`: by worker id ("0" in process); `ready`: an engine started."""

    workers: int = 0
    worker_info: dict[str, WorkerInfo] = field(default_factory=dict)
    killed: tuple[Kill, ...] = ()
    calibrations: dict[str, dict[str, Any]] = field(default_factory=dict)
    rates: dict[str, float] | None = None
    ready: bool = False
    gpu_unusable: str | None = None  # why no worker could use its GPU
    fatal: str | None = None  # why no worker could start its engine

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "workers": self.workers, "worker_info": {k: w.to_json() for k, w in self.worker_info.items()},
            "killed": [k.to_json() for k in self.killed], "calibrations": dict(self.calibrations),
            "rates": self.rates, "ready": self.ready}
        out.update({k: v for k, v in (("gpu_unusable", self.gpu_unusable), ("fatal", self.fatal))
                    if v is not None})
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Backends:
        o = _obj(obj, "backends")
        rates = o.get("rates")
        return cls(workers=int(o.get("workers") or 0),
                   worker_info={str(k): WorkerInfo.from_json(v)
                                for k, v in _obj(o.get("worker_info") or {}, "worker_info").items()},
                   killed=tuple(Kill.from_json(k) for k in o.get("killed") or []),
                   calibrations={str(k): dict(v) for k, v in
                                 _obj(o.get("calibrations") or {}, "calibrations").items()},
                   rates=dict(rates) if isinstance(rates, Mapping) else None,
                   ready=bool(o.get("ready")), gpu_unusable=o.get("gpu_unusable"),
                   fatal=o.get("fatal"))

    @classmethod
    def in_process(cls, engine_info: Mapping[str, Any] | None, *, compute: dict[str, float] | None = None,
                   killed: tuple[Kill, ...] = (), calibration: dict[str, Any] | None = None,
                   rates: dict[str, float] | None = None) -> Backends:
        """The run's own engine as worker "0" (no engine: nothing ran)."""
        if engine_info is None:
            return cls(killed=killed)
        return cls(worker_info={IN_PROCESS: WorkerInfo(dict(engine_info), compute)}, killed=killed,
                   calibrations={IN_PROCESS: calibration} if calibration else {}, rates=rates,
                   ready=True)


# run.json's keys in the order they are written; `info` (memory plan, engine arguments, the lane,
# an interruption) goes between "calibration" and "fallbacks"
RUN_FIELDS = ("config", "backends", "seconds", "challenges", "time_budget_s", "tasks", "resumed",
              "model", "workdir", "submission", "scratch", "calibration")


@dataclass(frozen=True)
class RunReport:
    """run.json: the config, backends, time, task counts, where things are, the calibration used,
    what the run added on the way (`info`), fallbacks, faults and the per-task records."""

    config: dict[str, Any]
    backends: Backends
    seconds: float
    challenges: str
    time_budget_s: float
    tasks: int
    resumed: int
    model: Any
    workdir: str
    submission: str
    scratch: str
    calibration: dict[str, Any] | None
    info: dict[str, Any]
    fallbacks: dict[str, int]
    faults: list[dict[str, Any]]
    per_task: dict[str, TaskRecord]

    def to_json(self) -> dict[str, Any]:
        head = {k: getattr(self, k) for k in RUN_FIELDS}
        head["backends"] = self.backends.to_json()
        per_task = {k: {f: v for f, v in r.to_json().items() if f not in PER_TASK_LEFT_OUT}
                    for k, r in self.per_task.items()}
        return {SCHEMA_KEY: SCHEMA_VERSION, **head, **self.info, "fallbacks": dict(self.fallbacks),
                "faults": list(self.faults), "lenient_parses": self.lenient_parses,
                "per_task": per_task}

    @property
    def lenient_parses(self) -> int:
        return sum(r.lenient_parses or 0 for r in self.per_task.values())

    @classmethod
    def from_json(cls, obj: Any) -> RunReport:
        """The report `obj` (run.json of this schema version: see `migrate_run`) describes."""
        o = _obj(obj, "run.json")
        rest = {k: v for k, v in o.items() if k not in (*RUN_FIELDS, SCHEMA_KEY, "fallbacks",
                                                         "faults", "lenient_parses", "per_task")}
        head: dict[str, Any] = {k: o.get(k) for k in RUN_FIELDS if k != "backends"}
        return cls(**head, backends=Backends.from_json(o.get("backends") or {}), info=rest,
                   fallbacks=dict(o.get("fallbacks") or {}), faults=list(o.get("faults") or []),
                   per_task={str(k): TaskRecord.from_json(v)
                             for k, v in _obj(o.get("per_task") or {}, "per_task").items()})


def migrate_run_v1(obj: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: "backends" becomes one shape. In process it was the engine's info with
    "killed", "rates" and "compute" among the engine's keys: that engine becomes worker "0" (the
    run's calibration its calibration). Under `--workers` it had "ready" among the worker infos:
    it moves up beside them. Anything else about the report is unchanged."""
    out = dict(obj)
    b = out.get("backends")
    if not isinstance(b, dict):
        return out
    b = dict(b)
    if "workers" in b or "worker_info" in b:  # the workers' shape (an engine's info has neither)
        infos = dict(b.get("worker_info") or {})
        b["ready"] = bool(infos.pop("ready", False))
        out["backends"] = {**b, "worker_info": infos}
        return out
    killed, rates, cal = b.pop("killed", []), b.pop("rates", None), out.get("calibration")
    out["backends"] = {"workers": 0, "worker_info": {IN_PROCESS: b} if b else {}, "killed": killed,
                       "calibrations": {IN_PROCESS: cal} if b and isinstance(cal, dict) and cal else {},
                       "rates": rates, "ready": bool(b)}
    return out


RUN_STEPS = {1: migrate_run_v1}


def migrate_run(obj: Mapping[str, Any]) -> dict[str, Any]:
    """run.json's JSON brought to this schema version (SchemaError: an unknown version)."""
    return migrate(obj, RUN_STEPS, "run.json")
