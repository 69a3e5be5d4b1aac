"""Process-side guards of the search lane: an address-space limit per process and a solve that
turns running out of that memory into a result (found=False, error="memory")."""

from __future__ import annotations

import resource

from submission.arc.grids import Task
from submission.lane.search import LaneResult, solve


def limit_memory(mem_mib: int) -> None:
    """Cap this process's address space (RLIMIT_AS) at `mem_mib` MiB; 0 leaves it alone."""
    if mem_mib > 0:
        limit = mem_mib * 2 ** 20
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def solve_guarded(task: Task, cap_s: float) -> LaneResult:
    """`solve`, with a MemoryError (the address-space limit reached) reported as no program."""
    try:
        return solve(task, cap_s)
    except MemoryError:
        return LaneResult(False, "", tuple(() for _ in range(task.n_test)), cap_s,
                          error="memory")
