"""Tests of submission.cli, run in-process through `main(argv)` (exit code + captured output), plus
one subprocess check that every `--help` works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from submission import cli
from submission.arc.tasks import load_dataset
from submission.commands import COMMANDS
from tests.helpers import cli_main as run_cli

ROOT = Path(__file__).resolve().parents[1]
N_EXPORT = 5
CH_NAME, SOL_NAME = "arc-agi_evaluation_challenges.json", "arc-agi_evaluation_solutions.json"


def write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def assert_one_line_error(err: str, *needles: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`export --limit 5` of ARC-AGI-2 evaluation: (dir, challenges, solutions, exit code, stdout)."""
    out = tmp_path_factory.mktemp("export")
    code = cli.main(["export", "--dataset", "arc-agi-2", "--split", "evaluation",
                     "--out", str(out), "--limit", str(N_EXPORT)])
    ch, sol = out / CH_NAME, out / SOL_NAME
    return out, ch, sol, code


@pytest.fixture(scope="module")
def perfect_submission(exported, tmp_path_factory):
    """attempt_1 = truth, attempt_2 = [[0]] for every test output."""
    _, _, sol, _ = exported
    sols = json.loads(sol.read_text())
    sub = {tid: [{"attempt_1": g, "attempt_2": [[0]]} for g in grids] for tid, grids in sols.items()}
    return write_json(tmp_path_factory.mktemp("sub") / "submission.json", sub), sub


# --- export / validate / score -----------------------------------------------------------------

def test_export_writes_both_files(exported):
    out, ch, sol, code = exported
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([CH_NAME, SOL_NAME])
    challenges, solutions = json.loads(ch.read_text()), json.loads(sol.read_text())
    tasks = load_dataset("arc-agi-2", "evaluation")
    first = list(tasks)[:N_EXPORT]
    assert list(challenges) == first and list(solutions) == first
    for tid in first:
        assert all("output" not in item for item in challenges[tid]["test"])
        assert len(solutions[tid]) == tasks[tid].n_test
        assert len(challenges[tid]["train"]) == len(tasks[tid].train)


def test_export_prints_what_it_wrote(tmp_path, capsys):
    code, out, err = run_cli(capsys, "export", "--dataset", "arc-agi-2", "--split", "evaluation",
                             "--out", tmp_path, "--limit", "2")
    assert code == 0 and "Traceback" not in err
    assert "2 tasks" in out and CH_NAME in out and SOL_NAME in out


def test_validate_perfect_submission(exported, perfect_submission, capsys):
    _, ch, _, _ = exported
    path, _ = perfect_submission
    code, out, err = run_cli(capsys, "validate", "--submission", path, "--challenges", ch)
    assert code == 0, err
    assert "OK" in out and err == ""


def test_score_json_perfect(exported, perfect_submission, capsys):
    _, _, sol, _ = exported
    path, sub = perfect_submission
    code, out, err = run_cli(capsys, "score", "--submission", path, "--solutions", sol, "--json")
    assert code == 0 and err == ""
    assert len(out.strip().splitlines()) == 1
    report = json.loads(out)
    assert isinstance(report, dict)
    assert {"tasks", "test_outputs", "score_task_mean", "score_output_mean", "per_task"} <= set(report)
    assert report["tasks"] == N_EXPORT
    assert report["test_outputs"] == sum(len(v) for v in sub.values())
    assert report["score_task_mean"] == 1.0 and report["score_output_mean"] == 1.0
    assert report["per_task"] == {tid: 1.0 for tid in sub}


def test_score_text_output(exported, perfect_submission, capsys):
    _, _, sol, _ = exported
    path, _ = perfect_submission
    code, out, err = run_cli(capsys, "score", "--submission", path, "--solutions", sol)
    assert code == 0 and err == ""
    assert "1.0000" in out and f"tasks {N_EXPORT}" in out


def test_score_missing_task_warns(exported, perfect_submission, tmp_path, capsys):
    _, _, sol, _ = exported
    _, sub = perfect_submission
    dropped = next(iter(sub))
    partial = write_json(tmp_path / "partial.json", {k: v for k, v in sub.items() if k != dropped})
    code, out, err = run_cli(capsys, "score", "--submission", partial, "--solutions", sol, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["score_task_mean"] == pytest.approx((N_EXPORT - 1) / N_EXPORT)
    assert report["score_task_mean"] < 1.0 and report["score_output_mean"] < 1.0
    assert report["per_task"][dropped] == 0.0
    warnings = [line for line in err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and dropped in warnings[0] and str(partial) in warnings[0]


def test_validate_broken_submission_lists_every_problem(exported, perfect_submission, tmp_path,
                                                        capsys):
    _, ch, _, _ = exported
    _, sub = perfect_submission
    ids = list(sub)
    broken = json.loads(json.dumps(sub))
    del broken[ids[0]]  # missing task
    del broken[ids[1]][0]["attempt_2"]  # missing attempt_2
    broken[ids[2]][0]["attempt_1"] = "not a grid"  # non-grid
    broken[ids[3]][0]["attempt_2"] = [[1, 2], [3]]  # ragged grid
    path = write_json(tmp_path / "broken.json", broken)
    code, out, err = run_cli(capsys, "validate", "--submission", path, "--challenges", ch)
    assert code == 2
    assert "Traceback" not in err
    problems = err.strip().splitlines()
    assert len(problems) == 4, err
    assert any(ids[0] in p and "missing" in p for p in problems)
    assert any(ids[1] in p and "attempt_2" in p for p in problems)
    assert any(ids[2] in p and "attempt_1" in p for p in problems)
    assert any(ids[3] in p and "attempt_2" in p for p in problems)
    assert "4 problem(s)" in out


# --- bad input: exit 2, one line naming file / task / field ------------------------------------

def test_ragged_grid_in_challenges(perfect_submission, tmp_path, capsys):
    bad = write_json(tmp_path / "bad_challenges.json", {
        "abc": {"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[1]]}]}})
    path, _ = perfect_submission
    code, _, err = run_cli(capsys, "validate", "--submission", path, "--challenges", bad)
    assert code == 2
    assert_one_line_error(err, str(bad), "abc", "train[0].input")


@pytest.mark.parametrize("command", ["validate", "score"])
def test_missing_file(exported, perfect_submission, tmp_path, capsys, command):
    _, ch, sol, _ = exported
    missing = tmp_path / "does_not_exist.json"
    other = ["--challenges", ch] if command == "validate" else ["--solutions", sol]
    code, _, err = run_cli(capsys, command, "--submission", missing, *other)
    assert code == 2
    assert_one_line_error(err, str(missing), "not found")
    path, _ = perfect_submission
    other_flag = "--challenges" if command == "validate" else "--solutions"
    code, _, err = run_cli(capsys, command, "--submission", path, other_flag, missing)
    assert code == 2
    assert_one_line_error(err, str(missing))


@pytest.mark.parametrize("text", ["{not json", "", '{"a": 1, "a": 2}', "[1, 2]"])
def test_invalid_json(exported, tmp_path, capsys, text):
    _, _, sol, _ = exported
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    code, _, err = run_cli(capsys, "score", "--submission", bad, "--solutions", sol)
    assert code == 2
    assert_one_line_error(err, str(bad))


def test_bad_solutions_grid(perfect_submission, tmp_path, capsys):
    path, _ = perfect_submission
    bad = write_json(tmp_path / "sol.json", {"t1": [[[1, 10]]]})
    code, _, err = run_cli(capsys, "score", "--submission", path, "--solutions", bad)
    assert code == 2
    assert_one_line_error(err, str(bad), "t1", "solutions[0]")


def test_export_to_a_file_path_is_a_clean_error(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    code, _, err = run_cli(capsys, "export", "--dataset", "arc-agi-2", "--split", "evaluation",
                           "--out", target, "--limit", "1")
    assert code == 2
    assert_one_line_error(err, str(target))


def test_export_limit_zero_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(capsys, "export", "--dataset", "arc-agi-2", "--split", "evaluation",
                "--out", tmp_path, "--limit", "0")
    assert exc.value.code == 2
    assert "--limit: must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / CH_NAME).exists()


# --- models and runs -----------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_model_architects(tmp_path, capsys):
    from transformers import AutoTokenizer

    from submission.arc.formats import get_format

    out = tmp_path / "tiny"
    code, stdout, err = run_cli(capsys, "tiny-model", out, "--format", "architects")
    assert code == 0 and "Traceback" not in err
    assert "architects" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert any(n.endswith(".safetensors") or n == "pytorch_model.bin" for n in names), names
    config = json.loads((out / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(out))
    fmt = get_format("architects", tok)
    assert config["vocab_size"] == len(tok)
    assert config["eos_token_id"] == fmt.eos_id


@pytest.mark.parametrize("command", ["run", "dry-run"])
def test_bad_set_fails_before_any_model_loads(exported, tmp_path, capsys, monkeypatch, command):
    _, ch, _, _ = exported

    def must_not_run(*args, **kwargs):
        raise AssertionError("the pipeline started despite a bad --set")

    monkeypatch.setattr("submission.runtime.run.run", must_not_run)
    monkeypatch.setattr("submission.tools.dry_run.dry_run", must_not_run)
    workdir = tmp_path / "work"
    args = (["run", "--challenges", ch, "--model", tmp_path / "no_model", "--out",
             tmp_path / "submission.json", "--workdir", workdir]
            if command == "run" else ["dry-run", "--limit", "1", "--workdir", workdir])
    code, out, err = run_cli(capsys, *args, "--set", "ttt.bogus_key=3")
    assert code == 2 and out == ""
    assert_one_line_error(err, "bogus_key")
    assert not workdir.exists() and not (tmp_path / "submission.json").exists()
    code, _, err = run_cli(capsys, *args, "--set", "nosection.r=3")
    assert code == 2
    assert_one_line_error(err, "nosection")


def test_missing_config_file_on_run(exported, tmp_path, capsys):
    _, ch, _, _ = exported
    missing = tmp_path / "cfg.toml"
    code, _, err = run_cli(capsys, "run", "--challenges", ch, "--model", tmp_path / "m",
                           "--out", tmp_path / "s.json", "--workdir", tmp_path / "w",
                           "--config", missing)
    assert code == 2
    assert_one_line_error(err, str(missing))


@pytest.mark.slow
def test_run_with_missing_model_dir_is_a_clean_error(exported, tmp_path, capsys):
    _, ch, _, _ = exported
    model = tmp_path / "no_model_here"
    code, _, err = run_cli(capsys, "run", "--challenges", ch, "--model", model,
                           "--out", tmp_path / "s.json", "--workdir", tmp_path / "w",
                           "--limit", "1", "--set", "ttt.backend=peft",
                           "--set", "sampling.backend=transformers")
    assert code == 2
    assert_one_line_error(err, str(model))


# --- argparse --------------------------------------------------------------------------------

def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["export", "--dataset", "arc-agi-3", "--split", "evaluation", "--out", "x"])
    assert info.value.code == 2
    assert "arc-agi-3" in capsys.readouterr().err


def test_help_in_a_subprocess():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1"}
    for argv in [[]] + [[name] for name in COMMANDS]:
        proc = subprocess.run([sys.executable, "-m", "submission", *argv, "--help"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (argv, proc.stderr)
        assert proc.stdout.startswith("usage: python -m submission"), argv
        assert "Traceback" not in proc.stderr
        if not argv:
            for name in COMMANDS:
                assert name in proc.stdout
