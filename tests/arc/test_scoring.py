"""Tests of submission.arc.scoring: the ARC Prize metric, the report, and the file loaders."""

from __future__ import annotations

import json
import math

import pytest

from submission.arc import scoring as S
from submission.errors import InputError
from submission.arc.grids import as_grid, grid_to_list

A1, A2, B1 = [[1, 2], [3, 4]], [[5]], [[0, 0, 7]]
SOLUTIONS = {"A": [as_grid(A1), as_grid(A2)], "B": [as_grid(B1)]}
WRONG = [[9]]


def entry(a1, a2=None) -> dict:
    return {"attempt_1": a1, "attempt_2": WRONG if a2 is None else a2}


def test_perfect_submission_scores_one():
    sub = {tid: [entry(grid_to_list(g)) for g in grids] for tid, grids in SOLUTIONS.items()}
    report = S.score_submission(sub, SOLUTIONS)
    assert report.score_task_mean == 1.0 and report.score_output_mean == 1.0
    assert (report.tasks, report.test_outputs, report.missing) == (2, 3, ())
    assert report.per_task == {"A": 1.0, "B": 1.0}


def test_task_mean_differs_from_output_mean():
    sub = {"A": [entry(A1), entry(WRONG)], "B": [entry(B1)]}
    report = S.score_submission(sub, SOLUTIONS)
    assert report.per_task == {"A": 0.5, "B": 1.0}
    assert report.score_task_mean == 0.75
    assert math.isclose(report.score_output_mean, 2 / 3)


def test_second_attempt_counts():
    sub = {"A": [entry(WRONG, A1), entry(A2, A2)], "B": [entry([[0, 0, 6]], B1)]}
    assert S.score_submission(sub, SOLUTIONS).score_output_mean == 1.0


def test_shape_mismatch_and_near_misses_are_wrong():
    sub = {"A": [entry([[1, 2, 3, 4]], [[1, 2], [3, 4], [0, 0]]), entry([[5, 5]])],
           "B": [entry([[0], [0], [7]], [[0, 0, 8]])]}
    report = S.score_submission(sub, SOLUTIONS)
    assert report.score_task_mean == 0.0 and report.score_output_mean == 0.0


def test_missing_task_scores_zero_and_is_listed():
    report = S.score_submission({"B": [entry(B1)], "extra": [entry([[1]])]}, SOLUTIONS)
    assert report.missing == ("A",)
    assert report.per_task == {"A": 0.0, "B": 1.0}
    assert report.tasks == 2 and report.test_outputs == 3
    assert report.score_task_mean == 0.5 and math.isclose(report.score_output_mean, 1 / 3)


@pytest.mark.parametrize("bad_a, expected", [
    (None, 0.0), ("nope", 0.0), (3, 0.0), ([], 0.0), ({"0": entry(A1)}, 0.0),
    ([None, entry(A2)], 0.5),
    ([{"attempt_2": [[1, 2], [3, 4, 5]]}, entry(A2)], 0.5),
    ([{"attempt_1": "x", "attempt_2": [[True]]}, [A2]], 0.0),
    ([{"attempt_1": [[1.0, 2], [3, 4]]}], 0.0),
    ([entry([[12]], [[-1]]), entry(A2)], 0.5),
    ([entry(A1)], 0.5),  # a short list: the absent test[1] is wrong
])
def test_malformed_entries_count_wrong_without_crashing(bad_a, expected):
    report = S.score_submission({"A": bad_a, "B": [entry(B1)]}, SOLUTIONS)
    assert report.per_task == {"A": expected, "B": 1.0}
    assert report.missing == ()


def test_missing_attempt_key_still_scores_other_attempt():
    report = S.score_submission({"A": [{"attempt_2": A1}, {"attempt_1": A2}], "B": []},
                                SOLUTIONS)
    assert report.per_task == {"A": 1.0, "B": 0.0} and report.missing == ()


def test_not_a_dict_submission_scores_zero():
    report = S.score_submission([1, 2], SOLUTIONS)
    assert report.score_task_mean == 0.0 and report.missing == ("A", "B")


def test_empty_solutions():
    report = S.score_submission({}, {})
    assert (report.tasks, report.test_outputs, report.score_task_mean) == (0, 0, 0.0)


def test_to_json():
    report = S.score_submission({"B": [entry(B1)]}, SOLUTIONS)
    data = report.to_json()
    assert set(data) == {"tasks", "test_outputs", "score_task_mean", "score_output_mean",
                         "per_task", "missing"}
    assert data["missing"] == ["A"] and data["per_task"] == {"A": 0.0, "B": 1.0}
    assert json.loads(json.dumps(data)) == data


def test_load_solutions(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"A": [A1, A2], "B": [B1]}))
    sols = S.load_solutions(path)
    assert list(sols) == ["A", "B"] and sols["A"][0].tolist() == A1
    sub = {"A": [entry(A1), entry(A2)], "B": [entry(B1)]}
    assert S.score_submission(sub, sols).score_task_mean == 1.0


@pytest.mark.parametrize("content, task, field, detail", [
    ('{"A": [[[1]], [[1, 2], [3]]]}', "A", "solutions[1]", "row 1: 1 cells, expected 2"),
    ('{"A": []}', "A", "solutions", "expected a non-empty list of grids, got empty list"),
    ('{"A": {"x": 1}}', "A", "solutions", "expected a non-empty list of grids, got object"),
    ('[1]', None, None, "top level is array, expected an object keyed by task id"),
])
def test_load_solutions_errors(tmp_path, content, task, field, detail):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        S.load_solutions(path)
    err = info.value
    assert (err.file, err.task, err.field, err.detail) == (str(path), task, field, detail)


def test_load_submission(tmp_path):
    path = tmp_path / "submission.json"
    path.write_text(json.dumps({"A": [entry(A1)]}))
    assert S.load_submission(path) == {"A": [entry(A1)]}
    path.write_text("[]")
    with pytest.raises(InputError, match="top level is array"):
        S.load_submission(path)
    path.write_text("{oops")
    with pytest.raises(InputError, match=r"submission\.json.*invalid JSON at line 1 col 2"):
        S.load_submission(path)
    with pytest.raises(InputError, match="file not found"):
        S.load_submission(tmp_path / "none.json")


@pytest.mark.parametrize("text", ['{"A": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                  '{"A": [[[' + "1" * 5000 + "]]]}"])
def test_hostile_json_names_the_file(tmp_path, text):
    path = tmp_path / "hostile.json"
    path.write_text(text)
    for load in (S.load_solutions, S.load_submission):
        with pytest.raises(InputError) as info:
            load(path)
        assert info.value.file == str(path) and "invalid JSON" in info.value.detail
