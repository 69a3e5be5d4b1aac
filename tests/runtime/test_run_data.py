"""The typed run data: task records, their test entries and candidates, run.json and its one
`backends` shape; the schema version, and the migrations that read what the code before the
version wrote (version 1: no schema key)."""

from __future__ import annotations

import json

import pytest

from submission.arc.grids import Task
from submission.arc.tasks import tasks_to_challenges
from submission.config import ANSWER_SECTIONS, Config
from submission.runtime.records import load_task_record, record_path, write_task_record, task_digest
from submission.runtime.run import Run
from submission.runtime.run_report import (
    IN_PROCESS,
    Backends,
    Kill,
    RunReport,
    WorkerInfo,
    migrate_run,
    migrate_run_v1,
)
from submission.runtime.schema import SCHEMA_KEY, SCHEMA_VERSION, SchemaError, migrate
from submission.runtime.task_record import (
    CandidateRecord,
    RecordError,
    TaskRecord,
    TestEntry,
    migrate_record,
)
from tests.helpers import random_task

CANDIDATE = {"grid": [[1, 2], [3, 4]], "count": 3, "views": [0, 2, 5], "best_logprob": -0.25,
             "rescore_logprobs": [-0.5, None], "from_base": False,
             "scores": {"vote": 3.0, "poe": -1.5, "mit": None}}


def today_record(task: Task, config: dict, model: dict | None = None) -> dict:
    """A record as the code before schema versions wrote it (pipeline.py, ttt_stage.py,
    sampling_stage.py, records.write_task_record): every key it can hold, no schema key."""
    return {
        "timing": {"ttt_s": 1.5, "sample_s": 0.75, "verify_s": 0.0, "rescore_s": 0.125,
                   "select_s": 0.25},
        "fallbacks": {"attempt_from_base": 1},
        "plan": {"max_samples": 8, "n_views": 4, "extra_views": 0, "ttt_s": 30.0,
                 "dfs_threshold": 0.1, "max_rescore": 3, "rescore_augmentations": 2,
                 "answer_s": 60.0, "expected_s": 40.0},
        "ttt_data": {"samples": 8, "too_long": 0},
        "ttt": {"steps": 4, "planned_steps": 4, "seconds": 1.25, "tokens": 900,
                "stopped_by_deadline": False},
        "views": 4,
        "chunk_search": {"paths": 10, "drafts_accepted": 3, "verify_s": 0.0},
        "lenient_parses": 1, "lenient_fixes": {"ragged": 1},
        "attempts": [[[[1, 2], [3, 4]], [[4]]]],
        "tests": [{"test_index": 0, "samples": 8, "rescored_pairs": 4, "unparsed": 1,
                   "candidates": [CANDIDATE, {**CANDIDATE, "grid": [[4]], "count": 1,
                                              "rescore_logprobs": None, "from_base": True}],
                   "policy": "vote", "attempts_by_policy": {"vote": [[[1, 2], [3, 4]]]}}],
        "lane": {"found": False, "programs": 12, "cpu_s": 0.5},
        "config": config, "model": model, "task_digest": task_digest(task), "task_id": task.id,
    }


def test_records_round_trip_through_their_types():
    task = random_task("aaaa0001", 1)
    rec = {**today_record(task, {"sampling": {"seed": 1}}), "a_new_stage": {"kept": True}}
    typed = TaskRecord.from_json(rec)
    assert typed.tests is not None and typed.tests[0].candidates is not None
    assert typed.tests[0].candidates[0] == CandidateRecord.from_json(CANDIDATE)
    assert typed.views == 4 and typed.extra == {"a_new_stage": {"kept": True}}
    assert typed.to_json() == rec
    assert TaskRecord.from_json(typed.to_json()) == typed
    assert CandidateRecord.from_json(CANDIDATE).to_json() == CANDIDATE
    lane_only = {"test_index": 1, "attempts_by_policy": {"lane-only": []}}  # lane/ensemble.py's
    assert TestEntry.from_json(lane_only).to_json() == lane_only
    bare = {"attempts": [[]], "timing": {}, "fallbacks": {}}  # the lane's answers alone
    assert TaskRecord.from_json(bare).to_json() == bare


@pytest.mark.parametrize("bad", [[], {"attempts": 5}, {"attempts": [], "tests": {}},
                                 {"attempts": [], "tests": [{"test_index": "0"}]},
                                 {"attempts": [], "views": "4"}, {"attempts": [], "timing": []}])
def test_a_record_of_other_types_is_a_record_error(bad):
    with pytest.raises(RecordError):
        TaskRecord.from_json(bad)


def test_schema_versions():
    assert migrate_record({"attempts": []}) == {"attempts": [], SCHEMA_KEY: SCHEMA_VERSION}
    assert migrate_record({"attempts": [], SCHEMA_KEY: SCHEMA_VERSION})[SCHEMA_KEY] == SCHEMA_VERSION
    for version in (SCHEMA_VERSION + 1, 0, "2", True, None):
        with pytest.raises(SchemaError):
            migrate_record({"attempts": [], SCHEMA_KEY: version})
    with pytest.raises(SchemaError, match="no migration"):
        migrate({"x": 1}, {}, "thing")


def write_tasks(tmp_path, tasks: dict[str, Task]):
    ch = tmp_path / "challenges.json"
    ch.write_text(json.dumps(tasks_to_challenges(tasks)))
    return ch


def make_run(tmp_path, ch) -> Run:
    return Run(ch, tmp_path / "submission.json", tmp_path / "work", Config())


def test_a_record_of_today_is_migrated_and_reused(tmp_path):
    task = random_task("aaaa0001", 1)
    ch = write_tasks(tmp_path, {task.id: task})
    config = Config().to_json(ANSWER_SECTIONS)
    path = record_path(tmp_path / "work", task.id)
    path.parent.mkdir(parents=True)
    old = today_record(task, config)
    path.write_text(json.dumps(old))
    state = make_run(tmp_path, ch)
    assert state.resumed == 1 and state.pending == []
    assert state.records[task.id] == TaskRecord.from_json(old)
    assert state.answers[task.id] == old["attempts"]
    assert json.loads((tmp_path / "submission.json").read_text())[task.id][0]["attempt_1"] == [[1, 2], [3, 4]]
    # written back now, it carries the version; read again, it is the same record
    write_task_record(tmp_path / "work", task, state.records[task.id], state.identity)
    stored = json.loads(path.read_text())
    assert stored == {SCHEMA_KEY: SCHEMA_VERSION, **old}
    assert load_task_record(tmp_path / "work", task, state.identity) == state.records[task.id]


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 99, "v3", -1])
def test_a_record_of_an_unknown_schema_version_is_redone(tmp_path, version):
    task = random_task("aaaa0001", 1)
    ch = write_tasks(tmp_path, {task.id: task})
    path = record_path(tmp_path / "work", task.id)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**today_record(task, Config().to_json(ANSWER_SECTIONS)),
                                SCHEMA_KEY: version}))
    state = make_run(tmp_path, ch)
    assert state.resumed == 0 and [t.id for t in state.pending] == [task.id]
    assert task.id not in state.answers


def test_a_stored_record_carries_the_schema_version(tmp_path):
    task = random_task("aaaa0001", 1)
    draft = {"attempts": [[[[3]]]], "timing": {}, "fallbacks": {}}
    identity = {"config": {"sampling": {}}, "model": None}
    stored = write_task_record(tmp_path, task, draft, identity)
    on_disk = json.loads(record_path(tmp_path, task.id).read_text())
    assert on_disk[SCHEMA_KEY] == SCHEMA_VERSION
    assert stored == TaskRecord.from_json(on_disk)
    assert draft["task_id"] == task.id and draft["model"] is None  # the run keeps it as stored


ENGINE = {"trainer_backend": "peft", "sampler_backend": "transformers", "format": "nvarc",
          "load_s": 2.0}
COMPUTE = {"loop_s": 10.0, "compute_s": 8.0, "host_share": 0.2}
CAL = {"source": "file", "train_tokens_per_s": 1000.0}


def test_both_run_modes_write_one_backends_shape():
    here = Backends.in_process(ENGINE, compute=COMPUTE, killed=(Kill(0, "watchdog: stall", ["t1"]),),
                               calibration=CAL, rates={"train": 1000.0})
    workers = Backends(workers=2, worker_info={"0": WorkerInfo(ENGINE, COMPUTE), "1": WorkerInfo(ENGINE)},
                       killed=(Kill(1, "worker died", []),), calibrations={"0": CAL, "1": CAL},
                       rates={"train": 1000.0}, ready=True)
    shape = set(Backends().to_json())
    assert set(here.to_json()) == set(workers.to_json()) == shape
    assert here.to_json()["worker_info"][IN_PROCESS] == {**ENGINE, "compute": COMPUTE}
    assert here.to_json()["workers"] == 0 and workers.to_json()["workers"] == 2
    for b in (here, workers, Backends(), Backends(workers=1, gpu_unusable="old driver", fatal="x")):
        assert Backends.from_json(b.to_json()) == b
    assert Backends.in_process(None) == Backends()  # nothing ran


def run_json_v1(backends: dict, calibration: dict | None = None) -> dict:
    """run.json as the code before schema versions wrote it (run.Run.report)."""
    return {"config": Config().to_dict(), "backends": backends, "seconds": 12.5,
            "challenges": "/data/challenges.json", "time_budget_s": 3600.0, "tasks": 1,
            "resumed": 0, "model": None, "workdir": "/work", "submission": "/submission.json",
            "scratch": "/work", "calibration": calibration,
            "memory_plan": {"skipped": "no NVIDIA GPU visible"}, "engine_kwargs": {"max_loras": 4},
            "fallbacks": {"attempt_from_base": 1}, "faults": [], "lenient_parses": 1,
            "per_task": {"aaaa0001": {k: v for k, v in today_record(
                random_task("aaaa0001", 1), {}).items() if k not in ("config", "model")}}}


def test_run_json_of_today_in_process_is_migrated_to_the_one_shape():
    kill = {"worker": 0, "reason": "watchdog: stall (stage 'sample')", "tasks": ["aaaa0001"]}
    old = run_json_v1({**ENGINE, "compute": COMPUTE, "killed": [kill], "rates": {"train": 900.0}},
                      calibration=CAL)
    new = migrate_run(old)
    assert new[SCHEMA_KEY] == SCHEMA_VERSION
    assert new["backends"] == Backends.in_process(ENGINE, compute=COMPUTE, killed=(Kill.from_json(kill),),
                                                  calibration=CAL, rates={"train": 900.0}).to_json()
    assert {k: v for k, v in new.items() if k not in ("backends", SCHEMA_KEY)} == {
        k: v for k, v in old.items() if k != "backends"}
    report = RunReport.from_json(new)
    assert report.to_json() == new  # what the run writes today reads back the same
    assert report.info == {"memory_plan": old["memory_plan"], "engine_kwargs": old["engine_kwargs"]}
    assert migrate_run(run_json_v1({}))["backends"] == Backends().to_json()  # no task ran


def test_run_json_of_today_with_workers_is_migrated_to_the_one_shape():
    old = run_json_v1({"workers": 2, "worker_info": {"0": {**ENGINE, "compute": COMPUTE},
                                                     "ready": True},
                       "killed": [], "calibrations": {"0": CAL}})
    new = migrate_run_v1(old)["backends"]
    assert new == {"workers": 2, "worker_info": {"0": {**ENGINE, "compute": COMPUTE}}, "killed": [],
                   "calibrations": {"0": CAL}, "ready": True}
    assert set(Backends.from_json(new).to_json()) == set(Backends().to_json())
    with pytest.raises(SchemaError):
        migrate_run({**old, SCHEMA_KEY: SCHEMA_VERSION + 1})


def test_run_report_is_written_by_the_typed_report(tmp_path):
    task = random_task("aaaa0001", 1)
    state = make_run(tmp_path, write_tasks(tmp_path, {task.id: task}))
    state.finish_task(task, {"attempts": [[[[5]]]], "timing": {"select_s": 0.5}, "fallbacks": {},
                             "lenient_parses": 2})
    report = state.report(Backends.in_process(ENGINE, compute=COMPUTE), 1.0)
    assert json.loads(json.dumps(report)) == json.loads((tmp_path / "work" / "run.json").read_text())
    assert report[SCHEMA_KEY] == SCHEMA_VERSION and report["lenient_parses"] == 2
    assert report["per_task"][task.id]["task_digest"] == task_digest(task)
    assert "config" not in report["per_task"][task.id] and "model" not in report["per_task"][task.id]
    assert RunReport.from_json(report).to_json() == report
