"""Fault injection for the crash-safety tests: `ARC_INJECT_FAULTS="task:kind,..."` makes a worker
fail at a named point of one task, once per run (a marker file in the workdir records it, so the
re-queued attempt succeeds). Kinds: raise, kill (SIGKILL itself), hang, corrupt_adapter. Without the
variable every call is a no-op."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .errors import SubmissionError

ENV = "ARC_INJECT_FAULTS"


class InjectedFault(SubmissionError):
    """Raised by the `raise` fault kind."""


def _wanted(task_id: str) -> list[str]:
    spec = os.environ.get(ENV, "")
    return [kind for item in spec.split(",") if item.count(":") == 1
            for tid, kind in [item.split(":")] if tid == task_id]


def inject(task_id: str, point: str, workdir: str | Path, adapter_dir: str | Path | None = None) -> None:
    """Trigger the faults configured for `task_id` at `point` ('ttt' or 'saved')."""
    for kind in _wanted(task_id):
        if (kind == "corrupt_adapter") != (point == "saved"):
            continue
        marker = Path(workdir) / ".faults" / f"{task_id}.{kind}"
        if marker.exists():
            continue
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        if kind == "raise":
            raise InjectedFault(f"injected failure in task {task_id}")
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "hang":
            time.sleep(10**6)
        if kind == "corrupt_adapter" and adapter_dir is not None:
            (Path(adapter_dir) / "adapter_model.safetensors").write_bytes(b"\x00corrupt")
