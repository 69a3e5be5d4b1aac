"""NVARC's published tokenizer files exactly as published (tests/model/published_nvarc.py): a WordLevel
model whose unk token is only an added token, so encoding any other piece raises the tokenizers
binding's plain Exception. Format detection must take that as "this format does not fit" (only
that error), and `show-prompt` and a one-task `run` with default settings must work on them.
The expected prompt ids come from the independent NVARC layout encoder (tests/helpers.py) that
test_checkpoints also uses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.model.published_nvarc import ADDED, IDS, MODEL_VOCAB, answer_always, published_nvarc_model, \
    write_published_nvarc
from tests.helpers import NVARC_VOCAB, nvarc_text, vocab_ids
from tests.helpers import run_cli as run_subprocess

from submission.errors import FormatError
from submission.arc.formats import ArchitectsFormat, detect_format, get_format
from submission.arc.tasks import tasks_to_challenges
from submission.model.tokenizer import load_tokenizer
from submission.runtime.run_report import Backends
from tests.helpers import write_challenges


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return write_published_nvarc(tmp_path_factory.mktemp("published") / "nvarc")


def test_the_files_are_as_published(published):
    tj = json.loads((published / "tokenizer.json").read_text(encoding="utf-8"))
    assert tj["model"]["type"] == "WordLevel" and tj["model"]["unk_token"] == "<|endoftext|>"
    assert tj["model"]["vocab"] == MODEL_VOCAB and "<|endoftext|>" not in tj["model"]["vocab"]
    assert [(t["id"], t["content"], t["special"]) for t in tj["added_tokens"]] == [
        (13, "<|endoftext|>", True), (14, "<|im_start|>", True), (15, "<|im_end|>", True)]
    cfg = json.loads((published / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "Qwen2Tokenizer" and cfg["add_bos_token"] is False
    assert sorted(cfg["added_tokens_decoder"]) == ["13", "14", "15"]
    assert json.loads((published / "added_tokens.json").read_text()) == ADDED
    for name in ("vocab.json", "special_tokens_map.json", "chat_template.j2"):
        assert (published / name).is_file()


def test_a_piece_outside_the_vocabulary_raises_the_bindings_plain_exception(published):
    """The fact detection has to live with (and why `binding_error` looks for exactly Exception)."""
    from submission.model.tokenizer import binding_error

    tok = load_tokenizer(published)
    with pytest.raises(Exception, match="Missing \\[UNK\\] token from the vocabulary") as err:
        tok.encode("A", add_special_tokens=False)
    assert type(err.value) is Exception and binding_error(err.value)
    assert not binding_error(ValueError("x")) and not binding_error(TypeError("x"))


def test_detection_falls_back_to_qwen_chat(published):
    tok = load_tokenizer(published)
    assert detect_format(tok, model_dir=published) == "qwen-chat"
    fmt = get_format("auto", tok, model_dir=published)
    assert fmt.name == "qwen-chat" and fmt.bos_id is None
    assert fmt.id_of == IDS
    with pytest.raises(FormatError, match="piece 'A' cannot be encoded.*Missing \\[UNK\\]"):
        ArchitectsFormat(tok)


def test_only_the_binding_error_means_a_format_does_not_fit(published):
    """A bug (any other exception) while probing a piece is not taken for "does not fit"."""
    tok = load_tokenizer(published)

    class Broken:
        bos_token = eos_token = None

        def __getattr__(self, name):
            return getattr(tok, name)

        def encode(self, text, **kwargs):
            if text == "A":
                raise TypeError("a bug")
            return tok.encode(text, **kwargs)

    with pytest.raises(TypeError, match="a bug"):
        get_format("auto", Broken())


def test_shrink_vocab_maps_the_published_ids(published):
    from submission.model.vocab import original_ids

    tok = load_tokenizer(published)
    assert original_ids(tok, "qwen-chat") == list(range(16))
    with pytest.raises(FormatError, match="cannot write 'A'"):
        original_ids(tok, "architects")


def _task():
    from submission.arc.grids import Pair, Task, as_grid

    g = lambda rows: as_grid(np.array(rows))  # noqa: E731
    return Task("t0000001", (Pair(g([[1, 2], [3, 4]]), g([[4, 3], [2, 1]])),
                             Pair(g([[5, 0, 7]]), g([[7, 0, 5]]))), (g([[8], [9]]),),
                test_outputs=(g([[9], [8]]),))


def test_show_prompt_with_default_settings(published, tmp_path, capsys):
    from submission.cli import main
    from submission.arc.tasks import tasks_to_solutions

    task = _task()
    ch, sol = tmp_path / "ch.json", tmp_path / "sol.json"
    ch.write_text(json.dumps(tasks_to_challenges({task.id: task})))
    sol.write_text(json.dumps(tasks_to_solutions({task.id: task})))
    code = main(["show-prompt", "--model", str(published), "--challenges", str(ch), "--task",
                 task.id, "--solutions", str(sol), "--json"])
    out = capsys.readouterr()
    assert code == 0 and out.err == "", out.err
    got = json.loads(out.out)
    text = nvarc_text([tuple(p) for p in task.train], task.test_inputs[0])
    assert got["format"] == "qwen-chat" and got["prompt_text"] == text
    assert got["prompt_ids"] == vocab_ids(text, NVARC_VOCAB)
    assert got["answer_ids"] == vocab_ids("9\n8<|im_end|>", NVARC_VOCAB)
    assert main(["show-prompt", "--model", str(published), "--challenges", str(ch), "--task",
                 task.id, "--solutions", str(sol), "--json", "--format", "qwen-chat"]) == 0
    assert json.loads(capsys.readouterr().out) == got  # detected = forced
    assert main(["show-prompt", "--model", str(published), "--challenges", str(ch), "--task",
                 task.id]) == 0
    assert "format  qwen-chat   begin token: none" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_one_task_run_with_default_settings_answers(tmp_path, workers):
    """A tiny Qwen3 carrying the published files, made to answer every prompt with [[3]]: the
    run detects qwen-chat, trains, samples with the published ids and writes that answer."""
    model = answer_always(published_nvarc_model(tmp_path / "model"), 3)
    assert not (model / "arc_format.json").exists()  # nothing hints the format
    ch = write_challenges(tmp_path / "challenges.json", ["t0000001"])
    proc = run_subprocess(tmp_path, ch, model, "--set", f"budget.workers={workers}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert sub["t0000001"][0]["attempt_1"] == [[3]]
    report = json.loads((tmp_path / "work" / "run.json").read_text())
    assert set(report["backends"]) == set(Backends().to_json())  # one shape in both run modes
    assert report["backends"]["workers"] == int(workers) and report["backends"]["ready"]
    assert report["backends"]["worker_info"]["0"]["format"] == "qwen-chat"
    assert report["faults"] == [] and report["config"]["model"]["format"] == "auto"
    assert report["per_task"]["t0000001"]["ttt"]["steps"] >= 1
