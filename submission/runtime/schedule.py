"""Which worker does which tasks, and what happens when a worker dies or overruns.

A pure state machine over (worker id, task ids, time): the supervisor in workers.py drives it with
real processes and the clock, the in-process loop in run.py with a watchdog thread, the budget
simulation in benchmarks/ with a simulated clock. Tasks go longest first, in chunks (one adapter
each, sampled together).

A chunk counts as hung only when it stops making progress: no heartbeat (an optimizer step, a
finished generate request or search round, a scoring call) for its stall allowance. Estimates never
kill: a machine slower than every prior is slow, not hung. The allowance is the larger of
`budget.stall_s` and STALL_FACTOR times the longest healthy gap seen on this machine, doubled for
every earlier attempt of a task in the chunk, so a retry always gets more room. The per-task hard
cap (`budget.task_cap_s`) still bounds a chunk. A failed chunk's unfinished tasks are re-queued
once, then given up (fallback answers).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field, replace

from submission.runtime.budget import Planner, Remaining, TaskCost, TaskPlan
from submission.arc.grids import Task

MAX_ATTEMPTS = 2  # first try plus one re-queue
CHUNK_SHARE = 0.33  # a chunk is expected to take at most this share of the time left
STALL_FACTOR = 4.0  # a stall is this many times longer than the longest healthy gap seen so far


@dataclass
class Assignment:
    worker: int
    tasks: list[str]
    plans: dict[str, TaskPlan]
    started: float
    cap_at: float  # absolute time after which the worker is killed, whatever the stage
    stall_s: float  # longest silence allowed between two heartbeats
    last_beat: float = 0.0
    longest_gap: float = 0.0  # longest silence seen in this chunk so far
    stage: str = ""
    done: set[str] = field(default_factory=set)

    def kill_at(self) -> float:
        return min(self.cap_at, self.last_beat + self.stall_s)

    def why(self, now: float) -> str:
        """The kill reason at `now` (a stall or the hard cap)."""
        if now > self.cap_at:
            return f"chunk past its hard cap ({now - self.started:.0f} s, stage '{self.stage}')"
        return (f"stage '{self.stage}' made no progress for {now - self.last_beat:.0f} s "
                f"(stall allowance {self.stall_s:.0f} s)")


class Scheduler:
    def __init__(self, tasks: list[Task], planner: Planner, *, chunk_size: int) -> None:
        self.planner, self.chunk_size = planner, max(1, chunk_size)
        self.costs = {t.id: TaskCost.of(t) for t in tasks}
        full = {i: planner.full_seconds(c)[1] for i, c in self.costs.items()}
        self.queue: deque[str] = deque(sorted(full, key=lambda i: -full[i]))  # longest first
        self.remaining = Remaining(self.costs.values())  # neither finished nor given up
        self._left = set(self.costs)
        self.active: dict[int, Assignment] = {}
        self.attempts: Counter = Counter()
        self.finished: set[str] = set()
        self.given_up: dict[str, str] = {}
        self.healthy_gap = 0.0  # longest heartbeat gap of chunks that ended normally

    def note_gap(self, seconds: float) -> None:
        """A silence known to be healthy on this machine (calibration's slowest call, a chunk's gap)."""
        self.healthy_gap = max(self.healthy_gap, float(seconds))

    def stall_allowance(self, ids: list[str]) -> float:
        """Silence allowed for a chunk of `ids`: doubled per earlier attempt of any of its tasks."""
        base = max(self.planner.cfg.budget.stall_s, STALL_FACTOR * self.healthy_gap)
        return base * 2 ** max(0, max(self.attempts[i] for i in ids) - 1)

    def _leave(self, task_id: str) -> None:
        """`task_id` is finished or given up: it no longer counts in the remaining work."""
        if task_id in self._left:
            self._left.discard(task_id)
            self.remaining.remove(self.costs[task_id])

    def assign(self, worker: int, now: float) -> Assignment | None:
        """The next chunk for an idle worker, or None when nothing is left or time is up."""
        if not self.queue or now >= self.planner.deadline:
            return None
        remaining = self.remaining
        left = self.planner.deadline - now
        ids: list[str] = []
        plans, expected = {}, 0.0
        # A chunk is lost whole if the budget ends mid-way: chunks shrink to what is expected to
        # take at most CHUNK_SHARE of the time left (at least one task), so the workers' last
        # chunks end together, well before the deadline, even when each task takes hours.
        while self.queue and len(ids) < self.chunk_size:
            plan = self.planner.plan(self.costs[self.queue[0]], now, remaining)
            if ids and expected + plan.expected_s > CHUNK_SHARE * left:
                break
            ids.append(self.queue.popleft())
            plans[ids[-1]] = plan
            expected += plan.expected_s
        for i in ids:
            self.attempts[i] += 1
        cap = self.planner.cfg.budget.task_cap_s * len(ids)
        due = self.planner.answer_s(now, cap)  # the chunk's cap, not one task's
        plans = {i: replace(p, answer_s=due) for i, p in plans.items()}
        a = Assignment(worker, ids, plans, now, now + cap, self.stall_allowance(ids), last_beat=now)
        self.active[worker] = a
        self.progress(worker, "ttt", ids[0], now)
        return a

    def progress(self, worker: int, stage: str, task_id: str | None, now: float) -> None:
        """A worker's heartbeat from inside `stage` ('ttt' of one task, 'sample' or 'rescore' of
        its chunk): it made progress at `now`."""
        a = self.active.get(worker)
        if a is None:
            return
        a.longest_gap = max(a.longest_gap, now - a.last_beat)
        a.stage, a.last_beat = f"{stage} {task_id or ''}".strip(), now

    def task_done(self, worker: int, task_id: str) -> None:
        a = self.active.get(worker)
        if a is not None and task_id in a.tasks:
            a.done.add(task_id)
        self.finished.add(task_id)
        self._leave(task_id)

    def chunk_done(self, worker: int, now: float | None = None) -> list[str]:
        """The worker finished its chunk; tasks it did not report are failed like a crash. The
        chunk's heartbeat gaps (up to `now`) were healthy: later allowances cover them."""
        a = self.active.get(worker)
        if a is not None:
            end_gap = 0.0 if now is None else now - a.last_beat
            self.note_gap(max(a.longest_gap, end_gap))
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
                self._leave(t)
        return gave_up

    def observe(self, task_id: str, rec: dict) -> None:
        """Feed a finished task's measured stage times back into the planner's rates."""
        t = rec.get("timing") or {}
        ttt = rec.get("ttt") or {}
        rescored = sum(x["rescored_pairs"] if isinstance(x.get("rescored_pairs"), int) else
                       sum(len(c.get("rescore_logprobs") or []) for c in x.get("candidates") or [])
                       for x in rec.get("tests") or [])
        # speculative search: the chunk's accepted share, and this task's share of its verification
        search = rec.get("chunk_search") or {}
        paths, chunk_verify_s = search.get("paths") or 0, search.get("verify_s") or 0.0
        verify_s = t.get("verify_s", 0.0) if chunk_verify_s > 0 else 0.0
        verify_tokens = ((search.get("verify_prompt_tokens", 0) + search.get("verify_tokens", 0))
                         * verify_s / chunk_verify_s if chunk_verify_s > 0 else 0.0)
        self.planner.observe(self.costs[task_id], ttt_s=ttt.get("seconds", 0.0),
                             train_tokens=ttt.get("tokens", 0), sample_s=t.get("sample_s", 0.0),
                             views=rec.get("views", 0), rescore_s=t.get("rescore_s", 0.0),
                             rescored=rescored,
                             accepted=search.get("drafts_accepted", 0) / paths if paths else None,
                             verify_s=verify_s, verify_tokens=verify_tokens,
                             dfs_threshold=(rec.get("plan") or {}).get("dfs_threshold"))

    def overdue(self, now: float) -> list[int]:
        return [w for w, a in self.active.items() if now > a.kill_at()]

    def complete(self) -> bool:
        return not self.queue and not self.active

    def unfinished(self) -> list[str]:
        """Tasks neither finished nor given up (at the end: skipped by the deadline)."""
        return [t for t in self.costs if t not in self.finished and t not in self.given_up]
