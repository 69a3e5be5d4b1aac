"""The in-process watchdog and heartbeats: a silent stage is interrupted, a beating one is not, the
hard cap and the run's end interrupt even a beating stage, and nothing fires once disarmed."""

from __future__ import annotations

import time

import pytest

from submission.runtime.watchdog import Beat, Watchdog, WatchdogInterrupt


def busy(seconds: float, beat=None, every: float = 0.05) -> None:
    """Python work for `seconds` (interruptible), beating every `every` seconds if asked."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if beat is not None:
            beat()
        time.sleep(every)


def test_silence_is_interrupted():
    with Watchdog() as dog:
        dog.arm(0.5, cap_at=time.monotonic() + 60, end=time.monotonic() + 60)
        with pytest.raises(WatchdogInterrupt, match="no progress"):
            busy(10.0)
        assert dog.fired == 1


def test_a_blocking_sleep_is_interrupted():
    with Watchdog() as dog:
        dog.arm(0.5, cap_at=time.monotonic() + 60, end=time.monotonic() + 60)
        t0 = time.monotonic()
        with pytest.raises(WatchdogInterrupt):
            time.sleep(30)  # what the `hang` fault does
        assert time.monotonic() - t0 < 20


def test_beats_keep_slow_work_alive():
    with Watchdog() as dog:
        dog.arm(0.6, cap_at=time.monotonic() + 60, end=time.monotonic() + 60)
        busy(2.0, beat=dog.beat)  # four times the allowance, with progress all along
        dog.disarm()
        assert dog.fired == 0


@pytest.mark.parametrize("which", ["cap", "end"])
def test_cap_and_end_interrupt_even_with_beats(which):
    with Watchdog() as dog:
        soon, later = time.monotonic() + 0.6, time.monotonic() + 60
        dog.arm(60.0, cap_at=soon if which == "cap" else later, end=soon if which == "end" else later)
        with pytest.raises(WatchdogInterrupt, match="hard cap" if which == "cap" else "time budget"):
            busy(10.0, beat=dog.beat)


def test_nothing_fires_after_disarm_and_handler_is_restored():
    import signal

    before = signal.getsignal(signal.SIGUSR1)
    with Watchdog() as dog:
        dog.arm(0.3, cap_at=time.monotonic() + 60, end=time.monotonic() + 60)
        dog.disarm()
        busy(1.0)
        assert dog.fired == 0
    assert signal.getsignal(signal.SIGUSR1) == before


def test_beat_is_rate_limited_but_stage_changes_go_at_once():
    sent = []
    beat = Beat(lambda stage, task: sent.append((stage, task)), min_interval_s=60.0)
    beat.at("ttt", "a")
    for _ in range(100):
        beat()
    beat.at("sample")
    assert sent == [("ttt", "a"), ("sample", None)]
