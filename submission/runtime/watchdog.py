"""Heartbeats and the in-process watchdog.

`Beat` is what the stages call from inside their work (after an optimizer step, a finished generate
request, a scoring call): cheap, rate-limited, forwarded to whoever watches (a worker's pipe to the
supervisor, or the in-process `Watchdog`).

`Watchdog` guards runs without worker processes (`budget.workers=0`): a daemon thread checks the
last heartbeat, the chunk's hard cap and the run's end, and interrupts the main thread with
`WatchdogInterrupt` when one is passed. The interrupt arrives at the next Python bytecode: a hang
inside one long C call (a stuck CUDA kernel) is only caught by the worker path, where the supervisor
kills the process. This module decides nothing about tasks; run.py re-queues them.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

POLL_S = 0.25
_SIGNAL = signal.SIGUSR1


class WatchdogInterrupt(BaseException):
    """Raised in the main thread by the in-process watchdog (a stall, the hard cap or the run's
    end). A BaseException, so that library code catching Exception does not swallow it."""


class Beat:
    """A heartbeat callable for one stage: `beat()` forwards (stage, task) to `send`, at most once
    every `min_interval_s` unless the stage changed."""

    def __init__(self, send: Callable[[str, str | None], None], min_interval_s: float = 1.0) -> None:
        self.send, self.min_interval_s = send, min_interval_s
        self.stage: tuple[str, str | None] = ("", None)
        self._last = -float("inf")

    def at(self, stage: str, task_id: str | None = None) -> None:
        """Enter `stage` (for `task_id`) and beat at once."""
        self.stage = (stage, task_id)
        self._last = -float("inf")
        self()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.min_interval_s:
            self._last = now
            self.send(*self.stage)


class Watchdog:
    """Interrupts the main thread when the armed chunk stops beating, passes its cap or the end."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.limits: tuple[float, float, float] | None = None  # (stall_s, cap_at, end)
        self.reason = ""
        self.fired = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        main = threading.main_thread().ident
        assert main is not None  # the main thread has started
        self._main = main
        self._previous: Any = None
        self.active = False  # False where no signal handler can be installed (not the main thread)
        self._armed = False

    def __enter__(self) -> "Watchdog":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(_SIGNAL, self._interrupt)
            self.active = True
            self._thread = threading.Thread(target=self._watch, name="arc-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.limits = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.active:
            signal.signal(_SIGNAL, self._previous)

    def arm(self, stall_s: float, cap_at: float, end: float) -> None:
        self.last, self.reason = time.monotonic(), ""
        self.limits = (stall_s, cap_at, end)
        self._armed = True

    def disarm(self) -> None:
        """After this returns no interrupt is raised, even for a signal already on its way."""
        self._armed = False
        self.limits = None

    def beat(self, *_: object) -> None:
        self.last = time.monotonic()

    def _interrupt(self, signum: int, frame: Any) -> None:
        if self._armed and self.reason:  # a signal that arrives after disarm is ignored
            raise WatchdogInterrupt(self.reason)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            limits = self.limits
            if limits is None:
                continue
            stall_s, cap_at, end = limits
            now = time.monotonic()
            if now > end:
                reason = "the run's time budget ended"
            elif now > cap_at:
                reason = "chunk past its hard cap"
            elif now - self.last > stall_s:
                reason = f"no progress for {now - self.last:.0f} s (stall allowance {stall_s:.0f} s)"
            else:
                continue
            self.reason, self.limits = reason, None
            self.fired += 1
            signal.pthread_kill(self._main, _SIGNAL)
