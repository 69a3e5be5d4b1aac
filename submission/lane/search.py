"""Breadth-first search over compositions of catalogue steps, each state finished by the learned
final steps of rules.py. A program is kept only when it reproduces every demo output exactly;
states whose grids (demos and tests together) were already reached are dropped; the search stops
at the first depth that yields a program, at the depth limit, at the CPU-time cap, or when the
states held reach the memory bound. Answers: up to two distinct ones per test input, from the
programs ranked first by whether their answers keep the symmetry the demos create, then
by cost (fewer, cheaper steps first)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from submission.arc.grids import Grid, Pair, Task
from submission.lane.catalogue import candidate_steps, read_facts
from submission.lane.primitives import fits, invariant_maps
from submission.lane.program import Program, Step, allowed_after
from submission.lane.rules import LEARNERS, learn_cellwise

MAX_DEPTH = 3
MAX_STATE_BYTES = 256 * 2 ** 20  # grids held by one depth's frontier


@dataclass(frozen=True)
class LaneResult:
    found: bool
    program: str  # the best program's text ("" when none)
    answers: tuple[tuple[Grid, ...], ...]  # per test input: up to two distinct grids
    cpu_s: float
    programs: tuple[str, ...] = ()  # the programs behind attempt 1 and attempt 2
    timed_out: bool = False
    states: int = 0
    error: str = ""  # "memory" when the process's memory limit stopped the search

    def to_json(self) -> dict:
        return {"found": self.found, "program": self.program, "programs": list(self.programs),
                "cpu_s": round(self.cpu_s, 3), "timed_out": self.timed_out, "states": self.states,
                "error": self.error}


class _Clock:
    """CPU seconds of this process since the start. Reading the CPU clock is a system call (slow
    on some virtual machines), and a single thread's CPU time never exceeds the wall time, so
    `over` reads the CPU clock only once the wall clock has passed the cap, then every 20 ms."""

    def __init__(self, cap_s: float) -> None:
        self.start = time.process_time()
        self.wall0 = time.monotonic()
        self.cap_s = cap_s
        self.next_read = self.wall0 + cap_s

    def elapsed(self) -> float:
        return time.process_time() - self.start

    def over(self) -> bool:
        now = time.monotonic()
        if now < self.next_read:
            return False
        if self.elapsed() > self.cap_s:
            return True
        self.next_read = now + 0.02
        return False


def _key(grids: tuple[Grid, ...]) -> bytes:
    return b"|".join(bytes(g.shape) + g.tobytes() for g in grids)


def _apply(st: Step, grids: tuple[Grid, ...]) -> tuple[Grid, ...] | None:
    out = []
    for g in grids:
        r = st.fn(g)
        if not fits(r):
            return None
        out.append(r)
    return tuple(out)


def _finish(prog_steps, grids, start, n_demo, ys, bg, found) -> None:
    xs, ts = list(grids[:n_demo]), list(grids[n_demo:])
    depth = len(prog_steps)
    for learn, max_steps in LEARNERS:
        if depth > max_steps:
            continue
        if learn is learn_cellwise and depth:
            # after a step, only narrow cell rules, and only where the step kept every shape
            if any(g.shape != x.shape for g, x in zip(grids, start)):
                continue
            fits_ = learn(xs, ys, ts, bg, wide=False)
        else:
            fits_ = learn(xs, ys, ts, bg)
        for fit in fits_:
            found.append((Program(prog_steps, fit.text, fit.cost), fit.tests))


def created_symmetry(demos: Sequence[Pair]) -> frozenset[int]:
    """The dihedral maps every demo output keeps and no demo input keeps: a symmetry the task
    creates (one the inputs already had, or one output alone, may be chance)."""
    if len(demos) < 2:
        return frozenset()
    kept_in = set().union(*(invariant_maps([p.input]) for p in demos))
    return frozenset(invariant_maps([p.output for p in demos])) - kept_in


def rank(found: list[tuple[Program, tuple[Grid, ...]]],
         demos: Sequence[Pair] = ()) -> list[tuple[Program, tuple[Grid, ...]]]:
    """Programs whose test answers keep the symmetry the demos create (`created_symmetry`) first,
    then by cost, then fewer steps, then text (deterministic); the first of each distinct answer
    tuple only. Every program reproduced the demos, so the symmetry key only orders programs that
    the demos cannot tell apart."""
    created = created_symmetry(demos)

    def breaks(tests: tuple[Grid, ...]) -> bool:
        return bool(created) and not created <= set(invariant_maps(list(tests)))

    found = sorted(found, key=lambda pa: (breaks(pa[1]), pa[0].cost, len(pa[0].steps), pa[0].text()))
    seen, out = set(), []
    for prog, tests in found:
        k = _key(tests)
        if k not in seen:
            seen.add(k)
            out.append((prog, tests))
    return out


def _two_distinct(grids: list[Grid]) -> tuple[Grid, ...]:
    out: list[Grid] = []
    for g in grids:
        if len(out) == 2:
            break
        if not any(o.shape == g.shape and np.array_equal(o, g) for o in out):
            out.append(g)
    return tuple(out)


def solve(task: Task, cap_s: float, max_depth: int = MAX_DEPTH,
          max_state_bytes: int = MAX_STATE_BYTES) -> LaneResult:
    """Search for programs that map every demo input of `task` to its output; answer each test
    input with up to two distinct grids. Pure: no I/O, no global state."""
    clock = _Clock(cap_s)
    n_demo = len(task.train)
    ys = [p.output for p in task.train]
    facts = read_facts(task)
    steps = candidate_steps(facts)
    start = tuple(p.input for p in task.train) + tuple(task.test_inputs)
    frontier: list[tuple[tuple[Step, ...], tuple[Grid, ...]]] = [((), start)]
    seen = {_key(start)}
    found: list[tuple[Program, tuple[Grid, ...]]] = []
    timed_out, states = False, 1
    for depth in range(max_depth + 1):
        for prog_steps, grids in frontier:
            _finish(prog_steps, grids, start, n_demo, ys, facts.bg, found)
            if clock.over():
                timed_out = True
                break
        if found or timed_out or depth == max_depth:
            break
        nxt, held = [], 0
        for prog_steps, grids in frontier:
            for st in steps:
                if not allowed_after(prog_steps[-1] if prog_steps else None, st):
                    continue
                new = _apply(st, grids)
                if new is None:
                    continue
                k = _key(new)
                if k in seen:
                    continue
                seen.add(k)
                nxt.append((prog_steps + (st,), new))
                held += sum(g.nbytes for g in new) + len(k)
                if clock.over():
                    timed_out = True
                    break
                if held > max_state_bytes:
                    break
            if timed_out or held > max_state_bytes:
                break
        states += len(nxt)
        frontier = nxt
        if timed_out:
            break
    ranked = rank(found, task.train)
    answers = tuple(_two_distinct([tests[i] for _, tests in ranked]) for i in range(task.n_test))
    return LaneResult(bool(ranked), ranked[0][0].text() if ranked else "",
                      answers,
                      clock.elapsed(), tuple(p.text() for p, _ in ranked[:2]), timed_out, states)
