"""Durable file writes shared by every stage (the lowest floor: imports nothing of the package).

`write_json_atomic` / `write_text_atomic` are how every output file is written (submission.json,
records, run.json, configs): a reader sees the old file or the whole new one, never a torn write.
`replace_dir_atomic` is how a whole directory is written (adapters, checkpoints, merged models).
This module reads nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_json_atomic(path: str | Path, obj: object) -> None:
    """Write obj as compact JSON, atomically (`write_text_atomic`)."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)  # fails before any write
    write_text_atomic(path, text)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text so that a reader sees the old file or the whole new one: temp file in the same
    directory, flush + fsync, os.replace. Creates parent directories. The file gets the mode a
    plain open() would give (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable where the OS allows it
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        except OSError:
            pass  # some filesystems cannot fsync a directory; the file itself is already synced
        finally:
            os.close(dir_fd)


def replace_dir_atomic(path: str | Path, fill: Callable[[Path], object]) -> Path:
    """Write a whole directory: `fill(tmp)` writes the contents into `tmp`, an empty sibling named
    `.{name}.tmp{pid}` (one a killed run left behind is removed first), then the old `path` is
    removed and `tmp` renamed into its place. A reader sees the old directory, the whole new one,
    or (between the removal and the rename) none, never a partial one; a `fill` that raises
    leaves the old directory as it was and no `tmp` behind. Creates parent directories. The
    contents are not fsynced (what `fill` writes is its own business). Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        fill(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not atomic, but nothing else here is)
    os.umask(mask)
    return mask
