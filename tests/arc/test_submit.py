"""Tests of submission.arc.submit: atomic JSON writes, building and validating submission.json."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from submission.runtime import files as F
from submission.arc import submit as U
from submission.arc.grids import Pair, Task, as_grid

COUNTS = {"t1": 2, "t2": 1, "t3": 1}


# --- write_json_atomic -----------------------------------------------------------------------

def test_write_json_atomic_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "submission.json"
    F.write_json_atomic(path, {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert path.read_text() == '{"x":[1,2]}'
    path.write_text("old content that is much longer than the new one " * 100)
    F.write_json_atomic(path, {"y": 3})
    assert json.loads(path.read_text()) == {"y": 3}
    assert os.listdir(path.parent) == ["submission.json"]  # no temp file left behind


def test_write_json_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    F.write_json_atomic(path, [1])
    with pytest.raises(TypeError):
        F.write_json_atomic(path, {"bad": object()})
    with pytest.raises(ValueError):
        F.write_json_atomic(path, [float("nan")])

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(F.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        F.write_json_atomic(path, [2])
    assert json.loads(path.read_text()) == [1]
    assert os.listdir(tmp_path) == ["s.json"]


def test_write_json_atomic_fsyncs_before_replace(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = F.os.fsync, F.os.replace
    monkeypatch.setattr(F.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(F.os, "replace",
                        lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    F.write_json_atomic(tmp_path / "f.json", {})
    assert calls[:2] == ["fsync", "replace"]


# --- build_submission ------------------------------------------------------------------------

def test_build_submission_fills_placeholders():
    g1, g2, g3 = as_grid([[1, 2]]), as_grid([[3], [4]]), as_grid([[5]])
    answers = {"t1": [[g1, g2, g3]], "t3": [[]]}
    sub = U.build_submission(COUNTS, answers)
    assert list(sub) == ["t1", "t2", "t3"]
    assert sub["t1"] == [{"attempt_1": [[1, 2]], "attempt_2": [[3], [4]]},
                         {"attempt_1": [[0]], "attempt_2": [[0]]}]
    assert sub["t2"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
    assert sub["t3"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
    assert U.validate_submission(sub, COUNTS) == []
    assert json.loads(json.dumps(sub)) == sub
    assert all(type(v) is int for v in sub["t1"][0]["attempt_1"][0])


def test_build_submission_single_attempt_and_lists():
    sub = U.build_submission({"t": 1}, {"t": [[[[7, 7]]]]})
    assert sub == {"t": [{"attempt_1": [[7, 7]], "attempt_2": [[0]]}]}
    sub["t"][0]["attempt_2"][0][0] = 5
    assert U.PLACEHOLDER == [[0]]  # placeholders are copies


def test_build_submission_invalid_grids_and_extras_warn():
    answers = {"t": [[np.zeros((0, 0), dtype=np.uint8), as_grid([[3]])],
                     [np.full((2, 2), 1.5)]] + [[as_grid([[1]])]],
               "ghost": [[as_grid([[1]])]]}
    with pytest.warns(UserWarning) as record:
        sub = U.build_submission({"t": 2}, answers)
    messages = [str(w.message) for w in record]
    assert any("ghost" in m for m in messages)
    assert any("task t: 3 answer lists for 2 test inputs" in m for m in messages)
    assert any(m.startswith("task t test[0] attempt_1: invalid grid") for m in messages)
    assert any(m.startswith("task t test[1] attempt_1: invalid grid") for m in messages)
    assert sub == {"t": [{"attempt_1": [[0]], "attempt_2": [[3]]},
                         {"attempt_1": [[0]], "attempt_2": [[0]]}]}
    assert U.validate_submission(sub, {"t": 2}) == []


def test_challenge_counts():
    g = as_grid([[1]])
    tasks = {"b": Task("b", (Pair(g, g),), (g, g)), "a": Task("a", (Pair(g, g),), (g,))}
    assert U.challenge_counts(tasks) == {"b": 2, "a": 1}
    assert list(U.challenge_counts(tasks)) == ["b", "a"]


# --- validate_submission ---------------------------------------------------------------------

def good() -> dict:
    return U.build_submission(COUNTS, {})


def test_validate_top_level():
    assert U.validate_submission([], COUNTS) == [
        "top level: expected an object keyed by task id, got array"]
    assert U.validate_submission(good(), COUNTS) == []


def test_validate_submission_lists_every_problem():
    sub = good()
    del sub["t3"]
    sub["zzz"] = []
    sub["t1"] = [{"attempt_1": [[1]]},
                 {"attempt_1": [[1, 2], [3]], "attempt_2": [[12]]},
                 "oops"]
    sub["t2"] = {"attempt_1": [[1]], "attempt_2": [[1]]}
    problems = U.validate_submission(sub, COUNTS)
    assert problems == [
        "task t3: missing",
        "task zzz: not in the challenges (Kaggle rejects unknown task ids)",
        "task t1: 3 test entries, expected 2",
        "task t1 test[0]: missing attempt_2",
        "task t1 test[1] attempt_1: row 1: 1 cells, expected 2",
        "task t1 test[1] attempt_2: row 0 col 0: value 12 not in 0..9",
        "task t1 test[2]: expected an object with attempt_1 and attempt_2, got string",
        "task t2: expected a list of 1 test entries, got object",
    ]


@pytest.mark.parametrize("value, problem", [
    (None, "not a list of rows (got null)"),
    ([[1] * 31], "row 0: 31 cells, at most 30"),
    ([[0]] * 31, "31 rows, at most 30"),
    ([], "0 rows, at least 1"),
    ([[]], "row 0: 0 cells, at least 1"),
    ([[1.5]], "row 0 col 0: value 1.5 is not an integer (got number)"),
    ([[False]], "row 0 col 0: value False is not an integer (got boolean)"),
    ([["1"]], "row 0 col 0: value '1' is not an integer (got string)"),
])
def test_validate_grid_values(value, problem):
    sub = good()
    sub["t2"][0]["attempt_2"] = value
    assert U.validate_submission(sub, COUNTS) == [f"task t2 test[0] attempt_2: {problem}"]


def test_validate_real_task_id_message():
    sub = {"00576224": [{"attempt_1": [[1]]}] * 2}
    assert U.validate_submission(sub, {"00576224": 2}) == [
        "task 00576224 test[0]: missing attempt_2", "task 00576224 test[1]: missing attempt_2"]
