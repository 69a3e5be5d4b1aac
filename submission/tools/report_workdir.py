"""The report's reading side: a run's workdir as the report finds it, none of it trusted.

Does: find the run directory (a workdir or a dry-run's `run/`) and the challenges and solutions files
the run names or that lie beside it, read JSON without raising (a reason instead), and keep the
per-task records of the run's identity and of each task's current content (records.py), listing the
unreadable files and the records of other runs apart. Does not: build the report's data or page
(report.py, report_view.py), score anything, or write a file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from submission.config import ANSWER_SECTIONS
from submission.errors import InputError, SubmissionError
from submission.runtime.records import IDENTITY_KEY, identity_mismatch, task_digest
from submission.arc.tasks import parse_task


class NotARunError(SubmissionError):
    """The report's directory holds none of the files a run writes."""


def _read(path: Path) -> tuple[Any, str | None]:
    """(parsed JSON, None) or (None, why it could not be read)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _d(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _l(x: Any) -> list:
    return x if isinstance(x, list) else []


def run_dir(workdir: str | Path) -> Path:
    """The directory holding run.json / config.json / tasks/: `workdir` itself, or its `run/`
    (a dry-run's layout). NotARunError naming what is missing when neither has any of them."""
    workdir = Path(workdir)
    for d in (workdir, workdir / "run"):
        if any((d / n).exists() for n in ("run.json", "config.json", "tasks")):
            return d
    raise NotARunError(f"{workdir}: not a run directory: none of run.json, config.json, tasks/ "
                       f"found there or under {workdir / 'run'}")


def _find_challenges(workdir: Path, rdir: Path, run: dict) -> Path | None:
    named = run.get("challenges")
    if isinstance(named, str) and Path(named).is_file():
        return Path(named)
    for d in (workdir, workdir / "data", rdir, rdir.parent / "data"):
        found = sorted(d.glob("*challenges*.json")) if d.is_dir() else []
        if found:
            return found[0]
    return None


def _find_solutions(challenges: Path | None, run: dict) -> Path | None:
    named = run.get("solutions")
    if isinstance(named, str) and Path(named).is_file():
        return Path(named)
    if challenges is not None:
        sib = challenges.with_name(challenges.name.replace("challenges", "solutions"))
        if sib != challenges and sib.is_file():
            return sib
    return None


def run_identity(run: dict, config: dict) -> dict[str, Any]:
    """The identity the run's records carry (records.IDENTITY_PARTS keys): the answer-relevant
    sections of run.json's config (else config.json's, written when the run started) and
    run.json's model. A part the workdir does not record is left out, so it is not compared."""
    want: dict[str, Any] = {}
    cfg = _d(run.get("config")) or config
    if all(isinstance(cfg.get(k), dict) for k in ANSWER_SECTIONS):
        want[IDENTITY_KEY] = json.loads(json.dumps({k: cfg[k] for k in ANSWER_SECTIONS}))
    if "model" in run:
        want["model"] = run["model"]
    return want


def _digests(chal: dict[str, dict], path: Path | None) -> dict[str, str]:
    """records.task_digest of every challenge that parses (a task that does not is not compared)."""
    out = {}
    for tid, obj in chal.items():
        try:
            out[tid] = task_digest(parse_task(tid, obj, file=str(path)))
        except InputError:
            continue
    return out


def load_records(rdir: Path, run: dict, want: dict[str, Any] | None = None,
                 digests: dict[str, str] | None = None
                 ) -> tuple[dict[str, dict], list[dict[str, str]], list[dict[str, Any]]]:
    """Per-task records by task id: run.json's `per_task`, updated by any tasks/*.json written after
    run.json (a run still going, or killed). Only records of the run's identity `want` (and of the
    task's current content, `digests`, where a record carries a task digest) count; the others are
    listed apart. Returns (records, unreadable files with reasons, records not from this run)."""
    want, digests = want or {}, digests or {}

    def differs(tid: str, rec: dict, keys: dict[str, Any]) -> list[str]:
        check = dict(keys)
        if tid in digests and "task_digest" in rec:  # records before task digests: not compared
            check["task_digest"] = digests[tid]
        return identity_mismatch(rec, check)

    records, foreign = {}, []
    for tid, rec in _d(run.get("per_task")).items():
        if isinstance(rec, dict):  # run.json's copies carry no config or model: the run's own
            why = differs(tid, rec, {})
            if why:
                foreign.append({"task": tid, "file": "run.json", "differs": why})
            else:
                records[tid] = rec
    run_path = rdir / "run.json"
    run_mtime = run_path.stat().st_mtime if run_path.exists() else -math.inf
    bad: list[dict[str, str]] = []
    tdir = rdir / "tasks"
    for path in sorted(tdir.glob("*.json")) if tdir.is_dir() else []:
        rec, err = _read(path)
        if err is None and not isinstance(rec, dict):
            err = f"top level is {type(rec).__name__}, expected an object"
        if err is not None:
            bad.append({"file": str(path), "error": err})
            continue
        tid = rec.get("task_id") or rec.get("id")
        tid = tid if isinstance(tid, str) else path.stem
        why = differs(tid, rec, want)
        if why:
            foreign.append({"task": tid, "file": str(path), "differs": why})
        elif tid not in records or path.stat().st_mtime > run_mtime:
            records[tid] = rec
    return records, bad, foreign


def _load_challenges(path: Path | None, notes: list[str]) -> dict[str, dict]:
    if path is None:
        return {}
    data, err = _read(path)
    if err is not None or not isinstance(data, dict):
        notes.append(f"challenges file {path} unreadable: {err or 'not a JSON object'}")
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}
