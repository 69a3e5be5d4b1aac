"""Safe file names for task ids, and a containment check for paths under a work directory.

Task ids come from the challenges file's JSON keys, so they can be any string: `../../x`, `/etc`,
names with control characters or lone surrogates. Every per-task file or directory (records,
adapters, fault markers) is named by `task_file_name`, never by the raw id. This module only
computes names; it creates and deletes nothing.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

MAX_PLAIN = 64  # a plain id longer than this is shortened and hashed like any other
_PLAIN = re.compile(r"[a-z0-9][a-z0-9_-]*")  # used as-is (ARC ids are 8 lowercase hex digits)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_SLUG_LEN = 48
_HASH_LEN = 16  # hex digits of sha256: 64 bits


def task_file_name(task_id: str) -> str:
    """A file name for `task_id`: safe, deterministic, and different for different ids.

    Plain ids (lowercase letters, digits, `_`, `-`, not starting with `_`/`-`, at most 64 chars)
    are used as they are. Any other id becomes a readable ASCII slug, a dot and 16 hex digits of
    the sha256 of its UTF-8 bytes (lone surrogates included): the dot never occurs in a plain
    name, so the two kinds cannot collide, and names differ in more than letter case (safe on
    case-insensitive file systems). The result is at most 65 characters of [A-Za-z0-9_.-] and
    never starts with a dot, `_` or `-`.
    """
    if not isinstance(task_id, str):
        raise TypeError(f"task id must be a string, got {type(task_id).__name__}")
    if len(task_id) <= MAX_PLAIN and _PLAIN.fullmatch(task_id):
        return task_id
    digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    slug = _UNSAFE.sub("_", task_id)[:_SLUG_LEN].strip("_-")
    return f"{slug or 'task'}.{digest}"


def inside(root: str | Path, path: str | Path) -> bool:
    """Whether `path` (after resolving `..` and symbolic links) lies in or under `root`."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file (resolved; an existing file compared by inode)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return pa.samefile(pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


RUN_FILES = ("config.json", "run.json")  # written directly in a run's workdir
RUN_DIRS = ("tasks", "adapters", ".faults")  # per-task files under a run's workdir


def check_run_paths(challenges: str | Path, model: str | Path | None, out: str | Path,
                    workdir: str | Path, scratch: str | Path | None = None) -> None:
    """InputError (naming the argument) if an output of `run` would overwrite one of its inputs:
    --out is the challenges file or lies in the model directory, or a file the run writes in
    --workdir (or adapters under `scratch`) is the challenges file, --out, or the model."""
    from .errors import InputError

    work = Path(workdir)
    written = [work / name for name in RUN_FILES]
    written_dirs = [work / name for name in RUN_DIRS]
    if scratch is not None:
        written_dirs.append(Path(scratch) / "adapters")

    def clobbered(p: Path) -> bool:
        return (any(same_file(p, w) for w in written)
                or any(inside(d, p) for d in written_dirs))

    if same_file(out, challenges):
        raise InputError("--out is the challenges file; it would be overwritten",
                         file=str(out), field="--out")
    if model is not None and inside(model, out):
        raise InputError(f"--out lies in the model directory {model}", file=str(out), field="--out")
    for arg, p in (("--challenges", challenges), ("--out", out)):
        if clobbered(Path(p)):
            raise InputError(f"{arg} is a file the run writes in --workdir {work}", file=str(p),
                             field=arg)
    if model is not None and (same_file(model, work) or clobbered(Path(model))):
        raise InputError(f"--model is --workdir {work} or lies in a folder the run writes there",
                         file=str(model), field="--model")


def check_finetune_paths(model: str | Path, out: str | Path) -> None:
    """InputError if `finetune` would write over its base model (out/model or out/checkpoints)."""
    from .errors import InputError

    if any(inside(Path(out) / name, model) for name in ("model", "checkpoints")):
        raise InputError(f"--model lies where finetune writes its results under --out {out}",
                         file=str(model), field="--model")
