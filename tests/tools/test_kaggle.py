"""Tests of submission.tools.kaggle (model discovery, GPU count, input resolution, Kaggle config),
submission.runtime.workers.worker_env, and the CLI `kaggle` command's error path. No models, no GPUs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from submission import cli
from submission.config import Config
from submission.errors import InputError
from submission.tools.kaggle import (
    SAFETY_MARGIN_S,
    SCRATCH,
    SMOKE_TASKS,
    KaggleSetup,
    find_model,
    gpu_count,
    is_competition_rerun,
    kaggle_config,
    resolve,
    smoke_verdict,
)
from submission.runtime.workers import worker_env
from submission.events import SMOKE_FAILURES as STAGE_FAILURES

CHALLENGES_REL = Path("competitions/arc-prize-2026-arc-agi-2/arc-agi_test_challenges.json")
ENV_KEYS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "KAGGLE_IS_COMPETITION_RERUN",
            "CUDA_VISIBLE_DEVICES", "ARC_SCRATCH")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Every env var these functions read or write is restored after each test."""
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # deterministic: no GPUs unless a test says so


def make_model(d: Path, *, config: bool = True, weights: bool = True, tokenizer: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if config:
        (d / "config.json").write_text("{}")
    if weights:
        (d / "model.safetensors").write_bytes(b"")
    if tokenizer:
        (d / "tokenizer.json").write_text("{}")
    return d


def make_input_root(root: Path, *, challenges: bool = True, model: bool = True) -> Path:
    if challenges:
        path = root / CHALLENGES_REL
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({}))
    if model:
        make_model(root / "models" / "x" / "y")
    root.mkdir(parents=True, exist_ok=True)
    return root


# ---------------------------------------------------------------- find_model


def test_find_model_picks_the_outer_dir_and_refuses_two(tmp_path):
    shallow = make_model(tmp_path / "models" / "org" / "m")
    make_model(tmp_path / "models" / "org" / "m" / "sub")  # deeper copy inside
    assert find_model(tmp_path) == shallow
    assert find_model(str(tmp_path)) == shallow  # a str root works too
    deep = make_model(tmp_path / "models" / "org" / "name" / "1")
    assert find_model(tmp_path / "models" / "org" / "name") == deep
    with pytest.raises(InputError, match="2 model directories") as info:
        find_model(tmp_path)  # two unrelated models: no silent choice
    assert str(shallow) in str(info.value) and str(deep) in str(info.value)


def test_find_model_ignores_incomplete_dirs(tmp_path):
    make_model(tmp_path / "a", tokenizer=False)
    make_model(tmp_path / "b", weights=False)
    make_model(tmp_path / "c", config=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("{}")
    (tmp_path / "d" / "weights.bin").write_bytes(b"")  # not safetensors
    (tmp_path / "d" / "tokenizer.json").write_text("{}")
    assert find_model(tmp_path) is None
    full = make_model(tmp_path / "deeper" / "still" / "ok")
    assert find_model(tmp_path) == full


def test_find_model_accepts_sharded_weights(tmp_path):
    d = make_model(tmp_path / "m", weights=False)
    (d / "model-00001-of-00002.safetensors").write_bytes(b"")
    assert find_model(tmp_path) == d


def test_two_models_or_two_test_files_are_refused_naming_both(tmp_path, capsys):
    b = make_model(tmp_path / "b" / "m")
    a = make_model(tmp_path / "a" / "m")
    root = make_input_root(tmp_path / "in", model=False)
    shutil.copytree(tmp_path / "a", root / "a")
    shutil.copytree(tmp_path / "b", root / "b")
    assert cli.main(["kaggle", "--input-root", str(root), "--working", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 model directories" in err
    assert str(root / "a" / "m") in err and str(root / "b" / "m") in err
    assert not (tmp_path / "w").exists()
    with pytest.raises(InputError, match="model directories"):
        find_model(tmp_path)
    assert find_model(tmp_path / "a") == a and find_model(tmp_path / "b") == b
    mounted = root / CHALLENGES_REL
    for name in ("copy1", "copy2"):  # two test files, neither in a competition folder
        (root / name).mkdir()
        shutil.copy(mounted, root / name)
    mounted.unlink()
    assert cli.main(["kaggle", "--input-root", str(root), "--working", str(tmp_path / "w"),
                     "--model", str(a)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 files named arc-agi_test_challenges.json" in err


def test_find_model_none(tmp_path):
    assert find_model(tmp_path) is None
    assert find_model(tmp_path / "does-not-exist") is None


# ---------------------------------------------------------------- gpu_count, rerun flag


@pytest.mark.parametrize("value, n", [("0,1,2,3", 4), ("", 0), ("0", 1), ("2, 3", 2), ("0,", 1)])
def test_gpu_count_honours_cuda_visible_devices(monkeypatch, value, n):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert gpu_count() == n


def test_is_competition_rerun(monkeypatch):
    assert not is_competition_rerun()
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "")
    assert not is_competition_rerun()
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "True")
    assert is_competition_rerun()


# ---------------------------------------------------------------- resolve


def test_resolve_smoke_by_default(tmp_path):
    root = make_input_root(tmp_path / "input")
    working = tmp_path / "working"
    s = resolve(input_root=root, working=working)
    assert isinstance(s, KaggleSetup)
    assert s.challenges == root / CHALLENGES_REL
    assert s.model == root / "models" / "x" / "y"
    assert s.out == working / "submission.json"
    assert s.workdir.parent == working
    assert s.full is False and s.limit == SMOKE_TASKS
    assert s.workers == 1  # no GPU visible -> one worker
    assert resolve(input_root=root, working=working, smoke_tasks=7).limit == 7


def test_resolve_full_in_competition_rerun(tmp_path, monkeypatch):
    root = make_input_root(tmp_path / "input")
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    s = resolve(input_root=root, working=tmp_path / "w")
    assert s.full is True and s.limit is None


def test_resolve_explicit_mode_overrides_env(tmp_path, monkeypatch):
    root = make_input_root(tmp_path / "input")
    s = resolve(input_root=root, working=tmp_path / "w", full=True)
    assert s.full is True and s.limit is None
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    s = resolve(input_root=root, working=tmp_path / "w", full=False, smoke_tasks=2)
    assert s.full is False and s.limit == 2


def test_resolve_workers(tmp_path, monkeypatch):
    root = make_input_root(tmp_path / "input")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert resolve(input_root=root, working=tmp_path / "w").workers == 4
    assert resolve(input_root=root, working=tmp_path / "w", workers=2).workers == 2


def test_resolve_explicit_model(tmp_path):
    root = make_input_root(tmp_path / "input", model=False)
    other = make_model(tmp_path / "elsewhere" / "model")
    assert resolve(input_root=root, working=tmp_path / "w", model=other).model == other
    assert resolve(input_root=root, working=tmp_path / "w", model=str(other)).model == other


def test_resolve_sets_offline_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    root = make_input_root(tmp_path / "input")
    resolve(input_root=root, working=tmp_path / "w")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_resolve_sets_offline_env_even_on_error(tmp_path):
    with pytest.raises(InputError):
        resolve(input_root=tmp_path, working=tmp_path / "w")
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_resolve_missing_challenges_names_root(tmp_path):
    root = make_input_root(tmp_path / "input", challenges=False)
    with pytest.raises(InputError) as exc:
        resolve(input_root=root, working=tmp_path / "w")
    assert str(root) in str(exc.value)
    assert "arc-agi_test_challenges.json" in str(exc.value)
    with pytest.raises(InputError, match="arc-agi_test_challenges.json"):
        resolve(input_root=tmp_path / "missing-root", working=tmp_path / "w")


def test_resolve_missing_model_names_root(tmp_path):
    root = make_input_root(tmp_path / "input", model=False)
    make_model(root / "models" / "broken", tokenizer=False)
    with pytest.raises(InputError) as exc:
        resolve(input_root=root, working=tmp_path / "w")
    assert str(root) in str(exc.value)
    assert "model" in str(exc.value)


def test_resolve_explicit_model_without_config(tmp_path):
    root = make_input_root(tmp_path / "input")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError):
        resolve(input_root=root, working=tmp_path / "w", model=empty)


# ---------------------------------------------------------------- kaggle_config


def setup_with(workers: int, tmp: Path = Path("/tmp/x"), full: bool = False) -> KaggleSetup:
    return KaggleSetup(challenges=tmp / "c.json", model=tmp / "m", out=tmp / "w" / "submission.json",
                       workdir=tmp / "w" / "arc-run", full=full, limit=None if full else 3,
                       workers=workers)


def test_kaggle_config_defaults():
    cfg = kaggle_config(Config(), setup_with(4))
    assert cfg.budget.time_budget_s == 12 * 3600 - SAFETY_MARGIN_S
    assert cfg.budget.workers == 4
    # nothing else changes
    assert cfg.ttt == Config().ttt and cfg.sampling == Config().sampling
    assert cfg.budget.task_cap_s == Config().budget.task_cap_s


def test_a_smoke_run_spends_no_spare_time_the_full_run_does():
    """A smoke run checks every stage quickly: it plans at most the configured amounts; the
    competition rerun keeps the default budget.max_scale (> 1), and an explicit one is kept."""
    assert Config().budget.max_scale > 1
    assert kaggle_config(Config(), setup_with(1)).budget.max_scale == 1.0
    assert kaggle_config(Config(), setup_with(1, full=True)).budget.max_scale == Config().budget.max_scale
    custom = Config().with_overrides(["budget.max_scale=2"])
    kept = kaggle_config(custom, setup_with(1), explicit=frozenset({"budget.max_scale"}))
    assert kept.budget.max_scale == 2.0


def test_kaggle_config_explicit_budget_wins():
    assert kaggle_config(Config(), setup_with(1), budget_s=1234.0).budget.time_budget_s == 1234.0
    custom = Config().with_overrides(["budget.time_budget_s=5000"])
    explicit = frozenset({"budget.time_budget_s"})
    assert kaggle_config(custom, setup_with(1), explicit=explicit).budget.time_budget_s == 5000.0
    assert kaggle_config(custom, setup_with(1)).budget.time_budget_s == 12 * 3600 - SAFETY_MARGIN_S
    assert kaggle_config(custom, setup_with(1), budget_s=777.0).budget.time_budget_s == 777.0


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_kaggle_config_explicit_workers_kept(workers):
    cfg = Config().with_overrides([f"budget.workers={workers}"])
    assert kaggle_config(cfg, setup_with(4), explicit=frozenset({"budget.workers"})).budget.workers == workers


def test_kaggle_config_explicit_workers_one_kept():
    cfg = Config().with_overrides(["budget.workers=1"])
    assert kaggle_config(cfg, setup_with(4), explicit=frozenset({"budget.workers"})).budget.workers == 1


# ---------------------------------------------------------------- worker_env


def test_worker_env_with_gpus(tmp_path):
    env = worker_env(5, 4, tmp_path)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert [worker_env(w, 2, tmp_path)["CUDA_VISIBLE_DEVICES"] for w in range(4)] == ["0", "1", "0", "1"]
    assert env["HF_HUB_OFFLINE"] == "1"
    assert all(isinstance(v, str) for v in env.values())


def test_worker_env_without_gpus(tmp_path):
    env = worker_env(0, 0, tmp_path)
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert env["HF_HUB_OFFLINE"] == "1"


def test_worker_env_compile_location_absolute_per_worker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = worker_env(0, 1, Path("rel-work"))["UNSLOTH_COMPILE_LOCATION"]
    b = worker_env(1, 1, Path("rel-work"))["UNSLOTH_COMPILE_LOCATION"]
    assert Path(a).is_absolute() and Path(b).is_absolute()
    assert a != b
    assert Path(a).is_relative_to(tmp_path.resolve() / "rel-work")
    assert Path(b).is_relative_to(tmp_path.resolve() / "rel-work")


# ---------------------------------------------------------------- CLI


def test_cli_kaggle_without_challenges_exits_2(tmp_path, capsys):
    root = tmp_path / "input"
    root.mkdir()
    code = cli.main(["kaggle", "--input-root", str(root), "--working", str(tmp_path / "w")])
    out, err = capsys.readouterr()
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(root) in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "w" / "submission.json").exists()


def test_cli_kaggle_without_model_exits_2(tmp_path, capsys):
    root = make_input_root(tmp_path / "input", model=False)
    code = cli.main(["kaggle", "--input-root", str(root), "--working", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error:") and str(root) in err


# ---------------------------------------------------------------- scratch


def test_resolve_scratch_default_env_and_explicit(tmp_path, monkeypatch):
    root = make_input_root(tmp_path / "input")
    s = resolve(input_root=root, working=tmp_path / "w")
    assert s.scratch == Path(SCRATCH) == Path("/tmp/arc-scratch")
    assert not s.scratch.is_relative_to(tmp_path / "w")  # adapters stay out of /kaggle/working
    monkeypatch.setenv("ARC_SCRATCH", str(tmp_path / "big-disk"))
    assert resolve(input_root=root, working=tmp_path / "w").scratch == tmp_path / "big-disk"
    assert resolve(input_root=root, working=tmp_path / "w", scratch=tmp_path / "x").scratch == tmp_path / "x"
    assert setup_with(1).scratch == Path(SCRATCH)  # the field has a default


# ---------------------------------------------------------------- smoke_verdict


def clean_report() -> dict:
    """A smoke run where every stage worked (the shape of run.json)."""
    test = {"test_index": 0, "samples": 16, "unparsed": 3,
            "candidates": [{"grid": [[1]], "count": 9}, {"grid": [[2]], "count": 4}]}
    return {"tasks": 120, "fallbacks": {"bad_task": 0, "view_demos_dropped": 2,
                                        "attempt_placeholder": 1, "base_model_sampled_inputs": 1,
                                        "ttt_cut_by_deadline": 1, "unsure_inputs_resampled": 2,
                                        "rescore_vllm_disagrees_use_forward": 1},
            "faults": [], "per_task": {"a": {"fallbacks": {"attempt_placeholder": 1}, "tests": [test]},
                                       "b": {"fallbacks": {}, "tests": [test, dict(test, test_index=1)]}}}


def test_smoke_verdict_clean_run_has_no_problems():
    assert smoke_verdict(clean_report()) == []


def test_smoke_verdict_fails_a_run_that_processed_no_task():
    (problem,) = smoke_verdict({"tasks": 0, "fallbacks": {}, "faults": [], "per_task": {}})
    assert problem.startswith("no stage ran: 0 task(s)")
    report = dict(clean_report(), resumed=2)  # every record reused: nothing was checked
    assert smoke_verdict(report)[0].startswith("no stage ran: 120 task(s) in the test file, 2 reused")
    assert smoke_verdict(dict(clean_report(), resumed=1)) == []


@pytest.mark.parametrize("key", sorted(STAGE_FAILURES))
def test_smoke_verdict_names_each_stage_failure_and_its_tasks(key):
    report = clean_report()
    report["fallbacks"][key] = 2
    report["per_task"]["b"]["fallbacks"][key] = 1
    problems = smoke_verdict(report)
    assert len(problems) == 1 and problems[0].startswith(f"{key} x2: ")
    assert "(tasks b)" in problems[0] and STAGE_FAILURES[key] in problems[0]


def test_each_registered_fallback_fails_a_smoke_run_exactly_when_registered_so():
    """The smoke verdict takes its stage failures from the one registry (events.py)."""
    from submission.events import REGISTRY

    fails = {"rescore_vllm_failed_use_forward", "rescore_prefix_batch_off",
             "vllm_rebuild_failed_use_transformers", "sample_requests_rejected", "ttt_failed",
             "bad_task", "tasks_given_up", "gpu_unusable", "record_write_failed"}
    passes = {"rescore_vllm_disagrees_use_forward", "rescore_prefix_tree_off",
              "rescore_prefix_tree_chunk_halved", "rescore_prefix_batch_chunk_halved",
              "views_too_long_dropped", "rescore_out_of_time_vote", "ttt_adapter_reused",
              "attempt_placeholder", "tasks_answered_by_lane_only"}
    assert fails <= set(STAGE_FAILURES) and not passes & set(STAGE_FAILURES)
    assert set(STAGE_FAILURES) == {n for n, f in REGISTRY.items() if f.fails_smoke}
    for name in set(REGISTRY) - set(STAGE_FAILURES):
        report = clean_report()
        report["fallbacks"][name] = 1
        assert smoke_verdict(report) == [], name


def test_smoke_verdict_lists_faults_and_given_up_tasks():
    report = clean_report()
    report["fallbacks"]["tasks_given_up"] = 2
    report["faults"] = [{"task": "c", "stage": "worker", "error": "worker died (exit code -9)"},
                        {"tasks": ["d", "e"], "stage": "chunk", "error": "RuntimeError('CUDA OOM')"},
                        {"stage": "engine_start", "error": "no GPU"}]
    problems = smoke_verdict(report)
    assert problems[0].startswith("tasks_given_up x2")
    assert "fault in stage worker (task c): worker died (exit code -9)" in problems
    assert "fault in stage chunk (task d, e): RuntimeError('CUDA OOM')" in problems
    assert "fault in stage engine_start (task -): no GPU" in problems


def test_smoke_verdict_unanswered_inputs():
    report = clean_report()
    report["per_task"]["b"]["tests"][1] = {"test_index": 1, "samples": 16, "unparsed": 16, "candidates": []}
    assert smoke_verdict(report) == ["unanswered: task b test input 1: no parseable answer in 16 samples"]
    assert smoke_verdict(report, require_answers=False) == []


# ---------------------------------------------------------------- CLI kaggle: smoke verdict, calibration


class Calls(list):
    """The calls the fake pipeline got; each returns `report`."""

    report: dict


@pytest.fixture
def fake_run(monkeypatch):
    """Replaces the pipeline: records each call, returns `fake_run.report`."""
    calls = Calls()
    calls.report = dict(clean_report(), seconds=1.0)

    def run(challenges, model, out, workdir, cfg, **kwargs):
        calls.append(dict(kwargs, challenges=challenges, model=model, out=out, workdir=workdir, cfg=cfg))
        return calls.report

    monkeypatch.setattr("submission.runtime.run.run", run)
    return calls


def kaggle_argv(root: Path, working: Path, *extra: str) -> list[str]:
    return ["kaggle", "--input-root", str(root), "--working", str(working), *extra]


def test_cli_kaggle_smoke_ok(tmp_path, capsys, fake_run, monkeypatch):
    monkeypatch.setenv("ARC_SCRATCH", str(tmp_path / "scratch"))
    root = make_input_root(tmp_path / "input")
    assert cli.main(kaggle_argv(root, tmp_path / "w", "--smoke")) == 0
    assert "every stage worked" in capsys.readouterr().err
    (call,) = fake_run
    assert call["scratch"] == tmp_path / "scratch" and call["calibration"] is None
    assert call["limit"] == SMOKE_TASKS


def test_cli_kaggle_smoke_failure_exits_1_listing_problems(tmp_path, capsys, fake_run):
    root = make_input_root(tmp_path / "input")
    fake_run.report["fallbacks"]["ttt_failed"] = 1
    fake_run.report["per_task"]["a"]["fallbacks"]["ttt_failed"] = 1
    fake_run.report["faults"] = [{"task": "a", "stage": "ttt", "error": "RuntimeError('boom')"}]
    assert cli.main(kaggle_argv(root, tmp_path / "w", "--smoke")) == 1
    out, err = capsys.readouterr()
    assert json.loads(out.strip())["full"] is False  # the summary line still comes out
    assert "SMOKE RUN FAILED: 2 problem(s)" in err
    assert "ttt_failed x1" in err and "(tasks a)" in err and "RuntimeError('boom')" in err


def test_cli_kaggle_allow_unanswered(tmp_path, capsys, fake_run):
    root = make_input_root(tmp_path / "input")
    fake_run.report["per_task"]["a"]["tests"] = [{"test_index": 0, "samples": 4, "candidates": []}]
    assert cli.main(kaggle_argv(root, tmp_path / "w", "--smoke")) == 1
    assert "unanswered: task a" in capsys.readouterr().err
    assert cli.main(kaggle_argv(root, tmp_path / "w", "--smoke", "--allow-unanswered")) == 0


def test_cli_kaggle_full_run_never_fails_on_fallbacks(tmp_path, capsys, fake_run, monkeypatch):
    root = make_input_root(tmp_path / "input")
    fake_run.report["fallbacks"]["tasks_given_up"] = 5
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    assert cli.main(kaggle_argv(root, tmp_path / "w")) == 0
    assert json.loads(capsys.readouterr().out.strip())["full"] is True
    assert fake_run[0]["limit"] is None


def test_cli_kaggle_passes_the_calibration(tmp_path, capsys, fake_run):
    root = make_input_root(tmp_path / "input")
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"train_tokens_per_s": 1000.0, "sample_tokens_per_s": 2000.0,
                               "score_tokens_per_s": 5000.0, "device": "NVIDIA L4"}))
    assert cli.main(kaggle_argv(root, tmp_path / "w", "--smoke", "--calibration", str(cal))) == 0
    assert fake_run[0]["calibration"]["sample_tokens_per_s"] == 2000.0
    assert fake_run[0]["calibration"]["device"] == "NVIDIA L4"


def test_cli_kaggle_bad_calibration_exits_2_before_running(tmp_path, capsys, fake_run):
    root = make_input_root(tmp_path / "input")
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"train_tokens_per_s": 1000.0, "sample_tokens_per_s": -1}))
    assert cli.main(kaggle_argv(root, tmp_path / "w", "--smoke", "--calibration", str(cal))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(cal) in err and "sample_tokens_per_s" in err
    assert fake_run == []
