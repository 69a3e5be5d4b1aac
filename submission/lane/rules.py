"""Final steps learned from the demonstrations: each learner reads its parameters (a colour map,
a cellwise lookup table, a tiling pattern, ...) off the demo pairs, and yields a fit only where
the learned rule reproduces every demo output exactly and covers every test input (a test cell,
object or key never seen in the demos gives no answer rather than a guess)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, TypeGuard, TypeVar

import numpy as np

from submission.arc.augment import dihedral_apply
from submission.arc.grids import Grid
from submission.lane.objects import components, object_features
from submission.lane.primitives import tile_pattern

OUTSIDE = 10  # the value of a neighbour beyond the border


@dataclass(frozen=True)
class Fit:
    text: str  # readable step, e.g. "colour_map{1>2}"
    cost: float  # simplicity prior: lower is simpler
    tests: tuple[Grid, ...]  # the answer for each test input


_T = TypeVar("_T")


def _all_given(items: list[_T | None]) -> TypeGuard[list[_T]]:
    """Whether no item is None (every test input got an answer, every grid was cut)."""
    return all(item is not None for item in items)


def same_shapes(xs: list[Grid], ys: list[Grid]) -> bool:
    return all(x.shape == y.shape for x, y in zip(xs, ys))


def learn_identity(xs, ys, ts, bg) -> Iterator[Fit]:
    if all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(xs, ys)):
        yield Fit("", 0.0, tuple(t.copy() for t in ts))


@dataclass(frozen=True)
class Table:
    """A lookup table from feature rows to colours: sorted integer codes of the rows (in `base`)
    and their values."""

    codes: np.ndarray
    values: np.ndarray
    base: int

    def __len__(self) -> int:
        return len(self.codes)


def _codes(keys: np.ndarray, base: int) -> np.ndarray:
    return keys.astype(np.int64) @ (base ** np.arange(keys.shape[1], dtype=np.int64))


def _table(keys_out: list[tuple[np.ndarray, np.ndarray]]) -> Table | None:
    """A key -> value table from (feature rows, values) arrays; None on any conflict or where
    the rows are too wide to code (base 11 for values up to 10, else base 256 for 7 bytes)."""
    keys = np.concatenate([k for k, _ in keys_out])
    vals = np.concatenate([v for _, v in keys_out]).astype(np.int16)
    n_feat = keys.shape[1]
    if keys.max() < 11 and n_feat <= 17:
        base = 11
    elif n_feat <= 7:
        base = 256
    else:
        return None
    uniq, inv = np.unique(_codes(keys, base), return_inverse=True)
    lo = np.full(len(uniq), 99, np.int16)
    hi = np.full(len(uniq), -1, np.int16)
    np.minimum.at(lo, inv, vals)
    np.maximum.at(hi, inv, vals)
    if (lo != hi).any():
        return None
    return Table(uniq, lo.astype(np.uint8), base)


def _apply_table(table: Table, keys: np.ndarray, shape) -> Grid | None:
    """The looked-up grid, or None where some feature row is not in the table."""
    if keys.max() >= table.base:
        return None
    codes = _codes(keys, table.base)
    pos = np.clip(np.searchsorted(table.codes, codes), 0, len(table.codes) - 1)
    if not (table.codes[pos] == codes).all():
        return None
    return table.values[pos].reshape(shape)


def learn_colour_map(xs, ys, ts, bg) -> Iterator[Fit]:
    if not same_shapes(xs, ys):
        return
    mapping: dict[int, int] = {}
    for x, y in zip(xs, ys):
        for a, b in set(zip(x.ravel().tolist(), y.ravel().tolist())):
            if mapping.setdefault(a, b) != b:
                return
    if all(a == b for a, b in mapping.items()):
        return
    lut = np.arange(10, dtype=np.uint8)
    for a, b in mapping.items():
        lut[a] = b
    if any(not set(np.unique(t).tolist()) <= set(mapping) for t in ts):
        return
    text = "colour_map{" + ",".join(f"{a}>{b}" for a, b in sorted(mapping.items()) if a != b) + "}"
    yield Fit(text, 1.0, tuple(lut[t] for t in ts))


def _pad(grid: Grid) -> np.ndarray:
    return np.pad(grid.astype(np.uint8), 1, constant_values=OUTSIDE)


def _feat_n4(g: Grid, bg: int) -> np.ndarray:
    p, (h, w) = _pad(g), g.shape
    return np.stack([g, p[:h, 1:w + 1], p[2:, 1:w + 1], p[1:h + 1, :w], p[1:h + 1, 2:]], -1)


def _feat_n8(g: Grid, bg: int) -> np.ndarray:
    p, (h, w) = _pad(g), g.shape
    return np.stack([p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], -1)


def _feat_count(g: Grid, bg: int) -> np.ndarray:
    n8 = _feat_n8(g, bg)
    nb = ((n8 != bg) & (n8 != OUTSIDE)).sum(-1) - (g != bg)
    return np.stack([g, nb.astype(np.uint8)], -1)


def _colour_sets(lines: np.ndarray, bg: int) -> np.ndarray:
    """Per line, a bit mask of its non-background colours (two bytes)."""
    bits = np.zeros(lines.shape[0], dtype=np.uint16)
    for c in range(10):
        if c != bg:
            bits |= ((lines == c).any(1).astype(np.uint16) << c)
    return bits


def _feat_rowcol(g: Grid, bg: int) -> np.ndarray:
    h, w = g.shape
    rows = np.repeat(_colour_sets(g, bg)[:, None], w, 1)
    cols = np.repeat(_colour_sets(g.T, bg)[None, :], h, 0)
    parts = [g.astype(np.uint16), rows, cols]
    return np.stack(parts, -1).view(np.uint8).reshape(h, w, -1)


CELL_FEATURES: dict[str, tuple[Callable, float]] = {
    "count8": (_feat_count, 2.0), "n4": (_feat_n4, 2.5), "rowcol": (_feat_rowcol, 2.5),
    "n8": (_feat_n8, 3.0)}


def learn_cellwise(xs, ys, ts, bg, wide: bool = True) -> Iterator[Fit]:
    """Output cell = table[features of the input cell]; features per CELL_FEATURES (the 3x3
    neighbourhood only where `wide`)."""
    if not same_shapes(xs, ys):
        return
    for name, (feat, cost) in CELL_FEATURES.items():
        if name == "n8" and not wide:
            continue
        fx = [feat(x, bg) for x in xs]
        table = _table([(f.reshape(-1, f.shape[-1]), y.ravel()) for f, y in zip(fx, ys)])
        if table is None:
            continue
        outs = []
        for t in ts:
            f = feat(t, bg)
            outs.append(_apply_table(table, f.reshape(-1, f.shape[-1]), t.shape))
            if outs[-1] is None:
                break
        if outs and _all_given(outs):
            yield Fit(f"cellwise({name})", cost + len(table) / 200, tuple(outs))
            return


OBJECT_KEYS = ("size", "size_rank", "size_rank_desc", "shape", "colour_size", "touches_border",
               "has_hole", "is_rect")


def _recolour(grid: Grid, bg: int, diag: bool, table: dict, key: str, out: Grid | None):
    """Apply (out is None) or learn into `table` (out given) an object -> colour rule."""
    objs = components(grid, bg, diag, by_colour=False)
    if not objs or len(objs) > 40:
        return None
    res = grid.copy()
    for o in objs:
        f = object_features(grid, o, objs)[key]
        if out is not None:
            vals = np.unique(out[o.cells])
            if len(vals) != 1 or table.setdefault(f, int(vals[0])) != int(vals[0]):
                return None
        elif f not in table:
            return None
        res[o.cells] = table[f]
    return res


def learn_recolour_objects(xs, ys, ts, bg) -> Iterator[Fit]:
    """Each object (any non-background colours, connected) takes one colour learned from one of
    its features (OBJECT_KEYS); background cells stay as they are."""
    if not same_shapes(xs, ys) or any(np.array_equal(x, y) for x, y in zip(xs, ys)):
        return
    if any(not np.array_equal(x[x == bg], y[x == bg]) for x, y in zip(xs, ys)):
        return
    for diag in (False, True):
        for i, key in enumerate(OBJECT_KEYS):
            table: dict = {}
            if all(_recolour(x, bg, diag, table, key, y) is not None for x, y in zip(xs, ys)):
                outs = [_recolour(t, bg, diag, table, key, None) for t in ts]
                if _all_given(outs):
                    yield Fit(f"recolour_objects(by={key},diag={diag})", 2.0 + i * 0.1,
                              tuple(outs))
                    return


def learn_tiling(xs, ys, ts, bg) -> Iterator[Fit]:
    """Output = an ny x nx arrangement of dihedral images of the input (or blank blocks), the
    pattern read block by block off the demos; or the input placed where its own cells are set."""
    ratios = {(y.shape[0] / x.shape[0], y.shape[1] / x.shape[1]) for x, y in zip(xs, ys)}
    if len(ratios) != 1:
        return
    ry, rx = ratios.pop()
    if ry != int(ry) or rx != int(rx) or (ry, rx) == (1, 1) or ry * rx > 36:
        return
    ny, nx = int(ry), int(rx)
    if all(x.shape[0] == x.shape[1] and x.shape == (ny, nx) for x in xs):
        outs = [np.kron(x != bg, x).astype(np.uint8) for x in xs]
        if all(np.array_equal(o, y) for o, y in zip(outs, ys)):
            yield Fit("self_tile", 1.5, tuple(np.kron(t != bg, t).astype(np.uint8) for t in ts))
            return
    pattern = []
    for i in range(ny):
        row = []
        for j in range(nx):
            for k in (0, 5, 7, 2, 4, 6, 1, 3, -1):
                if all(_block_ok(x, y, i, j, k) for x, y in zip(xs, ys)):
                    row.append(k)
                    break
            else:
                return
        pattern.append(tuple(row))
    pattern_t = tuple(pattern)
    tiles = [tile_pattern(t, pattern_t) for t in ts]
    if _all_given(tiles):
        n_kinds = len({k for r in pattern_t for k in r})
        yield Fit(f"tile{pattern_t}", 1.0 + 0.3 * n_kinds, tuple(tiles))


def _block_ok(x: Grid, y: Grid, i: int, j: int, k: int) -> bool:
    h, w = x.shape
    block = y[i * h:(i + 1) * h, j * w:(j + 1) * w]
    if k < 0:
        return not block.any()
    d = dihedral_apply(x, k)
    return d.shape == block.shape and np.array_equal(d, block)


def split_parts(grid: Grid, shape: tuple[int, int]) -> list[Grid] | None:
    """Cut a grid into equal parts of `shape`, either side by side or separated by one-cell
    lines of a single colour."""
    h, w = grid.shape
    ph, pw = shape
    for sep in (0, 1):
        if (h + sep) % (ph + sep) or (w + sep) % (pw + sep):
            continue
        ny, nx = (h + sep) // (ph + sep), (w + sep) // (pw + sep)
        if ny * nx < 2:
            continue
        if sep:
            lines = [grid[(ph + 1) * i - 1] for i in range(1, ny)]
            lines += [grid[:, (pw + 1) * j - 1] for j in range(1, nx)]
            if not lines or len(np.unique(np.concatenate(lines))) != 1:
                continue
        return [grid[i * (ph + sep):i * (ph + sep) + ph, j * (pw + sep):j * (pw + sep) + pw]
                for i in range(ny) for j in range(nx)]
    return None


def learn_combine_parts(xs, ys, ts, bg) -> Iterator[Fit]:
    """The input is cut into parts of the output's shape; output cell = table[the parts' cells at
    that position], the table keyed on colours or on set/unset."""
    if len({y.shape for y in ys}) != 1 or same_shapes(xs, ys):
        return
    shape = ys[0].shape
    parts_x = [split_parts(x, shape) for x in xs]
    parts_t = [split_parts(t, shape) for t in ts]
    if not _all_given(parts_x) or not _all_given(parts_t) or len({len(p) for p in parts_x + parts_t}) != 1:
        return
    for name, key in (("colours", lambda ps: np.stack(ps, -1)),
                      ("set", lambda ps: np.stack([p != bg for p in ps], -1).astype(np.uint8))):
        table = _table([(key(p).reshape(-1, len(p)), y.ravel()) for p, y in zip(parts_x, ys)])
        if table is None:
            continue
        outs = [_apply_table(table, key(p).reshape(-1, len(p)), shape) for p in parts_t]
        if _all_given(outs):
            yield Fit(f"combine_parts(n={len(parts_x[0])},key={name})", 2.0 + len(table) / 50,
                      tuple(outs))
            return


# Each learner with the most steps it may follow: a learned rule fits almost anything after a
# long chain of steps, so lookup tables come only on (nearly) raw inputs.
LEARNERS = ((learn_identity, 9), (learn_colour_map, 2), (learn_tiling, 2),
            (learn_recolour_objects, 1), (learn_combine_parts, 1), (learn_cellwise, 1))
