"""Score a Kaggle `submission.json` against known solutions, the way the ARC Prize does.

A test output counts as solved when attempt_1 or attempt_2 equals the truth exactly (shape and
cells). The official score is the mean over tasks of the solved fraction of the task's outputs;
the report also gives solved outputs / all outputs. Scoring never raises on a malformed
submission entry (it counts as wrong); checking the format is submit.validate_submission's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from submission.errors import InputError
from submission.arc.grids import Grid, grids_equal
from submission.arc.submit import ATTEMPT_KEYS
from submission.arc.tasks import json_kind, read_json_object, validate_grid


@dataclass(frozen=True)
class ScoreReport:
    """Scores of one submission; `missing` lists task ids the submission lacks (scored 0)."""

    tasks: int
    test_outputs: int
    score_task_mean: float
    score_output_mean: float
    per_task: dict[str, float]
    missing: tuple[str, ...] = ()

    def to_json(self) -> dict:
        """A JSON-ready dict of every field."""
        return {"tasks": self.tasks, "test_outputs": self.test_outputs,
                "score_task_mean": self.score_task_mean,
                "score_output_mean": self.score_output_mean,
                "per_task": dict(self.per_task), "missing": list(self.missing)}


def _solved(entry: object, truth: Grid) -> bool:
    """Whether one submission entry ({"attempt_1": G, "attempt_2": G}) holds the truth."""
    if not isinstance(entry, dict):
        return False
    for key in ATTEMPT_KEYS:
        try:
            attempt = validate_grid(entry.get(key))
        except InputError:
            continue  # a missing or malformed attempt is simply wrong
        if grids_equal(attempt, truth):
            return True
    return False


def score_submission(submission: Mapping[str, object],
                     solutions: Mapping[str, Sequence[Grid]]) -> ScoreReport:
    """Score against `solutions` (task id -> truth grid per test input). Tasks absent from the
    submission score 0 and are listed in `missing`; tasks absent from the solutions are ignored."""
    if not isinstance(submission, Mapping):
        submission = {}
    per_task: dict[str, float] = {}
    missing: list[str] = []
    solved_total = outputs_total = 0
    for tid, truths in solutions.items():
        if not truths:
            raise InputError("no test outputs in the solutions", task=tid)
        entries = submission.get(tid)
        if tid not in submission:
            missing.append(tid)
        if not isinstance(entries, list):
            entries = []
        solved = sum(_solved(entries[i] if i < len(entries) else None, truth)
                     for i, truth in enumerate(truths))
        per_task[tid] = solved / len(truths)
        solved_total += solved
        outputs_total += len(truths)
    n = len(per_task)
    return ScoreReport(
        tasks=n, test_outputs=outputs_total,
        score_task_mean=sum(per_task.values()) / n if n else 0.0,
        score_output_mean=solved_total / outputs_total if outputs_total else 0.0,
        per_task=per_task, missing=tuple(missing))


def load_solutions(path: str | Path) -> dict[str, list[Grid]]:
    """A Kaggle solutions file: {task id: [grid per test input]}; InputError on any problem."""
    file = str(path)
    data = read_json_object(path)
    out: dict[str, list[Grid]] = {}
    for tid, grids in data.items():
        if not isinstance(grids, list) or not grids:
            got = "empty list" if isinstance(grids, list) else json_kind(grids)
            raise InputError(f"expected a non-empty list of grids, got {got}", file=file,
                             task=tid, field="solutions")
        out[tid] = [validate_grid(g, file=file, task=tid, field=f"solutions[{i}]")
                    for i, g in enumerate(grids)]
    return out


def load_submission(path: str | Path) -> dict:
    """A submission file as a dict (its entries are not checked here)."""
    return read_json_object(path)
