"""Safe file names for task ids, containment checks, and the one check of every command's paths
(`check_paths`: no output on an input or on another output, no FIFO or directory where a file is
read or written).

Task ids come from the challenges file's JSON keys, so they can be any string: `../../x`, `/etc`,
names with control characters or lone surrogates. Every per-task file or directory (records,
adapters, fault markers) is named by `task_file_name`, never by the raw id. This module only
computes names and checks paths; it creates and deletes nothing.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable, NamedTuple

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


RUN_FILES = ("config.json", "run.json", "report.html", "run.lock")  # written directly in a run's workdir
RUN_DIRS = ("tasks", "adapters", ".faults", "unsloth_cache")  # per-task and per-worker files there


class Spot(NamedTuple):
    """One path a command reads or writes. `arg` names the command-line argument; `part`, when
    set, is what the command derives from it (e.g. "run.json in"). kind: "file" or "dir" (a
    directory read or written as a whole: anything under it overlaps it), or "root" (an output
    directory the command writes named files in: it must be a directory, nothing more)."""
    arg: str
    path: str | Path | None
    kind: str = "file"
    part: str = ""

    @property
    def label(self) -> str:
        return f"{self.part} {self.arg}" if self.part else self.arg


def _overlap(a: Spot, b: Spot) -> bool:
    assert a.path is not None and b.path is not None  # check_paths compares given paths only
    if "root" in (a.kind, b.kind):
        return False
    if a.kind == "file" and b.kind == "file":
        return same_file(a.path, b.path)
    return ((a.kind == "dir" and inside(a.path, b.path))
            or (b.kind == "dir" and inside(b.path, a.path)))


def check_paths(inputs: Iterable[Spot], outputs: Iterable[Spot]) -> None:
    """InputError (one line naming both arguments) before anything is written, if an output is an
    input or another output of the same command, a file output is an existing directory, a
    directory output an existing file, or an existing input is not a regular file (a FIFO, a
    device) or directory as its kind says. `path` None: not given."""
    from submission.errors import InputError

    ins = [s for s in inputs if s.path is not None]
    outs = [s for s in outputs if s.path is not None]
    for s in ins:
        assert s.path is not None
        regular_input(s.path, s.label, kind=s.kind)
    for s in outs:
        assert s.path is not None
        p = Path(s.path)
        if s.kind == "file" and p.is_dir():
            raise InputError(f"{s.label} is a directory, expected a file path", file=str(p),
                             field=s.arg)
        if s.kind in ("dir", "root") and p.exists() and not p.is_dir():
            raise InputError(f"{s.label} is not a directory", file=str(p), field=s.arg)
    pairs = [(o, i) for o in outs for i in ins]
    pairs += [(a, b) for n, a in enumerate(outs) for b in outs[n + 1:]]
    for out, other in pairs:
        if out.path is None or other.path is None or not _overlap(out, other):
            continue
        # the argument to change: the one given as is (not derived), the output when both are
        field = out.arg if not out.part or other.part else other.arg
        path = out.path if field == out.arg else other.path
        raise InputError(f"{out.label} {'is' if out.kind == other.kind == 'file' else 'overlaps'} "
                         f"{other.label}; it would be overwritten", file=str(path), field=field)


def regular_input(path: str | Path, arg: str | None = None, *, kind: str = "file") -> None:
    """InputError if an existing input path is not a regular file (kind "file") or a directory
    (kind "dir"): reading a FIFO would block, a device never ends."""
    import stat

    from submission.errors import InputError

    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return  # missing or unreadable: the reader names it
    ok = stat.S_ISDIR(mode) if kind == "dir" else stat.S_ISREG(mode)
    if not ok:
        what = "a directory" if kind == "dir" else "a regular file"
        message = f"{arg} is not {what}" if arg else f"cannot read: not {what}"
        raise InputError(message, file=str(path), field=arg)


def run_spots(challenges: str | Path, model: str | Path | None, out: str | Path,
              workdir: str | Path, scratch: str | Path | None = None, *,
              config: str | Path | None = None,
              calibration: str | Path | None = None) -> tuple[list[Spot], list[Spot]]:
    """(inputs, outputs) of `run` (and `kaggle`): --out, and the files and folders it writes in
    --workdir (adapters under `scratch` when given)."""
    work = Path(workdir)
    ins = [Spot("--challenges", challenges), Spot("--model", model, "dir"),
           Spot("--config", config), Spot("--calibration", calibration)]
    outs = [Spot("--out", out), Spot("--workdir", work, "root")]
    outs += [Spot("--workdir", work / name, part=f"{name} in") for name in RUN_FILES]
    outs += [Spot("--workdir", work / name, "dir", f"{name}/ in") for name in RUN_DIRS]
    if scratch is not None and not same_file(Path(scratch) / "adapters", work / "adapters"):
        outs.append(Spot("scratch", Path(scratch) / "adapters", "dir", "adapters/ in"))
    return ins, outs


def check_run_paths(challenges: str | Path, model: str | Path | None, out: str | Path,
                    workdir: str | Path, scratch: str | Path | None = None, *,
                    config: str | Path | None = None,
                    calibration: str | Path | None = None) -> None:
    """InputError (naming the arguments) if an output of `run` would overwrite one of its inputs
    or another of its outputs (see `run_spots`, `check_paths`)."""
    check_paths(*run_spots(challenges, model, out, workdir, scratch, config=config,
                           calibration=calibration))


def check_finetune_paths(model: str | Path, out: str | Path, *, config: str | Path | None = None,
                         data: str = "") -> None:
    """InputError if `finetune` would write over an input (the base model, the config, a --data
    file or folder): it writes out/model, out/checkpoints, out/finetune.json and out/leakage.json."""
    out = Path(out)
    ins = [Spot("--model", model, "dir"), Spot("--config", config)]
    for item in filter(None, (x.strip() for x in data.split(","))):
        if Path(item).exists():  # dataset:split items name no file
            ins.append(Spot("--data", item, "dir" if Path(item).is_dir() else "file"))
    outs = [Spot("--out", out, "root"),
            Spot("--out", out / "model", "dir", "model/ in"),
            Spot("--out", out / "checkpoints", "dir", "checkpoints/ in"),
            Spot("--out", out / "finetune.json", part="finetune.json in"),
            Spot("--out", out / "leakage.json", part="leakage.json in")]
    check_paths(ins, outs)
