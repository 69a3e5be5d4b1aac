"""Which worker does which tasks, and what happens when a worker dies or overruns.

A pure state machine over (worker id, task ids, time): the supervisor in workers.py drives it with
real processes and the clock, the budget simulation in benchmarks/ with a simulated clock. Tasks go
longest first, in chunks (one adapter each, sampled together); a chunk past its cap, or whose worker
died, is failed: each unfinished task is re-queued once, then given up (fallback answers).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from .budget import Planner, TaskCost, TaskPlan
from .grids import Task

MAX_ATTEMPTS = 2  # first try plus one re-queue
STAGE_SLACK_S = 90.0  # data building, adapter saving, first-call warm-up on top of a stage's time
SAMPLE_SLACK = 6.0  # sampling may take this many times its estimate before it counts as hung


@dataclass
class Assignment:
    worker: int
    tasks: list[str]
    plans: dict[str, TaskPlan]
    started: float
    cap_at: float  # absolute time after which the worker is killed, whatever the stage
    stage_until: float = float("inf")  # deadline of the stage in progress (heartbeats move it)
    stage: str = ""
    done: set[str] = field(default_factory=set)

    def kill_at(self) -> float:
        return min(self.cap_at, self.stage_until)


class Scheduler:
    def __init__(self, tasks: list[Task], planner: Planner, *, chunk_size: int) -> None:
        self.planner, self.chunk_size = planner, max(1, chunk_size)
        self.costs = {t.id: TaskCost.of(t) for t in tasks}
        full = {i: planner.full_seconds(c)[1] for i, c in self.costs.items()}
        self.queue: deque[str] = deque(sorted(full, key=lambda i: -full[i]))  # longest first
        self.active: dict[int, Assignment] = {}
        self.attempts: Counter = Counter()
        self.finished: set[str] = set()
        self.given_up: dict[str, str] = {}

    def _remaining_costs(self) -> list[TaskCost]:
        ids = list(self.queue) + [t for a in self.active.values() for t in a.tasks if t not in a.done]
        return [self.costs[i] for i in ids]

    def assign(self, worker: int, now: float) -> Assignment | None:
        """The next chunk for an idle worker, or None when nothing is left or time is up."""
        if not self.queue or now >= self.planner.deadline:
            return None
        remaining = self._remaining_costs()
        left = self.planner.deadline - now
        ids, plans, expected = [], {}, 0.0
        # A chunk is lost whole if the budget ends mid-way: near the end, chunks shrink to what
        # fits in 80% of the time left (at least one task).
        while self.queue and len(ids) < self.chunk_size:
            plan = self.planner.plan(self.costs[self.queue[0]], now, remaining)
            if ids and expected + plan.expected_s > 0.8 * left:
                break
            ids.append(self.queue.popleft())
            plans[ids[-1]] = plan
            expected += plan.expected_s
        for i in ids:
            self.attempts[i] += 1
        cap = min(sum(p.cap_s for p in plans.values()), self.planner.cfg.budget.task_cap_s * len(ids))
        a = Assignment(worker, ids, plans, now, now + cap)
        self.active[worker] = a
        self.progress(worker, "ttt", ids[0], now)
        return a

    def progress(self, worker: int, stage: str, task_id: str | None, now: float) -> None:
        """A worker's heartbeat: it starts `stage` ('ttt' of one task, or 'sample' of its chunk);
        the stage gets its planned time plus slack before the worker counts as hung."""
        a = self.active.get(worker)
        if a is None:
            return
        if stage == "ttt" and task_id in a.plans:
            allowed = a.plans[task_id].ttt_s * 1.25 + STAGE_SLACK_S
        else:
            allowed = SAMPLE_SLACK * sum(a.plans[t].sample_s for t in a.tasks) + STAGE_SLACK_S
        a.stage, a.stage_until = f"{stage} {task_id or ''}".strip(), now + allowed

    def task_done(self, worker: int, task_id: str) -> None:
        a = self.active.get(worker)
        if a is not None and task_id in a.tasks:
            a.done.add(task_id)
        self.finished.add(task_id)

    def chunk_done(self, worker: int) -> list[str]:
        """The worker finished its chunk; tasks it did not report are failed like a crash."""
        return self.fail(worker, "chunk ended without a result")

    def fail(self, worker: int, reason: str) -> list[str]:
        """Fail the worker's unfinished tasks: re-queue once, else give up. Returns given-up ids."""
        a = self.active.pop(worker, None)
        if a is None:
            return []
        gave_up = []
        for t in reversed([t for t in a.tasks if t not in a.done and t not in self.finished]):
            if self.attempts[t] < MAX_ATTEMPTS:
                self.queue.appendleft(t)
            else:
                self.given_up[t] = reason
                gave_up.append(t)
        return gave_up

    def overdue(self, now: float) -> list[int]:
        return [w for w, a in self.active.items() if now > a.kill_at()]

    def complete(self) -> bool:
        return not self.queue and not self.active

    def unfinished(self) -> list[str]:
        """Tasks neither finished nor given up (at the end: skipped by the deadline)."""
        return [t for t in self.costs if t not in self.finished and t not in self.given_up]
