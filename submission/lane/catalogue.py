"""The steps the search may compose for one task, with parameters read from its demos: colours
present or added, scale factors from the shapes, mask colours that vanish, and so on. A step
family is offered only where the demos' shapes allow it (e.g. extraction only when every output
is smaller than its input)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from submission.arc.grids import Task
from submission.lane import objects as ob
from submission.lane import primitives as pr
from submission.lane.program import Step, step


@dataclass(frozen=True)
class Facts:
    bg: int
    same_shape: bool  # every demo output has its input's shape
    smaller: bool  # every demo output is no larger than its input and one is smaller
    larger: bool
    in_colours: frozenset[int]  # colours in any demo input
    added: frozenset[int]  # colours in some demo output and in no demo input
    grown: frozenset[int]  # colours with more cells in every same-shape output than input
    vanished: frozenset[int]  # colours in every demo input and in no demo output
    ratios: frozenset[tuple[int, int]]  # integer (out/in) or (in/out) shape ratios, signed


def read_facts(task: Task) -> Facts:
    xs, ys = [p.input for p in task.train], [p.output for p in task.train]
    counts = sum(np.bincount(x.ravel(), minlength=10) for x in xs)
    assert isinstance(counts, np.ndarray)  # a task has at least one demo (tasks._items)
    bg = int(counts.argmax())
    same = all(x.shape == y.shape for x, y in zip(xs, ys))
    smaller = not same and all(y.shape[0] <= x.shape[0] and y.shape[1] <= x.shape[1]
                               for x, y in zip(xs, ys))
    larger = not same and all(y.shape[0] >= x.shape[0] and y.shape[1] >= x.shape[1]
                              for x, y in zip(xs, ys))
    colours_in = [set(np.unique(x).tolist()) for x in xs]
    colours_out = [set(np.unique(y).tolist()) for y in ys]
    in_all = set.union(*colours_in)
    out_all = set.union(*colours_out)
    grown = set()
    if same:
        grown = {c for c in range(10) if all(
            (y == c).sum() > (x == c).sum() for x, y in zip(xs, ys))}
    vanished = set.intersection(*colours_in) - out_all
    ratios = set()
    for sign, pairs in ((1, zip(xs, ys)), (-1, zip(ys, xs))):
        rs = {(b.shape[0] / a.shape[0], b.shape[1] / a.shape[1]) for a, b in pairs}
        if len(rs) == 1:
            ry, rx = rs.pop()
            if ry == int(ry) and rx == int(rx) and (ry, rx) != (1, 1):
                ratios.add((sign * int(ry), sign * int(rx)))
    return Facts(bg, same, smaller, larger, frozenset(in_all), frozenset(out_all - in_all),
                 frozenset(grown), frozenset(vanished), frozenset(ratios))


def candidate_steps(f: Facts) -> list[Step]:
    """Steps in the order the search tries them (cheap and common first)."""
    bg = f.bg
    steps: list[Step] = [step(pr.DIHEDRAL_NAMES[k], 1.0, lambda g, k=k: pr.dihedral(g, k),
                              kind="dihedral") for k in range(1, 8)]
    if not f.same_shape:
        steps.append(step("crop_to_content", 1.0, lambda g: pr.crop_to_content(g, bg),
                          kind="equivariant"))
    ratios = set(f.ratios)
    if f.larger:  # a step before may change the shape the ratio was read from
        ratios |= {(2, 2), (3, 3)}
    if f.smaller:
        ratios |= {(-2, -2), (-3, -3)}
    for ry, rx in sorted(ratios):
        if ry > 0:
            steps.append(step("scale_up", 1.0, lambda g, a=ry, b=rx: pr.scale_up(g, a, b),
                              ky=ry, kx=rx))
        else:
            steps.append(step("scale_down", 1.0, lambda g, a=-ry, b=-rx: pr.scale_down(g, a, b),
                              ky=-ry, kx=-rx))
    if f.smaller:
        for c in sorted(f.in_colours):
            steps.append(step("crop_to_colour", 1.2, lambda g, c=c: pr.crop_to_colour(g, c),
                              kind="equivariant", colour=c))
        steps.append(step("trim", 1.2, pr.trim, kind="equivariant"))
        steps.append(step("block_reduce", 1.5, lambda g: pr.block_reduce(g, bg),
                          kind="equivariant"))
        for sel in ob.SELECTORS:
            for diag in (False, True):
                for by_colour in (True, False):
                    for only in (False, True):
                        steps.append(step(
                            "extract", 1.5,
                            lambda g, s=sel, d=diag, c=by_colour, o=only: ob.extract(g, bg, d, c, s, o),
                            select=sel, diag=diag, by_colour=by_colour, only_object=only))
        for m in sorted(f.in_colours):
            steps.append(step("symmetry_patch", 1.5, lambda g, m=m: pr.symmetry_patch(g, m),
                              first_only=True, mask=m))
    if f.same_shape:
        for d, name in enumerate(("down", "up", "left", "right")):
            steps.append(step("gravity", 1.5, lambda g, d=d: pr.gravity(g, d, bg),
                              kind="equivariant", to=name))
        for c in sorted(f.added | f.grown):
            steps.append(step("fill_enclosed", 1.5, lambda g, c=c: pr.fill_enclosed(g, bg, c),
                              kind="equivariant", colour=c))
        for k in range(1, 8):
            steps.append(step("symmetrize", 1.5, lambda g, k=k: pr.symmetrize(g, k, bg),
                              kind="equivariant", image=pr.DIHEDRAL_NAMES[k]))
        for name in pr.SYMMETRY_GROUPS:
            steps.append(step("symmetrize_group", 1.5,
                              lambda g, name=name: pr.symmetrize_group(g, name, bg),
                              kind="equivariant", group=name))
        for m in sorted(f.vanished | {bg}):
            steps.append(step("complete_symmetry", 1.5,
                              lambda g, m=m: pr.complete_symmetry(g, m), first_only=True, mask=m))
            steps.append(step("complete_period", 1.5, lambda g, m=m: pr.complete_period(g, m),
                              first_only=True, mask=m))
        for e in sorted(f.in_colours - {bg}):
            for c in sorted(f.grown):
                steps.append(step("connect", 1.8, lambda g, e=e, c=c: pr.connect(g, e, c, bg),
                                  kind="equivariant", ends=e, colour=c))
        for c in sorted(f.grown & f.in_colours):
            for direction in pr.LINE_DIRECTIONS:
                for stop in (False, True):
                    steps.append(step(
                        "lines", 2.0,
                        lambda g, c=c, d=direction, s=stop: pr.draw_lines(g, c, d, bg, s),
                        kind="equivariant", colour=c, to=direction, stop=stop))
        for sel in ("largest", "smallest", "unique_colour", "unique_shape"):
            for diag in (False, True):
                steps.append(step("keep_only", 2.0,
                                  lambda g, s=sel, d=diag: ob.keep_only(g, bg, d, False, s),
                                  kind="equivariant", select=sel, diag=diag))
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            steps.append(step("shift", 2.0, lambda g, a=dy, b=dx: pr.shift(g, a, b, bg),
                              dy=dy, dx=dx))
    return steps
