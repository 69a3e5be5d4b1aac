"""Bad model directories end in one line and exit 2 naming the file, the same on the in-process
path (`--workers 0`) and the worker path; a worker reports what a directory throws instead of
crashing and being respawned; NaN weights give a fault that names the non-finite loss, and run.json
stays valid JSON."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from tests.helpers import one_error_line as _one_error_line
from tests.helpers import run_cli

from submission.errors import InputError
from submission.runtime.modelfiles import check_model_config, raised_by_library, reading_model
from tests.helpers import write_challenges


def _config(d, data) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(data if isinstance(data, str) else json.dumps(data))


@pytest.mark.parametrize("data, field, needle", [
    ("[]", None, "top level is list"),
    ("{", None, "not valid JSON"),
    ({"vocab_size": 8, "pad_token_id": 13}, "vocab_size", "pad_token_id is 13"),
    ({"text_config": {"vocab_size": 8, "pad_token_id": 13}}, "text_config.vocab_size", "13"),
    ({"vocab_size": "16"}, "vocab_size", "positive integer"),
    ({"vocab_size": True}, "vocab_size", "positive integer"),
])
def test_check_model_config_names_file_and_field(tmp_path, data, field, needle):
    _config(tmp_path, data)
    with pytest.raises(InputError, match=needle) as err:
        check_model_config(tmp_path)
    assert err.value.file == str(tmp_path / "config.json") and err.value.field == field


def test_check_model_config_accepts_real_shapes(tmp_path):
    good = {"model_type": "qwen3", "vocab_size": 151936, "pad_token_id": None, "eos_token_id": 151645}
    _config(tmp_path, good)
    assert check_model_config(tmp_path) == good
    _config(tmp_path, {"model_type": "qwen3"})  # no vocab_size: transformers' default applies
    assert check_model_config(tmp_path) == {"model_type": "qwen3"}


def test_reading_model_translates_only_library_errors(tmp_path):
    from transformers import AutoConfig

    _config(tmp_path, {"model_type": "qwen99"})
    with pytest.raises(InputError, match="cannot load its config: ValueError: .*qwen99") as err:
        with reading_model(tmp_path / "config.json", "its config"):
            AutoConfig.from_pretrained(str(tmp_path), local_files_only=True)
    assert err.value.file == str(tmp_path / "config.json") and "\n" not in str(err.value)
    assert raised_by_library(err.value.__cause__)
    with pytest.raises(TypeError, match="ours"):  # raised here, not in a library: a bug
        with reading_model(tmp_path):
            raise TypeError("ours")
    import torch

    with pytest.raises((AssertionError, RuntimeError)) as err:  # a GPU problem, not the files'
        with reading_model(tmp_path):
            torch.cuda.current_device()  # this torch has no CUDA
    assert not isinstance(err.value, InputError)


# --- the run, both paths (slow: loads models) ----------------------------------------------------

def _tiny_copy(tiny_model, dest, edit=None):
    shutil.copytree(tiny_model, dest)
    if edit is not None:
        cfg = json.loads((dest / "config.json").read_text())
        edit(cfg)
        (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def _fewer_rows(tiny_model, dest):
    """The tiny model cut to 12 embedding rows (no pad id): qwen-chat writes ids up to 15."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny_model, dest)
    model = AutoModelForCausalLM.from_pretrained(str(dest), local_files_only=True)
    model.resize_token_embeddings(12)
    model.config.pad_token_id = None
    model.config.eos_token_id = None
    model.save_pretrained(str(dest))
    return dest


def _set(**kv):
    return lambda cfg: cfg.update(kv)


PROGRESS = re.compile(r"^[^:]*: +\d+%\|")  # a progress bar's refresh (tasks, loading weights)
CASES = {  # name: (build, the file the line names, a piece of the line)
    "vocab_below_ids": (lambda t, d: _tiny_copy(t, d, _set(vocab_size=8)), "config.json",
                        "field vocab_size"),
    "config_list": (lambda t, d: (_tiny_copy(t, d), (d / "config.json").write_text("[]"))[0],
                    "config.json", "top level is list"),
    "unknown_model_type": (lambda t, d: _tiny_copy(t, d, _set(model_type="qwen99")), "config.json",
                           "qwen99"),
    "zero_heads": (lambda t, d: _tiny_copy(t, d, _set(num_attention_heads=0)), "",
                   "ZeroDivisionError"),
    "fewer_rows": (_fewer_rows, "config.json", "vocab_size 12 is below the tokenizer's ids"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_model_dir_is_one_line_exit_2_on_both_paths(tmp_path, tiny_model, case):
    build, file, needle = CASES[case]
    model = build(tiny_model, tmp_path / "model")
    ch = write_challenges(tmp_path / "challenges.json", ["t0000001"])
    lines = []
    for workers in ("0", "1"):
        proc = run_cli(tmp_path, ch, model, "--set", f"budget.workers={workers}", timeout=300)
        assert proc.returncode == 2, (workers, proc.stderr[-3000:])
        err = "\n".join(ln for ln in proc.stderr.splitlines() if not PROGRESS.search(ln))
        _one_error_line(err, f"file {model / file}".rstrip("/"), needle)
        lines.append(err.strip())
    assert lines[0] == lines[1]


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_nan_weights_name_the_non_finite_loss(tmp_path, tiny_model, workers):
    from safetensors.torch import load_file, save_file

    model = _tiny_copy(tiny_model, tmp_path / "model")
    state = load_file(str(model / "model.safetensors"))
    state["model.norm.weight"].fill_(float("nan"))
    save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})
    ch = write_challenges(tmp_path / "challenges.json", ["t0000001"])
    proc = run_cli(tmp_path, ch, model, "--set", f"budget.workers={workers}", timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]

    def refuse(token):
        raise AssertionError(f"{token} in run.json")

    report = json.loads((tmp_path / "work" / "run.json").read_text(), parse_constant=refuse)
    errors = [f["error"] for f in report["faults"]]
    assert any(f["stage"] == "ttt" and "training loss is nan at step 1" in f["error"]
               for f in report["faults"]), errors
    assert not any("JSON compliant" in e for e in errors), errors
    assert report["fallbacks"].get("ttt_failed", 0) >= 1
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert list(sub) == ["t0000001"]


@pytest.mark.slow
def test_trainer_stops_on_a_non_finite_loss(tiny_model, tmp_path):
    """Without a scaler the first NaN step stops training; with fp16's scaler (which skips such
    updates) only a run that never saw a finite loss fails, at its last step."""
    import numpy as np
    import torch
    from tests.helpers import SMALL
    from tests.helpers import ttt_samples as _samples

    from submission.model.backends.peft_loader import load_peft
    from submission.errors import NonFiniteLoss
    from submission.arc.formats import get_format
    from submission.model.train import LoRATrainer

    model, tok, _ = load_peft(tiny_model, SMALL)
    with torch.no_grad():
        model.get_base_model().model.norm.weight.fill_(float("nan"))
    fmt = get_format("qwen-chat", tok)
    cfg = SMALL.with_overrides(["ttt.epochs=1", "ttt.grad_accum=1", "ttt.batch_size=2"]).ttt
    samples = _samples(fmt, 6)  # 3 steps
    plain = LoRATrainer(model, pad_id=tok.pad_token_id, backend="peft")
    with pytest.raises(NonFiniteLoss, match="training loss is nan at step 1 of 3"):
        plain.train(samples, np.random.default_rng(0), cfg)
    scaled = LoRATrainer(model, pad_id=tok.pad_token_id, backend="peft",
                         scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(NonFiniteLoss, match="at step 3 of 3"):
        scaled.train(samples, np.random.default_rng(0), cfg)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["config_list", "unknown_model_type", "zero_heads"])
def test_shrink_vocab_on_a_bad_model_dir_is_one_line(tmp_path, tiny_model, capsys, case):
    from submission.cli import main

    build, _, needle = CASES[case]
    model = build(tiny_model, tmp_path / "model")
    code = main(["shrink-vocab", "--model", str(model), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    _one_error_line(err, str(model), needle)
