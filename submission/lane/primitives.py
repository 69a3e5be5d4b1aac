"""Whole-grid transformations of the program-search lane: geometry, scaling, tiling, gravity,
flood fill, lines and symmetry completion. Each function is pure: it returns a new uint8 grid, or
None where the transformation does not apply to this grid (the search then drops the branch)."""

from __future__ import annotations

from typing import TypeGuard

import numpy as np

from submission.arc.augment import dihedral_apply
from submission.arc.grids import MAX_SIDE, Grid

DIHEDRAL_NAMES = ("id", "rot90", "rot180", "rot270", "transpose", "flip_ud", "antitranspose",
                  "flip_lr")


def _check_names() -> None:
    probe = np.arange(6, dtype=np.uint8).reshape(2, 3)
    expect = {"id": probe, "rot90": np.rot90(probe), "rot180": np.rot90(probe, 2),
              "rot270": np.rot90(probe, 3), "transpose": probe.T, "flip_lr": probe[:, ::-1],
              "antitranspose": np.rot90(probe, 2).T, "flip_ud": probe[::-1]}
    for k, name in enumerate(DIHEDRAL_NAMES):
        assert np.array_equal(dihedral_apply(probe, k), expect[name]), name


_check_names()


def fits(grid: Grid | None) -> TypeGuard[Grid]:
    return grid is not None and 1 <= grid.shape[0] <= MAX_SIDE and 1 <= grid.shape[1] <= MAX_SIDE


def background(grid: Grid) -> int:
    """The most frequent colour (ties: the smallest)."""
    return int(np.bincount(grid.ravel(), minlength=10).argmax())


def dihedral(grid: Grid, k: int) -> Grid:
    return dihedral_apply(grid, k)


def crop_to_content(grid: Grid, bg: int) -> Grid | None:
    """The bounding box of all cells that are not `bg`."""
    ys, xs = np.nonzero(grid != bg)
    if len(ys) == 0:
        return None
    return grid[ys.min():ys.max() + 1, xs.min():xs.max() + 1].copy()


def shift(grid: Grid, dy: int, dx: int, fill: int) -> Grid:
    """Move the content by (dy, dx); vacated cells take `fill`, cells pushed out are lost."""
    h, w = grid.shape
    out = np.full_like(grid, fill)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = grid[ys, xs]
    return out


def scale_up(grid: Grid, ky: int, kx: int) -> Grid | None:
    out = np.repeat(np.repeat(grid, ky, axis=0), kx, axis=1)
    return out if fits(out) else None


def scale_down(grid: Grid, ky: int, kx: int) -> Grid | None:
    """Undo scale_up: every ky x kx block must be one colour."""
    h, w = grid.shape
    if h % ky or w % kx:
        return None
    small = grid[::ky, ::kx]
    up = scale_up(small, ky, kx)
    if up is None or not np.array_equal(up, grid):
        return None
    return small.copy()


def tile(grid: Grid, ny: int, nx: int) -> Grid | None:
    out = np.tile(grid, (ny, nx))
    return out if fits(out) else None


def tile_pattern(grid: Grid, pattern: tuple[tuple[int, ...], ...]) -> Grid | None:
    """A larger grid made of blocks; block (i, j) is dihedral element pattern[i][j] of `grid`
    (-1: a block of zeros). Every block must keep the grid's shape."""
    blocks = []
    for row in pattern:
        line = []
        for k in row:
            b = np.zeros_like(grid) if k < 0 else dihedral_apply(grid, k)
            if b.shape != grid.shape:
                return None
            line.append(b)
        blocks.append(np.concatenate(line, axis=1))
    out = np.concatenate(blocks, axis=0)
    return out if fits(out) else None


def gravity(grid: Grid, direction: int, bg: int) -> Grid:
    """Cells that are not `bg` fall towards a side (0 down, 1 up, 2 left, 3 right), keeping order."""
    g = _to_down(grid, direction)
    out = np.full_like(g, bg)
    h = g.shape[0]
    for x in range(g.shape[1]):
        col = g[:, x]
        keep = col[col != bg]
        if len(keep):
            out[h - len(keep):, x] = keep
    return _from_down(out, direction)


def _to_down(grid: Grid, direction: int) -> Grid:
    return (grid, grid[::-1], grid.T[::-1], grid.T)[direction]


def _from_down(grid: Grid, direction: int) -> Grid:
    return np.ascontiguousarray((grid, grid[::-1], grid[::-1].T, grid.T)[direction])


def outside_mask(grid: Grid, passable: np.ndarray) -> np.ndarray:
    """Cells of `passable` reachable from the border by 4-steps through `passable` cells."""
    h, w = grid.shape
    seen = np.zeros((h, w), dtype=bool)
    stack = [(y, x) for y in range(h) for x in (0, w - 1) if passable[y, x]]
    stack += [(y, x) for x in range(w) for y in (0, h - 1) if passable[y, x]]
    while stack:
        y, x = stack.pop()
        if seen[y, x]:
            continue
        seen[y, x] = True
        for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
            if 0 <= ny < h and 0 <= nx < w and passable[ny, nx] and not seen[ny, nx]:
                stack.append((ny, nx))
    return seen


def fill_enclosed(grid: Grid, bg: int, colour: int) -> Grid | None:
    """Background cells not reachable from the border through background take `colour`."""
    passable = grid == bg
    holes = passable & ~outside_mask(grid, passable)
    if not holes.any():
        return None
    out = grid.copy()
    out[holes] = colour
    return out


_DIRS = {"up": ("up",), "down": ("down",), "left": ("left",), "right": ("right",),
         "vertical": ("up", "down"), "horizontal": ("left", "right"),
         "cross": ("up", "down", "left", "right"),
         "diagonal": ("down_right", "down_left", "up_right", "up_left")}
LINE_DIRECTIONS = tuple(_DIRS)
# A ray towards a side is cast downwards in a view of the grid (see _to_down), drifting
# sideways by `drift` columns per row for the diagonals.
_RAY = {"down": (0, 0), "up": (1, 0), "left": (2, 0), "right": (3, 0), "down_right": (0, 1),
        "down_left": (0, -1), "up_right": (1, 1), "up_left": (1, -1)}


def _ray_down(mask: np.ndarray, free: np.ndarray, drift: int, stop: bool) -> np.ndarray:
    """Cells reached by rays cast down from every `mask` cell (`free` cells are painted; with
    `stop`, a ray ends at the first cell that is not free)."""
    h, w = mask.shape
    paint = np.zeros_like(mask)
    cur = mask[0].copy()
    for y in range(1, h):
        if drift > 0:
            cur = np.concatenate(([False], cur[:-1]))
        elif drift < 0:
            cur = np.concatenate((cur[1:], [False]))
        paint[y] = cur & free[y]
        if stop:
            cur = cur & free[y]
        cur = cur | mask[y]
    return paint


def draw_lines(grid: Grid, colour: int, direction: str, bg: int, stop: bool) -> Grid | None:
    """From every cell of `colour`, draw `colour` in the given directions to the border, over
    background cells (with `stop`, only up to the first cell that is not background)."""
    mask = grid == colour
    if not mask.any():
        return None
    paint = np.zeros_like(mask)
    for ray in _DIRS[direction]:
        view, drift = _RAY[ray]
        p = _ray_down(_to_down(mask, view), _to_down(grid == bg, view), drift, stop)
        paint |= _from_down(p, view)
    out = grid.copy()
    out[paint] = colour
    return out


def _mirror_fill(grid: Grid, known: np.ndarray, maps: list) -> tuple[Grid, np.ndarray]:
    out, have = grid.copy(), known.copy()
    for src in maps:
        take = ~have & src[1]
        out[take] = src[0][take]
        have |= take
    return out, have


def _axis_maps(grid: Grid, known: np.ndarray) -> list:
    """Mirror images (values, known-mask) of the grid about the best consistent axes."""
    h, w = grid.shape
    maps = []
    for axis in (0, 1):
        n = (h, w)[axis]
        best = None
        for twice in range(1, 2 * n - 2):
            idx = twice - np.arange(n)
            ok = (idx >= 0) & (idx < n)
            if ok.sum() < max(2, (2 * n) // 3):
                continue
            src = np.clip(idx, 0, n - 1)
            vals = np.take(grid, src, axis=axis)
            kn = np.take(known, src, axis=axis) & np.expand_dims(ok, 1 - axis)
            both = kn & known
            if not both.any() or not np.array_equal(vals[both], grid[both]):
                continue
            score = int(both.sum())
            if best is None or score > best[0]:
                best = (score, vals, kn)
        if best is not None:
            maps.append(best[1:])
    if h == w:
        for vals in (grid.T, np.rot90(grid, 2).T):
            kn = known.T if vals is grid.T else np.rot90(known, 2).T
            both = kn & known
            if both.any() and np.array_equal(vals[both], grid[both]):
                maps.append((vals, kn))
    return maps


def complete_symmetry(grid: Grid, mask_colour: int) -> Grid | None:
    """Cells of `mask_colour` are unknown; fill them from the grid's mirror images (left-right
    and up-down about the best consistent axes, and the diagonals of square grids)."""
    known = grid != mask_colour
    if known.all() or not known.any():
        return None
    out, have = grid, known
    for _ in range(3):
        maps = _axis_maps(out, have)
        if not maps:
            return None
        out, have = _mirror_fill(out, have, maps)
        if have.all():
            return out
    return None


def symmetry_patch(grid: Grid, mask_colour: int) -> Grid | None:
    """What `complete_symmetry` put under the bounding box of the `mask_colour` cells."""
    full = complete_symmetry(grid, mask_colour)
    if full is None:
        return None
    ys, xs = np.nonzero(grid == mask_colour)
    return full[ys.min():ys.max() + 1, xs.min():xs.max() + 1].copy()


def _lattices(h: int, w: int):
    """Class-index maps of candidate repeating patterns, smallest first: a (py, px) tiling and
    diagonal stripes of period p."""
    ys, xs = np.mgrid[0:h, 0:w]
    cands = [(py * px, (ys % py) * px + xs % px) for py in range(1, h + 1) for px in
             range(1, w + 1) if (py, px) != (h, w)]
    cands += [(p, (ys + xs) % p) for p in range(2, min(h, w))]
    cands += [(p, (ys - xs) % p) for p in range(2, min(h, w))]
    return [c for _, c in sorted(cands, key=lambda c: c[0])]


def complete_period(grid: Grid, mask_colour: int) -> Grid | None:
    """Cells of `mask_colour` are unknown; fill them from the smallest repeating pattern (a 2-D
    tiling or diagonal stripes) that every known cell agrees with."""
    known = grid != mask_colour
    if known.all() or not known.any():
        return None
    h, w = grid.shape
    vals = grid.astype(np.int16)
    for cls in _lattices(h, w):
        n = int(cls.max()) + 1
        lo = np.full(n, 99, np.int16)
        hi = np.full(n, -1, np.int16)
        np.minimum.at(lo, cls[known], vals[known])
        np.maximum.at(hi, cls[known], vals[known])
        if (hi >= 0).all() and (lo == hi).all():
            return lo[cls].astype(np.uint8)
    return None


def connect(grid: Grid, end_colour: int, line_colour: int, bg: int) -> Grid | None:
    """Join every two `end_colour` cells in one row or column with `line_colour` over the
    background cells between them (only where nothing else lies between them)."""
    out = grid.copy()
    done = False
    for g, o in ((grid, out), (grid.T, out.T)):
        for y in range(g.shape[0]):
            xs = np.nonzero(g[y] == end_colour)[0]
            for a, b in zip(xs[:-1], xs[1:]):
                seg = g[y, a + 1:b]
                if b > a + 1 and (seg == bg).all():
                    o[y, a + 1:b] = line_colour
                    done = True
    return out if done else None


def crop_to_colour(grid: Grid, colour: int) -> Grid | None:
    """The bounding box of all cells of `colour`."""
    ys, xs = np.nonzero(grid == colour)
    if len(ys) == 0:
        return None
    return grid[ys.min():ys.max() + 1, xs.min():xs.max() + 1].copy()


def trim(grid: Grid) -> Grid | None:
    """The grid without its outermost rows and columns."""
    return grid[1:-1, 1:-1].copy() if min(grid.shape) > 2 else None


def _separator_cuts(line_ok: np.ndarray) -> list[tuple[int, int]]:
    """Runs of non-separator indices between separator lines."""
    runs, start = [], None
    for i, sep in enumerate(line_ok.tolist() + [True]):
        if not sep and start is None:
            start = i
        elif sep and start is not None:
            runs.append((start, i))
            start = None
    return runs


def block_reduce(grid: Grid, bg: int) -> Grid | None:
    """A grid cut into blocks by full rows and columns of one separator colour becomes one cell
    per block: the block's most frequent colour other than `bg` (or `bg` when it has none)."""
    for sep in np.unique(grid).tolist():
        row_sep, col_sep = (grid == sep).all(1), (grid == sep).all(0)
        rows, cols = _separator_cuts(row_sep), _separator_cuts(col_sep)
        if len(rows) * len(cols) < 2 or (row_sep.all() or col_sep.all()):
            continue
        out = np.full((len(rows), len(cols)), bg, np.uint8)
        for i, (y0, y1) in enumerate(rows):
            for j, (x0, x1) in enumerate(cols):
                counts = np.bincount(grid[y0:y1, x0:x1].ravel(), minlength=10)
                counts[bg] = 0
                counts[sep] = 0
                if counts.any():
                    out[i, j] = counts.argmax()
        return out
    return None


def symmetrize(grid: Grid, k: int, bg: int) -> Grid | None:
    """The grid with the non-`bg` cells of its dihedral image k laid over its `bg` cells (the
    image must keep the grid's shape)."""
    img = dihedral_apply(grid, k)
    if img.shape != grid.shape:
        return None
    out = grid.copy()
    take = (grid == bg) & (img != bg)
    if not take.any():
        return None
    out[take] = img[take]
    return out


# The four subgroups of index 2 in the dihedral group (as dihedral indices besides the identity):
# each is normal, so its completion commutes with every dihedral map (an "equivariant" step).
SYMMETRY_GROUPS = {"rotations": (1, 2, 3), "flips": (2, 5, 7), "diagonals": (2, 4, 6),
                   "all": (1, 2, 3, 4, 5, 6, 7)}


def symmetrize_group(grid: Grid, group: str, bg: int) -> Grid | None:
    """The grid completed under every map of `SYMMETRY_GROUPS[group]` until nothing changes: each
    `bg` cell takes the colour its images agree on. None when an image changes the shape, when
    images disagree on a cell, or when nothing is filled."""
    ks = SYMMETRY_GROUPS[group]
    out = grid.copy()
    if any(dihedral_apply(out, k).shape != out.shape for k in ks):
        return None
    while True:
        imgs = np.stack([dihedral_apply(out, k) for k in ks])
        hit = imgs != bg
        colour = np.where(hit, imgs, 0).max(axis=0)
        low = np.where(hit, imgs, 255).min(axis=0)
        take = (out == bg) & hit.any(axis=0)
        if (take & (colour != low)).any():
            return None
        if not take.any():
            break
        out[take] = colour[take]
    return None if np.array_equal(out, grid) else out


def invariant_maps(grids: list[Grid]) -> tuple[int, ...]:
    """The dihedral maps (besides the identity) that leave every one of `grids` unchanged."""
    return tuple(k for k in range(1, 8) if all(np.array_equal(dihedral_apply(g, k), g) for g in grids))
