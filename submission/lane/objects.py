"""Objects of a grid: connected components (one colour or any non-background colour, 4- or
8-neighbourhood), their bounding boxes and features, selection and extraction."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from submission.arc.grids import Grid
from submission.lane.primitives import outside_mask

_N4 = ((1, 0), (-1, 0), (0, 1), (0, -1))
_N8 = _N4 + ((1, 1), (1, -1), (-1, 1), (-1, -1))


@dataclass(frozen=True)
class Obj:
    cells: tuple[np.ndarray, np.ndarray]  # row and column indices
    top: int
    left: int
    bottom: int  # exclusive
    right: int  # exclusive
    colour: int  # the most frequent colour of the object
    n_colours: int

    @property
    def size(self) -> int:
        return len(self.cells[0])

    @property
    def area(self) -> int:
        return (self.bottom - self.top) * (self.right - self.left)

    def mask(self) -> np.ndarray:
        """The object's cells inside its bounding box."""
        m = np.zeros((self.bottom - self.top, self.right - self.left), dtype=bool)
        m[self.cells[0] - self.top, self.cells[1] - self.left] = True
        return m

    def shape_key(self) -> bytes:
        m = self.mask()
        return bytes(m.shape) + np.packbits(m).tobytes()


def _key(grid: Grid) -> bytes:
    return bytes(grid.shape) + grid.tobytes()


@lru_cache(maxsize=4096)
def _components_cached(key: bytes, bg: int, diag: bool, by_colour: bool) -> tuple[Obj, ...]:
    h, w = key[0], key[1]
    grid = np.frombuffer(key[2:], dtype=np.uint8).reshape(h, w)
    steps = _N8 if diag else _N4
    label = np.full((h, w), -1, dtype=np.int32)
    objs: list[Obj] = []
    for y0 in range(h):
        for x0 in range(w):
            c0 = grid[y0, x0]
            if c0 == bg or label[y0, x0] >= 0:
                continue
            label[y0, x0] = len(objs)
            stack, ys, xs = [(y0, x0)], [], []
            while stack:
                y, x = stack.pop()
                ys.append(y)
                xs.append(x)
                for dy, dx in steps:
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and label[ny, nx] < 0:
                        c = grid[ny, nx]
                        if c != bg and (not by_colour or c == c0):
                            label[ny, nx] = len(objs)
                            stack.append((ny, nx))
            ya, xa = np.array(ys), np.array(xs)
            counts = np.bincount(grid[ya, xa], minlength=10)
            objs.append(Obj((ya, xa), int(ya.min()), int(xa.min()), int(ya.max()) + 1,
                            int(xa.max()) + 1, int(counts.argmax()), int((counts > 0).sum())))
    return tuple(objs)


def components(grid: Grid, bg: int, diag: bool = False, by_colour: bool = True) -> tuple[Obj, ...]:
    """Connected components of non-`bg` cells in reading order of their first cell."""
    return _components_cached(_key(grid), bg, diag, by_colour)


def _unique_by(objs: tuple[Obj, ...], key) -> Obj | None:
    values = [key(o) for o in objs]
    hits = [o for o, v in zip(objs, values) if values.count(v) == 1]
    return hits[0] if len(hits) == 1 else None


def _extreme(objs: tuple[Obj, ...], key, largest: bool) -> Obj | None:
    values = [key(o) for o in objs]
    best = max(values) if largest else min(values)
    hits = [o for o, v in zip(objs, values) if v == best]
    return hits[0] if len(hits) == 1 else None


SELECTORS = {
    "largest": lambda objs: _extreme(objs, lambda o: o.size, True),
    "smallest": lambda objs: _extreme(objs, lambda o: o.size, False),
    "largest_box": lambda objs: _extreme(objs, lambda o: o.area, True),
    "smallest_box": lambda objs: _extreme(objs, lambda o: o.area, False),
    "unique_colour": lambda objs: _unique_by(objs, lambda o: o.colour),
    "unique_shape": lambda objs: _unique_by(objs, Obj.shape_key),
    "unique_size": lambda objs: _unique_by(objs, lambda o: o.size),
    "most_colours": lambda objs: _extreme(objs, lambda o: o.n_colours, True),
}


def select(grid: Grid, bg: int, diag: bool, by_colour: bool, selector: str) -> Obj | None:
    objs = components(grid, bg, diag, by_colour)
    if len(objs) < 2 or len(objs) > 60:
        return None
    return SELECTORS[selector](objs)


def extract(grid: Grid, bg: int, diag: bool, by_colour: bool, selector: str,
            only_object: bool) -> Grid | None:
    """The bounding box of the selected object; with `only_object`, other cells become `bg`."""
    obj = select(grid, bg, diag, by_colour, selector)
    if obj is None:
        return None
    if not only_object:
        return grid[obj.top:obj.bottom, obj.left:obj.right].copy()
    out = np.full((obj.bottom - obj.top, obj.right - obj.left), bg, dtype=np.uint8)
    out[obj.cells[0] - obj.top, obj.cells[1] - obj.left] = grid[obj.cells]
    return out


def keep_only(grid: Grid, bg: int, diag: bool, by_colour: bool, selector: str) -> Grid | None:
    """The grid with every object but the selected one erased to `bg` (same shape)."""
    obj = select(grid, bg, diag, by_colour, selector)
    if obj is None:
        return None
    out = np.full_like(grid, bg)
    out[obj.cells] = grid[obj.cells]
    return out


def object_features(grid: Grid, obj: Obj, objs: tuple[Obj, ...]) -> dict[str, object]:
    """Features a learned recolouring rule may read (see rules.recolour_objects)."""
    sizes = sorted({o.size for o in objs})
    h, w = grid.shape
    m = obj.mask()
    return {
        "colour": obj.colour,
        "size": obj.size,
        "size_rank": sizes.index(obj.size),
        "size_rank_desc": len(sizes) - 1 - sizes.index(obj.size),
        "shape": obj.shape_key(),
        "touches_border": obj.top == 0 or obj.left == 0 or obj.bottom == h or obj.right == w,
        "has_hole": _has_hole(m),
        "is_rect": bool(m.all()),
        "colour_size": (obj.colour, obj.size),
    }


def _has_hole(mask: np.ndarray) -> bool:
    padded = np.pad(~mask, 1, constant_values=True)
    return bool((padded & ~outside_mask(padded.astype(np.uint8), padded)).any())
