"""One run per work directory: `workdir_lock` holds an exclusive lock on `WORKDIR/run.lock` for
the whole run, so a second run on the same directory stops at once (InputError naming the holder)
instead of redoing every task and colliding on adapter directories.

The lock is `fcntl.flock` on the open file: the kernel drops it when the holding process dies, so
the lock file a killed run leaves behind is simply taken over. The file's text (pid, host, start
time) only names the holder in the error message; the holder removes it when the run ends.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from submission.errors import InputError

LOCK_NAME = "run.lock"  # in paths.RUN_FILES: no input or output may be this file


@contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[Path]:
    """Hold WORKDIR/run.lock while the block runs; InputError (naming pid, host and start time
    of the holder) if another live process holds it."""
    path = Path(workdir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"--workdir {workdir} is in use by another run ({_holder(path)}); "
                             f"wait for it to end or use another --workdir",
                             file=str(path), field="--workdir") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break  # locked the file that is there now
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it between our open and flock: lock the new one
    try:
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still held: nobody can lock the old file afterwards
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: the lock file is being written"
