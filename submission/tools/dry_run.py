"""Dry-run: export public tasks, run the pipeline on them, score every requested policy.

Without a model it builds a tiny random one (a pipeline check: expect a score near 0) with a CPU-sized
config. This module adds no pipeline logic of its own; it wires export, run and scoring.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from submission.config import Config, flatten
from submission.arc.grids import as_grid
from submission.arc.scoring import load_solutions, score_submission
from submission.runtime.files import write_json_atomic
from submission.arc.submit import build_submission
from submission.arc.tasks import export_kaggle, load_dataset

# A CPU-sized pipeline check: small adapter, few samples and views (every stage still runs), no
# scaling up (the tiny model's answers are noise: spare time on a CPU would only lengthen the run).
# The tests' config (tests/helpers.py SMALL) is these plus its own SMALL_DELTAS.
TINY_OVERRIDES = ("ttt.lora.r=8", "ttt.lora.alpha=16", "ttt.max_samples=8", "sampling.n_views=8",
                  "sampling.unsure_extra_views=4",
                  "selection.rescore_augmentations=4", "selection.max_rescore=4",
                  "model.max_seq_len=4096", "budget.max_scale=1")


def dry_run(dataset: str, split: str, limit: int | None, model: str | None, workdir: Path,
            cfg: Config, *, all_policies: bool = True, calibration: dict[str, Any] | None = None,
            explicit: frozenset[str] = frozenset(), engine: Any = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """`engine`: a built engine on `model` to reuse (tests); None builds one as `run` does."""
    from submission.runtime.run import run

    workdir.mkdir(parents=True, exist_ok=True)
    tasks = load_dataset(dataset, split)
    if limit:
        tasks = dict(list(tasks.items())[:limit])
    challenges, solutions = export_kaggle(tasks, workdir / "data", split)
    if model is None:
        from submission.model.tiny import make_tiny_model

        model = str(make_tiny_model(workdir / "tiny-model", cfg.model.format))
        cfg = cfg.with_overrides([o for o in TINY_OVERRIDES if o.split("=")[0] not in _set_keys(cfg) | explicit])
        log(f"no --model given: using a tiny UNTRAINED random model at {model}; this checks the "
            "pipeline end to end, expect the model's score near 0 (neural-only; the program-search "
            "lane's answers are scored as lane-only)")
    out = workdir / "submission.json"
    report = run(challenges, model, out, workdir / "run", cfg, all_policies=all_policies,
                 calibration=calibration, engine=engine)
    sols = load_solutions(solutions)
    result: dict[str, Any] = {"dataset": dataset, "split": split, "model": str(model),
                              "submission": str(out), "fallbacks": report["fallbacks"],
                              "seconds": round(report["seconds"], 1),
                              "score": score_submission(json.loads(out.read_text()), sols).to_json()}
    if all_policies:
        result["by_policy"] = {}
        for policy, sub in policy_submissions(report).items():
            path = workdir / f"submission.{policy}.json"
            write_json_atomic(path, sub)
            s = score_submission(sub, sols)
            result["by_policy"][policy] = {"score_task_mean": s.score_task_mean,
                                           "score_output_mean": s.score_output_mean}
    if report.get("lane") is not None:  # the program-search lane's own answers (lane/)
        result["lane"] = {**report["lane"], "programs": {
            t: r["lane"]["program"] for t, r in report["per_task"].items()
            if (r.get("lane") or {}).get("found")}}
        lane_score = result.get("by_policy", {}).get("lane-only", {}).get("score_task_mean")
        log(f"program-search lane: {result['lane']['found']} of {result['lane']['tasks']} tasks "
            f"with a verified program" + ("" if lane_score is None else
                                          f", lane-only score {lane_score:.3f}"))
    write_json_atomic(workdir / "score.json", result)
    if (workdir / "run" / "report.html").exists():  # written by run(), solutions found beside
        result["report"] = str(workdir / "run" / "report.html")
    return result


def policy_submissions(report: dict[str, Any]) -> dict[str, dict]:
    """One submission per selection policy, from the attempts every task recorded for each."""
    per: dict[str, dict[str, list[list]]] = {}
    counts = {}
    for task_id, rec in report["per_task"].items():
        tests = sorted(rec.get("tests", []), key=lambda t: t["test_index"])
        counts[task_id] = len(tests)
        for t in tests:
            for policy, attempts in t.get("attempts_by_policy", {}).items():
                per.setdefault(policy, {}).setdefault(task_id, []).append(
                    [as_grid(g) for g in attempts])
    return {p: build_submission(counts, answers) for p, answers in per.items()}


def _set_keys(cfg: Config) -> set[str]:
    """Fields that differ from the defaults (a user's choice wins over TINY_OVERRIDES; one equal
    to the default is passed as `explicit` by the CLI)."""
    default, mine = flatten(Config().to_dict()), flatten(cfg.to_dict())
    return {k for k, v in mine.items() if v != default[k]}
