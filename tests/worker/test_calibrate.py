"""Tests of submission.worker.calibrate: the synthetic task, the calibration file (load/write/checks) and,
on the shared CPU engine (slow), a real calibration that leaves the adapter as it found it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from submission.worker.calibrate import (
    RATE_KEYS,
    calibrate,
    load_calibration,
    planner_rates,
    synthetic_task,
    write_calibration,
)
from submission.errors import InputError
from tests.helpers import SMALL

RATES = {"train_tokens_per_s": 2000.0, "sample_tokens_per_s": 3000, "score_tokens_per_s": 9e3}


def test_synthetic_task_is_reproducible_and_arc_sized():
    a = synthetic_task(np.random.default_rng(1))
    b = synthetic_task(np.random.default_rng(1))
    c = synthetic_task(np.random.default_rng(2))
    assert len(a.train) == 3 and a.n_test == 1
    assert all(p.input.shape == (12, 12) and p.output.shape == (12, 12) for p in a.train)
    assert all(np.array_equal(p.output, np.fliplr(p.input)) for p in a.train)
    assert np.array_equal(a.test_outputs[0], np.fliplr(a.test_inputs[0]))
    assert all(np.array_equal(x.input, y.input) for x, y in zip(a.train, b.train))
    assert not np.array_equal(a.train[0].input, c.train[0].input)
    assert len(np.unique(a.train[0].input)) > 5  # random colours
    flipped = synthetic_task(np.random.default_rng(1), rule="flipud", side=5, demos=2)
    assert flipped.train[0].input.shape == (5, 5) and len(flipped.train) == 2
    assert np.array_equal(flipped.train[0].output, np.flipud(flipped.train[0].input))


def test_write_then_load_roundtrip(tmp_path):
    path = write_calibration(tmp_path / "sub" / "calibration.json",
                             {**RATES, "device": "cpu", "train_loss": float("nan"), "model": tmp_path})
    data = load_calibration(path)
    assert {k: data[k] for k in RATE_KEYS} == RATES
    assert data["device"] == "cpu" and data["train_loss"] is None  # NaN is not JSON
    assert data["model"] == str(tmp_path)
    assert planner_rates(data) == {"train": 2000.0, "sample": 3000.0, "score": 9000.0}
    assert all(isinstance(v, float) for v in planner_rates(data).values())


@pytest.mark.parametrize("key", RATE_KEYS)
@pytest.mark.parametrize("bad", [0, -1.0, None, "fast", True, [1.0]])
def test_load_rejects_bad_rates_naming_file_and_field(tmp_path, key, bad):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**RATES, key: bad}))
    with pytest.raises(InputError) as exc:
        load_calibration(path)
    assert str(path) in str(exc.value) and key in str(exc.value)
    with pytest.raises(InputError):
        write_calibration(tmp_path / "w.json", {**RATES, key: bad})
    assert not (tmp_path / "w.json").exists()


@pytest.mark.parametrize("text", ["Infinity", "NaN"])
def test_load_rejects_non_finite(tmp_path, text):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(RATES).replace("9000.0", text))
    with pytest.raises(InputError, match="score_tokens_per_s"):
        load_calibration(path)


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", "[" * 100000, '{"train_tokens_per_s": 1}'])
def test_load_rejects_bad_content(tmp_path, content):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(InputError) as exc:
        load_calibration(path)
    assert str(path) in str(exc.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        load_calibration(tmp_path / "missing.json")


# --- on the shared CPU engine --------------------------------------------------------------


def _lora_state(model):
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


@pytest.mark.slow
def test_calibrate_on_the_engine_measures_and_resets(engine, tmp_path):
    import torch

    engine.trainer.reset()  # the shared engine may hold another test's adapter weights
    before = _lora_state(engine.trainer.model)
    beats = []
    cal = calibrate(engine, SMALL, seed=3, steps=3, beat=lambda: beats.append(1))
    after = _lora_state(engine.trainer.model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "calibration leaked into the adapter"
    init = engine.trainer._init
    assert all(torch.equal(after[k], init[k]) for k in init)
    for key in RATE_KEYS + ("seconds", "train_step_s", "generate_call_s", "score_call_s"):
        assert math.isfinite(cal[key]) and cal[key] > 0, key
    assert cal["steps"] == 3 and cal["train_tokens"] > 0
    assert cal["views"] == min(8, SMALL.sampling.max_num_seqs)
    assert cal["prompt_tokens"] > 3 * 2 * 12 * 12  # three 12x12 demo pairs at least
    assert cal["device"] == "cpu" and cal["sampler_backend"] == engine.info["sampler_backend"]
    if engine.sampler is not engine.forward:  # vLLM and the forward pass are both measured
        assert cal["score_forward_tokens_per_s"] > 0
        assert cal["score_logprob"] == pytest.approx(cal["score_forward_logprob"], abs=1e-2)
    scorers = 1 if engine.sampler is engine.forward else 2
    assert len(beats) == 3 + 1 + 1 + scorers  # steps, one generate and one verify call, the scores
    assert cal["verify_tokens"] == cal["generated_tokens"] > 0  # every answer checked as a draft
    assert cal["verify_prompt_tokens"] > 3 * 2 * 12 * 12 * cal["views"]  # under views of its own
    assert cal["verify_tokens_per_s"] == pytest.approx(
        (cal["verify_prompt_tokens"] + cal["verify_tokens"]) / cal["verify_call_s"])  # planner units
    assert planner_rates(cal)["verify"] == cal["verify_tokens_per_s"] and cal["decode_steps_per_s"] > 0
    loaded = load_calibration(write_calibration(tmp_path / "c.json", cal))
    assert loaded["train_tokens_per_s"] == cal["train_tokens_per_s"]


@pytest.mark.slow
def test_calibrate_is_deterministic_in_what_it_counts(engine):
    a = calibrate(engine, SMALL, seed=5, steps=2)
    b = calibrate(engine, SMALL, seed=5, steps=2)
    for key in ("train_tokens", "prompt_tokens", "generated_tokens", "score_tokens", "views"):
        assert a[key] == b[key], key
    assert a["score_logprob"] == pytest.approx(b["score_logprob"], abs=1e-4)
