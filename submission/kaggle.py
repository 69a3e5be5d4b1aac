"""Kaggle behaviour: find the competition files and the attached model under the input root, decide
between the full run (only when Kaggle re-runs the notebook on the hidden tasks) and a short smoke
run, and write `/kaggle/working/submission.json`. No network: HF_HUB_OFFLINE is forced. The pipeline
itself is run.py / workers.py; this module only resolves paths and settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .errors import InputError
from .tasks import find_kaggle_challenges

INPUT_ROOT = "/kaggle/input"
WORKING = "/kaggle/working"
SMOKE_TASKS = 3  # interactive/commit runs see a placeholder file: exercise every stage quickly
SAFETY_MARGIN_S = 45 * 60  # start-up, wheel install and final writes inside Kaggle's 12 h


@dataclass(frozen=True)
class KaggleSetup:
    challenges: Path
    model: Path
    out: Path
    workdir: Path
    full: bool  # True only in the competition rerun
    limit: int | None
    workers: int


def is_competition_rerun() -> bool:
    return bool(os.environ.get("KAGGLE_IS_COMPETITION_RERUN"))


def find_model(root: str | Path = INPUT_ROOT) -> Path | None:
    """The attached model: the shallowest directory under `root` holding config.json and weights."""
    found = []
    for cfg in Path(root).rglob("config.json"):
        d = cfg.parent
        if any(d.glob("*.safetensors")) and (d / "tokenizer.json").exists():
            found.append(d)
    return min(found, key=lambda d: (len(d.parts), str(d))) if found else None


def gpu_count() -> int:
    """Visible CUDA devices, read without importing torch (the parent must not touch CUDA)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip()])
    nodes = list(Path("/proc/driver/nvidia/gpus").glob("*")) if Path("/proc/driver/nvidia/gpus").exists() else []
    return len(nodes)


def resolve(*, input_root: str | Path = INPUT_ROOT, working: str | Path = WORKING,
            model: str | Path | None = None, full: bool | None = None,
            smoke_tasks: int = SMOKE_TASKS, workers: int | None = None) -> KaggleSetup:
    """Paths and mode for a Kaggle run (InputError naming what is missing)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
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
                       workers=workers if workers is not None else max(1, gpu_count()))


def kaggle_config(cfg: Config, setup: KaggleSetup, *, budget_s: float | None = None,
                  explicit: frozenset[str] = frozenset()) -> Config:
    """The config with Kaggle's budget and one worker per GPU, except for the `section.field` keys
    the user set explicitly (`explicit`, from --set and the config file)."""
    from dataclasses import replace

    budget = cfg.budget
    if budget_s is not None or "budget.time_budget_s" not in explicit:
        budget = replace(budget, time_budget_s=float(budget_s or 12 * 3600 - SAFETY_MARGIN_S))
    if "budget.workers" not in explicit:
        budget = replace(budget, workers=setup.workers)
    return replace(cfg, budget=budget)
