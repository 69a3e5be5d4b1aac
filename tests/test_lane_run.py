"""The program-search lane in a real run on CPU (tiny model, the session's shared engine): where
an injected TTT failure leaves the neural path without answers, the lane's answers replace the
placeholders; with the lane off the placeholders stay."""

from __future__ import annotations

import json

import pytest

from submission.grids import grid_to_list
from submission.run import run
from submission.tasks import export_kaggle
from tests.test_failures import QUICK, RATES
from tests.test_lane_integration import flip_task

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
