"""Public checkpoints as published: tokenizer files built like NVARC's and the ARChitects' load under
the pinned transformers, the formats are detected, and prompts equal the teams' published layouts.

The fixtures reproduce the properties of the published tokenizer files (not their contents):
- NVARC (Qwen3-4B, 2025): tokenizer_config.json names `Qwen2Tokenizer`, no begin token, eos
  `<|im_end|>`, pad `<|endoftext|>`; tokenizer.json is a byte-level BPE whose vocabulary is the 16
  pieces 0-9, `Ċ` (the row break), user, assistant, <|endoftext|>, <|im_start|>, <|im_end|> (ids
  0..15) with no merges (so `ignore_merges` is what lets `user` be one token).
- ARChitects (Mistral-NeMo-Minitron-8B, 2024): a byte-level BPE cut down to single characters plus
  `<unk> <s> </s> <pad>` (kept in the original id order: specials first), no merges, begin token
  `<s>` added by a template post-processor (`add_bos_token` true).
The expected ids are written out here from the layouts (a small independent encoder per team over
the fixture vocabularies), never by calling the format classes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from submission.errors import FormatError, InputError
from submission.arc.formats import get_format
from submission.arc.grids import Pair
from submission.model.tokenizer import copy_tokenizer_files, load_tokenizer
from tests.helpers import NVARC_VOCAB, grid_text, nvarc_text, vocab_ids
from tests.helpers import cli_main as run_cli

QWEN_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
PREPROMPT = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz"

# The published vocabularies, in id order (the text a piece stands for; "\n" is stored as "Ċ"; NVARC's
# is in tests/helpers.py).
ARCH_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
ARCH_CHARS = sorted(set("\n+-/=" + "0123456789" + PREPROMPT + "IO"))  # byte order
ARCH_VOCAB = ARCH_SPECIALS + ARCH_CHARS


def _added(token: str, tid: int) -> dict:
    return {"id": tid, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def _bpe(vocab: list[str], *, ignore_merges: bool, unk: str | None) -> dict:
    return {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": ignore_merges,
            "vocab": {("Ċ" if p == "\n" else p): i for i, p in enumerate(vocab)}, "merges": []}


def write_nvarc_like(out, *, ignore_merges: bool = True, config: bool = True):
    """Tokenizer files with the properties of NVARC's published Qwen3 checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    specials = NVARC_VOCAB[13:]
    added = [_added(t, NVARC_VOCAB.index(t)) for t in specials]
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "normalizer": {"type": "NFC"},
          "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
              {"type": "Split", "pattern": {"Regex": QWEN_REGEX}, "behavior": "Isolated",
               "invert": False}, BYTE_LEVEL]},
          "post_processor": BYTE_LEVEL, "decoder": BYTE_LEVEL,
          "model": _bpe(NVARC_VOCAB, ignore_merges=ignore_merges, unk=None)}
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    cfg = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None,
           "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"}
                                    for a in added},
           "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
           "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
           "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    if config:
        (out / "config.json").write_text(json.dumps(
            {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 16,
             "bos_token_id": None, "eos_token_id": 15, "pad_token_id": 13}))
    return out


def write_architects_like(out, *, config: bool = True):
    """Tokenizer files with the properties of the ARChitects' published reduced checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    added = [_added(t, ARCH_VOCAB.index(t)) for t in ARCH_SPECIALS]
    bos = {"id": "<s>", "ids": [1], "tokens": ["<s>"]}
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "normalizer": None,
          "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
              {"type": "Split", "pattern": {"Regex": QWEN_REGEX}, "behavior": "Isolated",
               "invert": False}, BYTE_LEVEL]},
          "post_processor": {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "<s>", "type_id": 1}},
                                      {"Sequence": {"id": "B", "type_id": 1}}],
                             "special_tokens": {"<s>": bos}},
          "decoder": BYTE_LEVEL,
          "model": _bpe(ARCH_VOCAB, ignore_merges=False, unk="<unk>")}
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
           "pad_token": "<pad>", "unk_token": "<unk>", "clean_up_tokenization_spaces": False,
           "model_max_length": 8192, "tokenizer_class": "PreTrainedTokenizerFast"}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    if config:
        (out / "config.json").write_text(json.dumps(
            {"architectures": ["MistralForCausalLM"], "model_type": "mistral",
             "vocab_size": len(ARCH_VOCAB), "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}))
    return out


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    return {"qwen-chat": write_nvarc_like(root / "nvarc"),
            "architects": write_architects_like(root / "architects")}


# --- the teams' layouts, written out independently ---------------------------------------------

def architects_text(demos, query) -> str:
    """ARChitects: <s> once, the preprompt, `I{in}\\n+/-=O{out}\\n</s>` per pair, the query open."""
    text = "<s>" + PREPROMPT
    for inp, out in demos:
        text += f"I{grid_text(inp)}\n+/-=O{grid_text(out)}\n</s>"
    return text + f"I{grid_text(query)}\n+/-=O"


ANSWER_TEXT = {"qwen-chat": lambda g: grid_text(g) + "<|im_end|>",
               "architects": lambda g: grid_text(g) + "\n</s>"}
LAYOUT = {"qwen-chat": nvarc_text, "architects": architects_text}
VOCAB = {"qwen-chat": NVARC_VOCAB, "architects": ARCH_VOCAB}


@pytest.fixture(scope="module")
def ten_tasks():
    """Ten ARC-AGI-2 evaluation tasks: the first seven with one test input, three with several."""
    from submission.arc.tasks import load_dataset

    tasks = load_dataset("arc-agi-2", "evaluation")
    ids = sorted(tasks)
    single = [t for t in ids if tasks[t].n_test == 1][:7]
    multi = [t for t in ids if tasks[t].n_test > 1][:3]
    assert len(multi) == 3
    return {t: tasks[t] for t in single + multi}


# --- loading ---------------------------------------------------------------------------------

def test_autotokenizer_breaks_the_nvarc_files(published):
    """The failure this loader exists for, reproduced under the pinned transformers."""
    import transformers
    from transformers import AutoTokenizer

    assert transformers.__version__ == "5.17.0"
    tok = AutoTokenizer.from_pretrained(str(published["qwen-chat"]), local_files_only=True)
    assert tok.encode("user", add_special_tokens=False) == []
    with pytest.raises(FormatError, match="'user'"):
        get_format("qwen-chat", tok)


@pytest.mark.parametrize("name", ["qwen-chat", "architects"])
def test_published_tokenizers_load_and_every_piece_is_one_id(published, name):
    notes: list[str] = []
    tok = load_tokenizer(published[name], notes=notes)
    assert notes == []
    vocab = VOCAB[name]
    assert len(tok) == len(vocab)
    fmt = get_format("auto", tok, model_dir=published[name])
    assert fmt.name == name
    for piece, tid in fmt.id_of.items():
        assert tid == vocab.index(piece), piece
        assert tok.encode(piece, add_special_tokens=False) == [tid], piece
    if name == "qwen-chat":
        assert tok.bos_token is None and fmt.bos_id is None
        assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
        assert tok.encode("user") == [11]  # add_bos_token false: nothing added
    else:
        assert fmt.bos_id == tok.bos_token_id == 1 and fmt.eos_id == 2
        assert tok.encode("I1") == [1, vocab.index("I"), vocab.index("1")]  # the template's <s>
    assert fmt.decode(fmt.encode_answer(np.array([[1, 2], [3, 4]]))) == ANSWER_TEXT[name](
        np.array([[1, 2], [3, 4]]))


def test_bpe_without_merges_and_without_ignore_merges_is_repaired(tmp_path):
    d = write_nvarc_like(tmp_path / "m", ignore_merges=False)
    notes: list[str] = []
    tok = load_tokenizer(d, notes=notes)
    assert tok.encode("assistant", add_special_tokens=False) == [12]
    assert len(notes) == 1 and "ignore_merges" in notes[0] and str(d / "tokenizer.json") in notes[0]
    assert get_format("auto", tok).name == "qwen-chat"


def test_loader_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(InputError, match="no tokenizer files") as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(InputError, match="not found"):
        load_tokenizer(tmp_path / "missing")
    d = write_nvarc_like(tmp_path / "bad-eos")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(dict(cfg, eos_token="<|eot|>")))
    with pytest.raises(InputError, match="field eos_token") as err:
        load_tokenizer(d)
    assert "tokenizer_config.json" in str(err.value) and "<|eot|>" in str(err.value)
    d = write_nvarc_like(tmp_path / "bad-json")
    (d / "tokenizer.json").write_text("{")
    with pytest.raises(InputError, match="tokenizer.json"):
        load_tokenizer(d)


def test_copy_tokenizer_files_keeps_the_published_files(published, tmp_path):
    copied = copy_tokenizer_files(published["qwen-chat"], tmp_path / "merged")
    assert copied == ["tokenizer.json", "tokenizer_config.json"]
    for name in copied:
        assert (tmp_path / "merged" / name).read_bytes() == (published["qwen-chat"] / name).read_bytes()
    assert load_tokenizer(tmp_path / "merged").encode("user", add_special_tokens=False) == [11]
    with pytest.raises(InputError, match="no tokenizer files"):
        copy_tokenizer_files(tmp_path / "merged" / "nothing", tmp_path / "x")


# --- prompts equal the published layouts on ten ARC-AGI-2 tasks --------------------------------

@pytest.mark.parametrize("name", ["qwen-chat", "architects"])
def test_prompts_equal_the_published_layouts(published, ten_tasks, name):
    fmt = get_format("auto", load_tokenizer(published[name]), model_dir=published[name])
    assert fmt.name == name
    checked = 0
    for task in ten_tasks.values():
        demos = [tuple(p) for p in task.train]
        for i, query in enumerate(task.test_inputs):
            want = vocab_ids(LAYOUT[name](demos, query), VOCAB[name])
            assert fmt.encode_prompt(list(task.train), query) == want, (task.id, i)
            answer = vocab_ids(ANSWER_TEXT[name](task.test_outputs[i]), VOCAB[name])
            assert fmt.encode_answer(task.test_outputs[i]) == answer, (task.id, i)
            assert np.array_equal(fmt.parse(answer), task.test_outputs[i])
            # a training text of (demos, query -> answer) is the prompt followed by the answer
            ids, mask = fmt.encode_training(list(task.train) + [Pair(query, task.test_outputs[i])])
            assert ids == want + answer and mask[len(want):] == [True] * len(answer)
            checked += 1
    assert checked == sum(t.n_test for t in ten_tasks.values()) >= 13
    assert fmt.lenient_parses == 0


# --- show-prompt ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def challenge_files(ten_tasks, tmp_path_factory):
    from submission.arc.tasks import tasks_to_challenges, tasks_to_solutions

    d = tmp_path_factory.mktemp("files")
    ch, sol = d / "eval_challenges.json", d / "eval_solutions.json"
    ch.write_text(json.dumps(tasks_to_challenges(ten_tasks)))
    sol.write_text(json.dumps(tasks_to_solutions(ten_tasks)))
    return ch, sol


@pytest.mark.parametrize("name", ["qwen-chat", "architects"])
def test_show_prompt_json(published, ten_tasks, challenge_files, capsys, name):
    ch, sol = challenge_files
    task = next(t for t in ten_tasks.values() if t.n_test > 1)
    code, out, err = run_cli(capsys, "show-prompt", "--model", published[name], "--challenges", ch,
                             "--task", task.id, "--test-index", 1, "--json")
    assert code == 0 and err == ""
    got = json.loads(out)
    text = LAYOUT[name]([tuple(p) for p in task.train], task.test_inputs[1])
    assert got == {"format": name, "prompt_ids": vocab_ids(text, VOCAB[name]), "prompt_text": text,
                   "bos_id": None if name == "qwen-chat" else 1}
    code, out, _ = run_cli(capsys, "show-prompt", "--model", published[name], "--challenges", ch,
                           "--task", task.id, "--test-index", 1, "--solutions", sol, "--json")
    got = json.loads(out)
    answer = ANSWER_TEXT[name](task.test_outputs[1])
    assert got["answer_text"] == answer and got["answer_ids"] == vocab_ids(answer, VOCAB[name])
    assert got["prompt_text"] == text


def test_show_prompt_text(published, ten_tasks, challenge_files, capsys):
    ch, sol = challenge_files
    task = next(iter(ten_tasks.values()))
    code, out, err = run_cli(capsys, "show-prompt", "--model", published["architects"],
                             "--challenges", ch, "--task", task.id, "--solutions", sol)
    assert code == 0 and err == ""
    text = architects_text([tuple(p) for p in task.train], task.test_inputs[0])
    ids = vocab_ids(text, ARCH_VOCAB)
    assert "format  architects   begin token: id 1" in out
    assert f"{len(ids)} prompt tokens" in out
    assert text in out and json.dumps(ids) in out
    assert json.dumps(vocab_ids(ANSWER_TEXT["architects"](task.test_outputs[0]), ARCH_VOCAB)) in out
    code, out, _ = run_cli(capsys, "show-prompt", "--model", published["qwen-chat"],
                           "--challenges", ch, "--task", task.id)
    assert code == 0 and "format  qwen-chat   begin token: none" in out
    assert "answer unknown" in out and "== answer ids ==" not in out


def test_show_prompt_errors_exit_2_naming_file_task_field(published, ten_tasks, challenge_files,
                                                         capsys, tmp_path):
    ch, sol = challenge_files
    task = next(t for t in ten_tasks.values() if t.n_test == 1)
    base = ["show-prompt", "--model", published["qwen-chat"], "--challenges", ch]
    code, out, err = run_cli(capsys, *base, "--task", "nope")
    assert code == 2 and out == "" and f"file {ch}" in err and "task nope" in err
    code, _, err = run_cli(capsys, *base, "--task", task.id, "--test-index", 1)
    assert code == 2 and f"task {task.id}" in err and "field test[1]" in err and "out of range" in err
    code, _, err = run_cli(capsys, *base, "--task", task.id, "--test-index", -1)
    assert code == 2 and "field test[-1]" in err
    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    code, _, err = run_cli(capsys, "show-prompt", "--model", empty, "--challenges", ch,
                           "--task", task.id)
    assert code == 2 and f"file {empty}" in err and "no tokenizer files" in err
    code, _, err = run_cli(capsys, *base, "--task", task.id, "--solutions", tmp_path / "none.json")
    assert code == 2 and "none.json" in err
    # a tokenizer that fits no format
    from submission.arc.formats import build_tokenizer

    odd = tmp_path / "odd"
    build_tokenizer("qwen-chat", odd)
    cfg = json.loads((odd / "tokenizer.json").read_text())
    cfg["model"]["vocab"] = {("usr" if k == "user" else k): v for k, v in cfg["model"]["vocab"].items()}
    cfg["pre_tokenizer"]["pattern"]["Regex"] = cfg["pre_tokenizer"]["pattern"]["Regex"].replace("user", "usr")
    (odd / "tokenizer.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(capsys, "show-prompt", "--model", odd, "--challenges", ch, "--task", task.id)
    assert code == 2 and "model.format=auto" in err and str(odd) in err and "'user'" in err
    assert "Traceback" not in err


def test_show_prompt_warns_when_config_and_tokenizer_disagree(published, ten_tasks, challenge_files,
                                                              tmp_path):
    from submission.tools.show_prompt import show_prompt

    ch, _ = challenge_files
    d = write_nvarc_like(tmp_path / "m")
    (d / "config.json").write_text(json.dumps({"vocab_size": 12}))
    result, warnings = show_prompt(d, ch, next(iter(ten_tasks)))
    assert result["format"] == "qwen-chat"
    assert len(warnings) == 1 and "vocab_size 12" in warnings[0] and "15" in warnings[0]
    assert show_prompt(published["qwen-chat"], ch, next(iter(ten_tasks)))[1] == []


# --- the model-loading paths (slow) -------------------------------------------------------------

def _nvarc_tiny_model(out):
    """A tiny random Qwen3 with the NVARC-like tokenizer files (same 16 ids as our reduced vocab)."""
    from submission.model.tiny import make_tiny_model

    make_tiny_model(out, "qwen-chat")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "arc_format.json"):
        (out / name).unlink(missing_ok=True)
    return write_nvarc_like(out, config=False)


@pytest.mark.slow
def test_trainer_loader_uses_the_published_tokenizer(tmp_path):
    """The peft loader returns a tokenizer the format can use; auto detects qwen-chat."""
    from tests.helpers import SMALL

    from submission.model.backends.peft_loader import load_peft

    d = _nvarc_tiny_model(tmp_path / "m")
    _, tok, _ = load_peft(d, SMALL)
    assert tok.encode("user", add_special_tokens=False) == [11]
    assert get_format(SMALL.model.format, tok, model_dir=d).name == "qwen-chat"
    assert (tok.pad_token_id, tok.eos_token_id) == (13, 15)


VLLM_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
path, prompt = sys.argv[1], json.loads(sys.argv[2])
llm = LLM(model=path, tokenizer=path, seed=0, max_model_len=1024, dtype="float32",
          disable_log_stats=True)
out = llm.generate([TokensPrompt(prompt_token_ids=prompt)],
                   SamplingParams(max_tokens=6, temperature=0.0, stop_token_ids=[15], detokenize=False),
                   use_tqdm=False)
print("RESULT " + json.dumps(list(out[0].outputs[0].token_ids)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("files", ["nvarc-like", "published"])
def test_vllm_serves_a_model_with_the_nvarc_tokenizer(tmp_path, files):
    """vLLM 0.32 loads the directory's tokenizer itself (as the sampler passes `tokenizer=path`);
    given token ids and detokenize=False it generates what transformers generates. `published`:
    NVARC's files exactly as published (published_nvarc.py)."""
    import importlib.util
    import os
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForCausalLM

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    if files == "published":
        from tests.model.published_nvarc import published_nvarc_model

        d = published_nvarc_model(tmp_path / "m")
    else:
        d = _nvarc_tiny_model(tmp_path / "m")
    fmt = get_format("auto", load_tokenizer(d), model_dir=d)
    prompt = fmt.encode_prompt([Pair(np.array([[1, 2]]), np.array([[3]]))], np.array([[4, 5]]))
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_CPU_KVCACHE_SPACE="1")
    run = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, str(d), json.dumps(prompt)], env=env,
                         capture_output=True, text=True, timeout=600)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT "):])
    model = AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True)
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                             eos_token_id=[15], pad_token_id=13)[0, len(prompt):].tolist()
    assert got == ref and got
