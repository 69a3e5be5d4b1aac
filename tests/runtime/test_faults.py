"""Crash safety with real worker processes (CPU, tiny model): every fault ends with a valid
submission, every finished task kept, exit code 0, and the fault listed in run.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from submission.arc.submit import validate_submission
from tests.helpers import write_challenges

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
FAST = ["--set", "ttt.lora.r=8", "--set", "ttt.lora.alpha=16", "--set", "ttt.max_samples=4",
        "--set", "sampling.n_views=2", "--set", "selection.rescore_augmentations=2",
        "--set", "selection.max_rescore=2", "--set", "model.max_seq_len=512",
        "--set", "sampling.max_loras=1", "--set", "sampling.unsure_extra_views=0"]


def run_cli(tmp: Path, challenges: Path, model: Path, *extra: str, env_extra=None, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    cmd = [sys.executable, "-m", "submission", "run", "--challenges", str(challenges), "--model",
           str(model), "--out", str(tmp / "submission.json"), "--workdir", str(tmp / "work"),
           *FAST, *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp)
    return proc, time.monotonic() - t0


def check_valid(tmp: Path, challenges: Path) -> dict:
    counts = {k: len(v["test"]) for k, v in json.loads(challenges.read_text()).items()}
    sub = json.loads((tmp / "submission.json").read_text())
    assert validate_submission(sub, counts) == []
    return json.loads((tmp / "work" / "run.json").read_text())


def test_worker_faults_end_in_a_valid_submission(tmp_path, tiny_model):
    ids = ["kill0001", "raise002", "hang0003", "corrupt4", "normal05"]
    ch = write_challenges(tmp_path / "arc-agi_test_challenges.json", ids, bad="badtask6")
    faults = "kill0001:kill,raise002:raise,hang0003:hang,corrupt4:corrupt_adapter"
    proc, _ = run_cli(tmp_path, ch, tiny_model, "--set", "budget.workers=2",
                      "--set", "budget.stall_s=45", env_extra={"ARC_INJECT_FAULTS": faults})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = check_valid(tmp_path, ch)
    done = set(report["per_task"])
    assert done == set(ids), (done, report["faults"])  # killed and hung tasks finished on retry
    killed = report["backends"]["killed"]
    assert any("died" in k["reason"] or "pipe closed" in k["reason"] for k in killed), killed
    hung = [k for k in killed if "no progress" in k["reason"]]  # a hang: no heartbeat for 45 s
    assert hung and all("hang0003" in k["tasks"] for k in hung), killed
    stages = {(f.get("task"), f["stage"]) for f in report["faults"]}
    assert ("badtask6", "load") in stages and ("raise002", "ttt") in stages
    assert ("corrupt4", "ttt") in stages
    corrupt = next(f for f in report["faults"] if f.get("task") == "corrupt4")
    assert "AdapterError" in corrupt["error"]
    assert report["fallbacks"]["bad_task"] == 1 and report["fallbacks"]["ttt_failed"] == 2
    for task_id in ("raise002", "corrupt4"):  # answered by the base model instead
        assert report["per_task"][task_id]["fallbacks"]["ttt_failed"] == 1
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert sub["badtask6"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
    # The same workdir resumes: nothing left to do, the submission stays valid.
    proc, _ = run_cli(tmp_path, ch, tiny_model, "--set", "budget.workers=2", "--set", "budget.stall_s=45")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert check_valid(tmp_path, ch)["resumed"] == len(ids)


def test_budget_running_out_exits_in_time(tmp_path, tiny_model):
    # far more tasks than 45 s can finish on any machine seen (12 once all finished on a fast one)
    ids = [f"task{i:04d}" for i in range(48)]
    ch = write_challenges(tmp_path / "arc-agi_test_challenges.json", ids)
    budget = 45
    proc, took = run_cli(tmp_path, ch, tiny_model, "--set", "budget.workers=2",
                         "--time-budget", str(budget))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert took < budget + 30, took
    report = check_valid(tmp_path, ch)
    finished = len(report["per_task"])
    assert finished < len(ids)
    assert report["fallbacks"]["deadline_skipped_tasks"] + finished >= len(ids)


def test_workers_with_priors_100x_too_optimistic_answer_every_task_with_its_own_adapter(
        tmp_path, tiny_model):
    """The dry-run failure this guards against: sampling deadlines derived from GPU priors killed
    healthy work on a slow machine. Now no estimate kills: with calibration off and every prior
    100x too high, every task finishes with its own adapter and no worker is killed."""
    from submission.config import Config

    ids = ["slow0001", "slow0002", "slow0003"]
    ch = write_challenges(tmp_path / "arc-agi_test_challenges.json", ids)
    b = Config().budget
    priors = [f"budget.prior_{k}_tokens_per_s={getattr(b, f'prior_{k}_tokens_per_s') * 100}"
              for k in ("train", "sample", "score")]
    extra = [x for p in priors + ["budget.calibrate=false"] for x in ("--set", p)]
    proc, _ = run_cli(tmp_path, ch, tiny_model, "--workers", "1", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = check_valid(tmp_path, ch)
    assert report["backends"]["killed"] == []
    assert set(report["per_task"]) == set(ids)
    assert all("ttt" in r and not r["fallbacks"].get("ttt_failed") for r in report["per_task"].values())
    assert not {"tasks_given_up", "deadline_skipped_tasks"} & set(report["fallbacks"])
