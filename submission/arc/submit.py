"""Build, check and atomically write the Kaggle `submission.json`.

`build_submission` always yields a file Kaggle accepts (placeholders fill every gap);
`validate_submission` lists every problem of an existing one. This module does not solve tasks
and does not score (see scoring.py).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from submission.arc import tasks as _tasks
from submission.errors import InputError
from submission.arc.grids import Grid, Task, grid_to_list

PLACEHOLDER = [[0]]
ATTEMPT_KEYS = ("attempt_1", "attempt_2")  # an entry's keys, in order (scoring.py reads them too)


def _attempt(grid: object, where: str) -> list[list[int]]:
    """A JSON grid for one attempt; PLACEHOLDER (with a warning) if it is not a valid grid."""
    if grid is None:
        return [row[:] for row in PLACEHOLDER]
    try:
        if isinstance(grid, np.ndarray):
            if grid.ndim != 2 or grid.dtype.kind not in "iu":
                raise InputError(f"array of shape {grid.shape} and dtype {grid.dtype}")
            grid = grid_to_list(grid)
        _tasks.validate_grid(grid)
        assert isinstance(grid, list)  # validate_grid accepts lists of rows only
    except InputError as err:
        warnings.warn(f"{where}: invalid grid replaced by a placeholder: {err}", stacklevel=3)
        return [row[:] for row in PLACEHOLDER]
    return [list(row) for row in grid]


def build_submission(task_ids_and_counts: Mapping[str, int],
                     answers: Mapping[str, Sequence[Sequence[Grid]]]) -> dict:
    """The submission object: per task (in the given order) and test input, the first two
    answer grids as attempt_1/attempt_2; PLACEHOLDER fills any missing task, input or attempt."""
    unknown = [t for t in answers if t not in task_ids_and_counts]
    if unknown:
        warnings.warn(f"answers for {len(unknown)} task id(s) not in the challenges are left "
                      f"out: {', '.join(map(str, unknown[:5]))}", stacklevel=2)
    submission: dict[str, list[dict[str, list[list[int]]]]] = {}
    for tid, count in task_ids_and_counts.items():
        per_input = list(answers.get(tid) or [])
        if len(per_input) > count:
            warnings.warn(f"task {tid}: {len(per_input)} answer lists for {count} test inputs; "
                          f"the extra ones are left out", stacklevel=2)
        entries = []
        for i in range(count):
            grids = list(per_input[i]) if i < len(per_input) and per_input[i] is not None else []
            entries.append({key: _attempt(grids[k] if k < len(grids) else None,
                                          f"task {tid} test[{i}] {key}")
                            for k, key in enumerate(ATTEMPT_KEYS)})
        submission[tid] = entries
    return submission


def validate_submission(submission: object, challenges: Mapping[str, int]) -> list[str]:
    """Every problem Kaggle would reject (empty list: fine). `challenges`: task id -> test count."""
    if not isinstance(submission, dict):
        got = _tasks.json_kind(submission)
        return [f"top level: expected an object keyed by task id, got {got}"]
    problems = [f"task {tid}: missing" for tid in challenges if tid not in submission]
    problems += [f"task {tid}: not in the challenges (Kaggle rejects unknown task ids)"
                 for tid in submission if tid not in challenges]
    for tid, count in challenges.items():
        if tid not in submission:
            continue
        entries = submission[tid]
        if not isinstance(entries, list):
            problems.append(f"task {tid}: expected a list of {count} test entries, "
                            f"got {_tasks.json_kind(entries)}")
            continue
        if len(entries) != count:
            problems.append(f"task {tid}: {len(entries)} test entries, expected {count}")
        for i, entry in enumerate(entries):
            where = f"task {tid} test[{i}]"
            if not isinstance(entry, dict):
                problems.append(f"{where}: expected an object with attempt_1 and attempt_2, "
                                f"got {_tasks.json_kind(entry)}")
                continue
            for key in ATTEMPT_KEYS:
                if key not in entry:
                    problems.append(f"{where}: missing {key}")
                    continue
                try:
                    _tasks.validate_grid(entry[key])
                except InputError as err:
                    problems.append(f"{where} {key}: {err.detail}")
    return problems


def challenge_counts(tasks: Mapping[str, Task]) -> dict[str, int]:
    """Task id -> number of test inputs, in the given order."""
    return {tid: task.n_test for tid, task in tasks.items()}


def valid_record(rec: object, n_test: int) -> bool:
    """Whether a per-task record read back from disk can be reused for a task with `n_test` test
    inputs: an object whose "attempts" holds one list of at most two valid grids per test input,
    whose optional sections have the types the run writes, and which writes back as strict JSON.
    Anything else (`[]`, `{"attempts": 5}`, a wrong count, a bad grid) is False: redo the task."""
    if not isinstance(rec, dict) or type(n_test) is not int or n_test < 1:
        return False
    attempts = rec.get("attempts")
    if not isinstance(attempts, list) or len(attempts) != n_test:
        return False
    if not all(isinstance(a, list) and len(a) <= len(ATTEMPT_KEYS) and all(map(_is_grid, a))
               for a in attempts):
        return False
    for key in ("timing", "fallbacks", "plan", "ttt", "ttt_data"):
        if rec.get(key) is not None and not isinstance(rec[key], dict):
            return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
               for key in ("timing", "fallbacks") for v in (rec.get(key) or {}).values()):
        return False
    if "views" in rec and not (type(rec["views"]) is int and rec["views"] >= 0):
        return False
    tests = rec.get("tests", [])
    if not isinstance(tests, list) or not all(_valid_test_entry(t, n_test) for t in tests):
        return False
    try:
        json.dumps(rec, allow_nan=False)  # run.json must be able to hold it
    except (ValueError, TypeError, RecursionError):
        return False
    return True


def _is_grid(value: object) -> bool:
    try:
        _tasks.validate_grid(value)
    except InputError:
        return False
    return True


def _valid_test_entry(entry: object, n_test: int) -> bool:
    if not isinstance(entry, dict):
        return False
    index = entry.get("test_index")
    if type(index) is not int or not 0 <= index < n_test:
        return False
    cands = entry.get("candidates", [])
    if not isinstance(cands, list) or not all(isinstance(c, dict) for c in cands):
        return False
    by_policy = entry.get("attempts_by_policy", {})
    return isinstance(by_policy, dict) and all(
        isinstance(a, list) and len(a) <= len(ATTEMPT_KEYS) and all(map(_is_grid, a))
        for a in by_policy.values())


def read_record(path: str | Path, n_test: int) -> dict | None:
    """A stored per-task record if it can be read, parsed and passes `valid_record`; else None
    (missing, unreadable, not JSON, nested too deeply, wrong types: the task is redone)."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError covers bad UTF-8 and bad JSON
        return None
    return rec if valid_record(rec, n_test) else None
