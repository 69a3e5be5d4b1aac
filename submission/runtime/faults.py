"""Fault injection for the crash-safety tests: `ARC_INJECT_FAULTS="task:kind,..."` makes the run
fail at a named point of one task, once per run (a marker file in the workdir records it, so the
re-queued attempt succeeds). Without the variable every call is a no-op.

Kinds and where they strike:
- raise, kill (SIGKILL itself), hang: at the start of the task's TTT
- raise_mid_ttt: after the task's second optimizer step (state left mid-training)
- enospc: when the adapter is saved (OSError "No space left on device")
- corrupt_adapter: after the adapter is saved (its weights overwritten with garbage)
- enospc_record: when the task's record is written
- hang_sample: inside the sampling stage, after its first finished request

Engine faults are not tied to a task and strike every time: `ARC_INJECT_FAULTS="engine:kind"`.
- vllm_rebuild: rebuilding the vLLM engine after a failed call fails (`engine_fault`)
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from submission.errors import SubmissionError
from submission.runtime.paths import task_file_name

ENV = "ARC_INJECT_FAULTS"
POINTS = {"raise": "ttt", "kill": "ttt", "hang": "ttt", "raise_mid_ttt": "ttt_step",
          "enospc": "save", "corrupt_adapter": "saved", "enospc_record": "record",
          "hang_sample": "sample"}


ENGINE_KINDS = ("vllm_rebuild",)


class InjectedFault(SubmissionError):
    """Raised by the `raise` and `raise_mid_ttt` fault kinds."""


def _wanted(task_id: str) -> list[str]:
    spec = os.environ.get(ENV, "")
    return [kind for item in spec.split(",") if item.count(":") == 1
            for tid, kind in [item.split(":")] if tid == task_id]


def inject(task_id: str, point: str, workdir: str | Path, adapter_dir: str | Path | None = None) -> None:
    """Trigger the faults configured for `task_id` at `point` (see the module docstring)."""
    for kind in _wanted(task_id):
        if POINTS.get(kind) != point:
            continue
        marker = Path(workdir) / ".faults" / f"{task_file_name(task_id)}.{kind}"
        if marker.exists():
            continue
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        if kind in ("raise", "raise_mid_ttt"):
            raise InjectedFault(f"injected failure in task {task_id} ({kind})")
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind in ("hang", "hang_sample"):
            time.sleep(10**6)
        if kind in ("enospc", "enospc_record"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(adapter_dir or workdir))
        if kind == "corrupt_adapter" and adapter_dir is not None:
            (Path(adapter_dir) / "adapter_model.safetensors").write_bytes(b"\x00corrupt")



def engine_fault(kind: str) -> None:
    """Raise InjectedFault when `engine:kind` is configured (see the module docstring)."""
    if kind in ENGINE_KINDS and kind in _wanted("engine"):
        raise InjectedFault(f"injected engine failure ({kind})")
