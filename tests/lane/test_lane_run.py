"""The program-search lane in a real run on CPU (tiny model, the session's shared engine): where
an injected TTT failure leaves the neural path without answers, the lane's answers replace the
placeholders; with the lane off the placeholders stay."""

from __future__ import annotations

import json

import pytest

from submission.arc.grids import grid_to_list
from submission.runtime.run import run
from submission.arc.tasks import export_kaggle
from tests.helpers import QUICK, flip_task
from tests.helpers import QUICK_RATES as RATES

pytestmark = pytest.mark.slow


def test_injected_ttt_failure_gives_the_lanes_answers(engine, tmp_path, monkeypatch):
    task = flip_task("flip0001", 1)
    challenges, _ = export_kaggle({task.id: task}, tmp_path / "data", "evaluation")
    cfg = QUICK.with_overrides(["sampling.base_model_fallback=false", "lane.enabled=true",
                                "lane.processes=1",
                                "lane.task_cap_s=10"])
    truth = grid_to_list(task.test_outputs[0])
    subs = {}
    for name, extra in (("lane", []), ("off", ["lane.enabled=false"])):
        monkeypatch.setenv("ARC_INJECT_FAULTS", "flip0001:raise")
        out = tmp_path / f"{name}.json"
        report = run(challenges, None, out, tmp_path / name, cfg.with_overrides(extra),
                     engine=engine, calibration=RATES)
        assert report["per_task"]["flip0001"]["fallbacks"]["ttt_failed"] == 1
        subs[name] = (json.loads(out.read_text())["flip0001"][0], report)
    entry, report = subs["lane"]
    assert entry["attempt_1"] == truth
    assert report["per_task"]["flip0001"]["lane"]["program"] == "flip_lr"
    assert report["per_task"]["flip0001"]["fallbacks"]["attempts_from_lane_only"] == 1
    assert report["lane"]["found"] == 1
    entry, report = subs["off"]
    assert entry == {"attempt_1": [[0]], "attempt_2": [[0]]} and "lane" not in report


def test_the_default_dry_run_shows_a_task_the_lane_solves(engine, tiny_model, tmp_path):
    """The dry-run's default set (ARC-AGI-1 evaluation, in the dataset's order) starts with a task the
    lane solves: its score file shows the program, the lane-only score and a right submission."""
    from submission.cli_args import DEFAULT_DRY_RUN_DATASET
    from submission.tools.dry_run import dry_run

    cfg = QUICK.with_overrides(["lane.enabled=true", "lane.processes=1", "lane.task_cap_s=10",
                                "budget.workers=0"])
    result = dry_run(DEFAULT_DRY_RUN_DATASET, "evaluation", 1, str(tiny_model), tmp_path, cfg,
                     calibration=RATES, engine=engine, log=lambda m: None)
    score = json.loads((tmp_path / "score.json").read_text())
    assert score == json.loads(json.dumps({k: v for k, v in result.items() if k != "report"}))
    assert result["lane"]["found"] == 1 and list(result["lane"]["programs"]) == ["00576224"]
    assert result["lane"]["programs"]["00576224"].startswith("tile(")
    assert result["by_policy"]["lane-only"]["score_task_mean"] == 1.0
    assert result["score"]["score_task_mean"] == 1.0  # lane-first: attempt 1 is the program's answer
    assert result["by_policy"]["neural-only"]["score_task_mean"] == 0.0  # the untrained model
