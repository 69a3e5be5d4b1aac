"""Kaggle behaviour: find the competition files and the attached model under the input root, decide
between the full run (only when Kaggle re-runs the notebook on the hidden tasks) and a short smoke
run, and write `/kaggle/working/submission.json`. No network: the offline switches
(environment.OFFLINE_ENV) are forced. Small files (submission.json, run.json, task records,
gpu-check output) go to `/kaggle/working`, which Kaggle keeps and caps; adapters go to a scratch
directory with room (`ARC_SCRATCH`, default /tmp/arc-scratch). A smoke run must show that every
stage worked: `smoke_verdict` lists what did not (a smoke run that processed no task checked
nothing: it fails). The pipeline itself is run.py / workers.py; this module only resolves paths
and settings and judges a smoke run's report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submission.config import Config
from submission.environment import INPUT_ROOT, SMOKE_TASKS, TIME_BUDGET_S, WORKING, set_offline
from submission.environment import SAFETY_MARGIN_S as SAFETY_MARGIN_S  # re-exported
from submission.events import SMOKE_FAILURES
from submission.errors import InputError
from submission.arc.tasks import find_kaggle_challenges

SCRATCH = "/tmp/arc-scratch"  # adapters: local disk with room, outside the kept /kaggle/working



@dataclass(frozen=True)
class KaggleSetup:
    challenges: Path
    model: Path
    out: Path
    workdir: Path
    full: bool  # True only in the competition rerun
    limit: int | None
    workers: int
    scratch: Path = Path(SCRATCH)  # adapters and other large temporary files


def is_competition_rerun() -> bool:
    return bool(os.environ.get("KAGGLE_IS_COMPETITION_RERUN"))


def find_model(root: str | Path = INPUT_ROOT) -> Path | None:
    """The attached model: the directory under `root` holding config.json, weights and
    tokenizer.json (a copy nested inside it does not count). InputError naming two of them when
    there are several: the user passes --model."""
    found = []
    for cfg in Path(root).rglob("config.json"):
        d = cfg.parent
        if any(d.glob("*.safetensors")) and (d / "tokenizer.json").exists():
            found.append(d)
    outer = sorted(d for d in found if not any(o != d and d.is_relative_to(o) for o in found))
    if len(outer) > 1:
        raise InputError(f"{len(outer)} model directories under {root}, e.g. {outer[0]} and "
                         f"{outer[1]}; pass --model", file=str(outer[0]), field="--model")
    return outer[0] if outer else None


def gpu_count() -> int:
    """Visible CUDA devices, read without importing torch (the parent must not touch CUDA)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip()])
    nodes = list(Path("/proc/driver/nvidia/gpus").glob("*")) if Path("/proc/driver/nvidia/gpus").exists() else []
    return len(nodes)


def resolve(*, input_root: str | Path = INPUT_ROOT, working: str | Path = WORKING,
            model: str | Path | None = None, full: bool | None = None,
            smoke_tasks: int = SMOKE_TASKS, workers: int | None = None,
            scratch: str | Path | None = None) -> KaggleSetup:
    """Paths and mode for a Kaggle run (InputError naming what is missing). `scratch` defaults to
    $ARC_SCRATCH, else /tmp/arc-scratch."""
    set_offline(os.environ, force=True)
    challenges = find_kaggle_challenges(input_root)
    if challenges is None:
        raise InputError(f"no arc-agi_test_challenges.json under {input_root}: attach the competition data")
    model_dir = Path(model) if model is not None else find_model(input_root)
    if model_dir is None or not (model_dir / "config.json").exists():
        raise InputError(f"no model directory (config.json + *.safetensors + tokenizer.json) under "
                         f"{input_root}; attach the model or pass --model")
    full = is_competition_rerun() if full is None else full
    work = Path(working)
    return KaggleSetup(challenges=challenges, model=model_dir, out=work / "submission.json",
                       workdir=work / "arc-run", full=full, limit=None if full else smoke_tasks,
                       workers=workers if workers is not None else max(1, gpu_count()),
                       scratch=Path(scratch or os.environ.get("ARC_SCRATCH") or SCRATCH))


def kaggle_config(cfg: Config, setup: KaggleSetup, *, budget_s: float | None = None,
                  explicit: frozenset[str] = frozenset()) -> Config:
    """The config with Kaggle's budget and one worker per GPU, and for a smoke run no spare time
    spent (it checks every stage quickly: `budget.max_scale=1`), except for the `section.field`
    keys the user set explicitly (`explicit`, from --set and the config file)."""
    from dataclasses import replace

    budget = cfg.budget
    if budget_s is not None or "budget.time_budget_s" not in explicit:
        budget = replace(budget, time_budget_s=float(budget_s or TIME_BUDGET_S))
    if "budget.workers" not in explicit:
        budget = replace(budget, workers=setup.workers)
    if not setup.full and "budget.max_scale" not in explicit:
        budget = replace(budget, max_scale=min(budget.max_scale, 1.0))
    return replace(cfg, budget=budget)


def smoke_verdict(report: dict[str, Any], *, require_answers: bool = True) -> list[str]:
    """What did not work in a smoke run, one line each (empty: every stage worked): the
    stage-failure counters (events.SMOKE_FAILURES) with the tasks they hit, every recorded fault, and (with
    `require_answers`) every test input that got no parseable answer at all."""
    problems = []
    fallbacks = report.get("fallbacks") or {}
    per_task = report.get("per_task") or {}
    resumed = report.get("resumed") or 0
    if len(per_task) <= resumed:  # nothing trained, sampled or scored: nothing was checked
        problems.append(f"no stage ran: {report.get('tasks', 0)} task(s) in the test file, "
                        f"{resumed} reused from an earlier run, none processed")
    for key, meaning in SMOKE_FAILURES.items():  # a test input with no answer: `require_answers`
        n = fallbacks.get(key) or 0
        if not n:
            continue
        tasks = sorted(t for t, rec in per_task.items() if (rec.get("fallbacks") or {}).get(key))
        problems.append(f"{key} x{n}: {meaning}" + (f" (tasks {', '.join(tasks)})" if tasks else ""))
    for f in report.get("faults") or []:
        tasks = f.get("task") or ", ".join(map(str, f.get("tasks") or [])) or "-"
        problems.append(f"fault in stage {f.get('stage', '?')} (task {tasks}): {f.get('error', '?')}")
    if require_answers:
        for task_id, rec in sorted(per_task.items()):
            for test in rec.get("tests") or []:
                if not test.get("candidates"):
                    problems.append(f"unanswered: task {task_id} test input "
                                    f"{test.get('test_index', '?')}: no parseable answer in "
                                    f"{test.get('samples', 0)} samples")
    return problems
