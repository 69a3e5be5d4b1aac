"""Pure, exactly invertible augmentations of ARC grids, pairs and tasks.

A `Transform` combines three independent parts:

* an element of the dihedral group D8 (rotations and reflections of the grid),
* a permutation of the ten colours (cell value c becomes ``colours[c]``),
* a reordering of the demonstration (train) pairs.

D8 elements are indexed 0..7: for k in 0..3, element k rotates by k*90 degrees
counter-clockwise (``np.rot90(g, k)``); for k in 4..7, element k transposes first and then
rotates by (k-4)*90 degrees (``np.rot90(g.T, k - 4)``). The composition and inverse tables
are derived at import time from a non-symmetric probe grid, never typed by hand.

This module only transforms data: it does no file I/O, no validation of grid contents
(see tasks.py), no tokenisation and no voting. Functions never mutate their inputs and
return new contiguous uint8 arrays. All randomness comes from the `np.random.Generator`
passed in; nothing is seeded globally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from submission.errors import ConfigError
from submission.arc.grids import Grid, Pair, Task

N_DIHEDRAL = 8
N_COLOURS = 10
_ID_COLOURS: tuple[int, ...] = tuple(range(N_COLOURS))


def _check_dihedral(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < N_DIHEDRAL:
        raise ConfigError(f"dihedral index must be an int in 0..7, got {k!r}")
    return int(k)


def _raw_dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    return np.rot90(grid, k) if k < 4 else np.rot90(grid.T, k - 4)


def dihedral_apply(grid: Grid, k: int) -> Grid:
    """Apply D8 element k to a grid; returns a new C-contiguous array."""
    return np.array(_raw_dihedral(np.asarray(grid), _check_dihedral(k)), order="C", copy=True)


def _build_tables() -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    probe = np.arange(6).reshape(2, 3)  # no non-trivial symmetry
    images = [_raw_dihedral(probe, k) for k in range(N_DIHEDRAL)]

    def index_of(g: np.ndarray) -> int:
        hits = [k for k, img in enumerate(images) if img.shape == g.shape and np.array_equal(img, g)]
        assert len(hits) == 1, "D8 elements are not distinct on the probe grid"
        return hits[0]

    compose = tuple(
        tuple(index_of(_raw_dihedral(_raw_dihedral(probe, b), a)) for b in range(N_DIHEDRAL))
        for a in range(N_DIHEDRAL))
    inverse = tuple(row.index(0) for row in compose)
    return compose, inverse


_COMPOSE, _INVERSE = _build_tables()


def dihedral_inverse(k: int) -> int:
    """The D8 element undoing element k."""
    return _INVERSE[_check_dihedral(k)]


def dihedral_compose(a: int, b: int) -> int:
    """The D8 element equal to "apply b first, then a"."""
    return _COMPOSE[_check_dihedral(a)][_check_dihedral(b)]


def _as_perm(values: Any, n: int | None, what: str) -> tuple[int, ...]:
    try:
        perm = tuple(int(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be a sequence of ints, got {values!r}") from exc
    if (n is not None and len(perm) != n) or sorted(perm) != list(range(len(perm))):
        size = n if n is not None else len(perm)
        raise ConfigError(f"{what} must be a permutation of 0..{size - 1}, got {values!r}")
    return perm


def _invert_perm(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


@dataclass(frozen=True)
class Transform:
    """A D8 element, a colour permutation and a demo reordering, applied together.

    ``colours[c]`` is the new colour of cell value c. With ``order`` set, the transformed
    task's ``train[i]`` is the original ``train[order[i]]``; None keeps the demo order.
    """

    dihedral: int = 0
    colours: tuple[int, ...] = _ID_COLOURS
    order: tuple[int, ...] | None = None
    _lut: np.ndarray = field(init=False, repr=False, compare=False, hash=False)
    _inv_lut: np.ndarray = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        colours = _as_perm(self.colours, N_COLOURS, "colours")
        object.__setattr__(self, "dihedral", _check_dihedral(self.dihedral))
        object.__setattr__(self, "colours", colours)
        if self.order is not None:
            object.__setattr__(self, "order", _as_perm(self.order, None, "order"))
        object.__setattr__(self, "_lut", np.array(colours, dtype=np.uint8))
        object.__setattr__(self, "_inv_lut", np.array(_invert_perm(colours), dtype=np.uint8))

    # -- grids and pairs -------------------------------------------------------------------
    def apply_grid(self, g: Grid) -> Grid:
        """Recolour, then apply the dihedral element."""
        return dihedral_apply(self._lut[np.asarray(g)], self.dihedral)

    def invert_grid(self, g: Grid) -> Grid:
        """Exact inverse of `apply_grid`."""
        return self._inv_lut[dihedral_apply(g, _INVERSE[self.dihedral])]

    def apply_pair(self, p: Pair) -> Pair:
        return Pair(self.apply_grid(p.input), self.apply_grid(p.output))

    def invert_pair(self, p: Pair) -> Pair:
        return Pair(self.invert_grid(p.input), self.invert_grid(p.output))

    # -- tasks -----------------------------------------------------------------------------
    def apply_task(self, task: Task) -> Task:
        """Transform every grid of the task and reorder its demos; keeps the id."""
        order = range(len(task.train)) if self.order is None else self.order
        if len(order) != len(task.train):
            raise ConfigError(f"order has {len(order)} entries but task {task.id} has "
                              f"{len(task.train)} train pairs")
        outputs = task.test_outputs
        return Task(
            id=task.id,
            train=tuple(self.apply_pair(task.train[j]) for j in order),
            test_inputs=tuple(self.apply_grid(g) for g in task.test_inputs),
            test_outputs=None if outputs is None else tuple(self.apply_grid(g) for g in outputs))

    def invert_task(self, task: Task) -> Task:
        """Exact inverse of `apply_task` (restores the original demo order)."""
        return self.inverse().apply_task(task)

    # -- algebra ---------------------------------------------------------------------------
    def inverse(self) -> Transform:
        """The transform undoing this one."""
        return Transform(_INVERSE[self.dihedral], _invert_perm(self.colours),
                         None if self.order is None else _invert_perm(self.order))

    def compose(self, other: Transform) -> Transform:
        """The transform equal to "apply `other` first, then `self`"."""
        colours = tuple(self.colours[c] for c in other.colours)
        if self.order is None or other.order is None:
            order = other.order if self.order is None else self.order
        elif len(self.order) != len(other.order):
            raise ConfigError(f"cannot compose orders of lengths {len(self.order)} "
                              f"and {len(other.order)}")
        else:
            order = tuple(other.order[i] for i in self.order)
        return Transform(_COMPOSE[self.dihedral][other.dihedral], colours, order)

    @property
    def is_identity(self) -> bool:
        return (self.dihedral == 0 and self.colours == _ID_COLOURS
                and (self.order is None or self.order == tuple(range(len(self.order)))))

    def __str__(self) -> str:
        order = "None" if self.order is None else f"({','.join(map(str, self.order))})"
        return f"D8[{self.dihedral}] colours={''.join(map(str, self.colours))} order={order}"


IDENTITY = Transform()


def random_colour_perm(rng: np.random.Generator, keep_background: bool) -> tuple[int, ...]:
    """A uniform random permutation of 0..9; keep_background fixes 0 -> 0."""
    if keep_background:
        return (0,) + tuple(int(c) + 1 for c in rng.permutation(N_COLOURS - 1))
    return tuple(int(c) for c in rng.permutation(N_COLOURS))


def _random_order(rng: np.random.Generator, n_demos: int) -> tuple[int, ...] | None:
    order = tuple(int(i) for i in rng.permutation(n_demos))
    return None if order == tuple(range(n_demos)) else order  # identity order -> None


def _check_count(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{name} must be a non-negative int, got {value!r}")


def sample_transforms(rng: np.random.Generator, n: int, n_demos: int, *,
                      keep_background: bool = False, shuffle_order: bool = True,
                      include_identity: bool = True, permute_colours: bool = True,
                      dihedral: bool = True) -> list[Transform]:
    """n distinct random transforms for tasks with n_demos train pairs.

    With include_identity the first one is `IDENTITY`; without it the identity is never
    returned. Identity demo orders are stored as None, so distinct values act differently.
    Raises ConfigError if fewer than n distinct transforms exist.
    """
    _check_count(n, "n")
    _check_count(n_demos, "n_demos")
    n_colour_perms = math.factorial(N_COLOURS - 1 if keep_background else N_COLOURS) if permute_colours else 1
    space = ((N_DIHEDRAL if dihedral else 1) * n_colour_perms
             * (math.factorial(n_demos) if shuffle_order else 1))
    available = space if include_identity else space - 1
    if n > available:
        raise ConfigError(f"asked for {n} distinct transforms but only {available} exist "
                          f"(space size {space})")
    out: list[Transform] = [IDENTITY] if include_identity and n > 0 else []
    seen = {IDENTITY}
    while len(out) < n:
        t = Transform(
            int(rng.integers(N_DIHEDRAL)) if dihedral else 0,
            random_colour_perm(rng, keep_background) if permute_colours else _ID_COLOURS,
            _random_order(rng, n_demos) if shuffle_order else None)
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def view_transforms(rng: np.random.Generator, n_views: int, n_demos: int, *,
                    keep_background: bool = False, shuffle_order: bool = True) -> list[Transform]:
    """The inference views: D8 elements 0..7 in order, round after round.

    Round 0 keeps the colours; later rounds draw a fresh random colour permutation per
    view (never repeating one for the same D8 element). View 0 is exactly `IDENTITY`; the
    others get a random demo order when shuffle_order. Result is truncated to n_views.
    """
    _check_count(n_views, "n_views")
    _check_count(n_demos, "n_demos")
    space = N_DIHEDRAL * math.factorial(N_COLOURS - 1 if keep_background else N_COLOURS)
    if n_views > space:
        raise ConfigError(f"asked for {n_views} distinct views but only {space} exist")
    seen: set[tuple[int, tuple[int, ...]]] = set()
    views: list[Transform] = []
    for i in range(n_views):
        k = i % N_DIHEDRAL
        colours = _ID_COLOURS
        if i >= N_DIHEDRAL:
            while (k, colours) in seen:
                colours = random_colour_perm(rng, keep_background)
        seen.add((k, colours))
        order = _random_order(rng, n_demos) if shuffle_order and i > 0 else None
        views.append(Transform(k, colours, order))
    return views
