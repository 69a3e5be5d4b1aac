"""Core value types: a grid is a 2-D numpy uint8 array; a Pair joins an input and an output grid;
a Task holds one ARC task. No file I/O and no validation here (see tasks.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

Grid = np.ndarray  # shape (h, w), dtype uint8, values 0..9, 1 <= h, w <= 30
MAX_SIDE = 30


class Pair(NamedTuple):
    input: Grid
    output: Grid


@dataclass(frozen=True)
class Task:
    """One ARC task. `test_outputs` is None when the solutions are unknown (a Kaggle rerun)."""

    id: str
    train: tuple[Pair, ...]
    test_inputs: tuple[Grid, ...]
    test_outputs: tuple[Grid, ...] | None = field(default=None)

    @property
    def n_test(self) -> int:
        return len(self.test_inputs)


def as_grid(rows: list[list[int]] | np.ndarray) -> Grid:
    """A uint8 grid from nested lists (no validation; see tasks.validate_grid)."""
    return np.asarray(rows, dtype=np.uint8)


def grid_to_list(grid: Grid) -> list[list[int]]:
    """Nested lists of Python ints, as JSON wants them."""
    return [[int(v) for v in row] for row in np.asarray(grid)]


def grids_equal(a: Grid | None, b: Grid | None) -> bool:
    """Exact equality of shape and cells; None equals nothing."""
    if a is None or b is None:
        return False
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))
