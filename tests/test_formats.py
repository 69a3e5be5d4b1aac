"""Tests of submission.formats: exact prompt layouts, loss masks, the reduced tokenizers, parsing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from submission.errors import FormatError
from submission.formats import build_tokenizer, get_format, reduced_vocab
from submission.grids import Pair, as_grid

FORMAT_NAMES = ("qwen-chat", "architects")
FAST = settings(max_examples=150, deadline=None)
PREPROMPT = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz"

# A small task: two demonstration pairs and one query (test input).
DEMOS = [Pair(as_grid([[1, 2], [3, 4]]), as_grid([[5]])),
         Pair(as_grid([[0, 0, 7]]), as_grid([[8], [9]]))]
QUERY = as_grid([[6, 1]])

# The spec, written out literally (grid text: rows of digits joined by "\n", no trailing newline).
EXPECTED_PROMPT = {
    "qwen-chat": ("<|im_start|>user\n12\n34<|im_end|><|im_start|>assistant\n5<|im_end|>"
                  "<|im_start|>user\n007<|im_end|><|im_start|>assistant\n8\n9<|im_end|>"
                  "<|im_start|>user\n61<|im_end|><|im_start|>assistant\n"),
    "architects": ("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz"
                   "I12\n34\n+/-=O5\n</s>"
                   "I007\n+/-=O8\n9\n</s>"
                   "I61\n+/-=O"),
}
EXPECTED_ANSWER = {"qwen-chat": "8\n9<|im_end|>", "architects": "8\n9\n</s>"}
# Training text of DEMOS as (text, loss-masked) segments.
EXPECTED_TRAINING = {
    "qwen-chat": [("<|im_start|>user\n12\n34<|im_end|><|im_start|>assistant\n", False),
                  ("5<|im_end|>", True),
                  ("<|im_start|>user\n007<|im_end|><|im_start|>assistant\n", False),
                  ("8\n9<|im_end|>", True)],
    "architects": [(PREPROMPT + "I12\n34\n+/-=O", False),
                   ("5\n</s>", True),
                   ("I007\n+/-=O", False),
                   ("8\n9\n</s>", True)],
}
TERMINATORS = {"qwen-chat": 1, "architects": 2}  # <|im_end|> ; "\n" + </s>


@pytest.fixture(scope="module", params=FORMAT_NAMES)
def bound(request, tmp_path_factory):
    """(name, reloaded tokenizer, format bound to it) for each format."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp(f"tok-{request.param}")
    build_tokenizer(request.param, out)
    tok = AutoTokenizer.from_pretrained(str(out))
    return request.param, tok, get_format(request.param, tok)


@pytest.fixture(scope="module")
def eval_grids():
    from submission.tasks import load_dataset

    tasks = load_dataset("arc-agi-2", "evaluation")
    grids = []
    for t in tasks.values():
        for p in t.train:
            grids += [p.input, p.output]
        grids += list(t.test_inputs) + list(t.test_outputs)
    return tasks, grids


def text_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def grid_text(rows: list[str]) -> str:
    return "\n".join(rows)


# --- exact layouts ---------------------------------------------------------------------------

def test_prompt_and_answer_exact_strings(bound):
    name, tok, fmt = bound
    prompt = fmt.encode_prompt(DEMOS, QUERY)
    assert fmt.decode(prompt) == EXPECTED_PROMPT[name]
    assert fmt.decode(fmt.encode_answer(DEMOS[1].output)) == EXPECTED_ANSWER[name]
    # prompt + answer is what a training text of (demos, query -> answer) looks like
    full, _ = fmt.encode_training(DEMOS + [Pair(QUERY, DEMOS[1].output)])
    assert fmt.decode(full) == EXPECTED_PROMPT[name] + EXPECTED_ANSWER[name]
    assert fmt.stop_token_ids == [fmt.eos_id]
    assert fmt.decode([fmt.eos_id]) == ("<|im_end|>" if name == "qwen-chat" else "</s>")


def test_grid_ids_have_no_trailing_row_break(bound):
    _, _, fmt = bound
    assert fmt.decode(fmt.grid_ids(as_grid([[1, 2, 3], [4, 5, 6]]))) == "123\n456"
    assert fmt.decode(fmt.grid_ids(as_grid([[0]]))) == "0"


@pytest.mark.parametrize("skip_first", [False, True])
def test_training_loss_mask(bound, skip_first):
    name, tok, fmt = bound
    ids, mask = fmt.encode_training(DEMOS, skip_first=skip_first)
    expected_ids, expected_mask = [], []
    first = True
    for text, on in EXPECTED_TRAINING[name]:
        seg = text_ids(tok, text)
        expected_ids += seg
        if on and first:
            on, first = not skip_first, False
        expected_mask += [on] * len(seg)
    assert ids == expected_ids
    assert mask == expected_mask
    assert len(ids) == len(mask) and all(type(m) is bool for m in mask)
    outputs = "".join(t for t, on in EXPECTED_TRAINING[name] if on)
    if skip_first:
        outputs = EXPECTED_ANSWER[name]
    assert fmt.decode([i for i, m in zip(ids, mask) if m]) == outputs


def test_max_answer_tokens(bound):
    name, _, fmt = bound
    assert fmt.max_answer_tokens() == 30 * 30 + 29 + TERMINATORS[name]
    assert fmt.max_answer_tokens(30, 30) == 30 * 30 + 29 + TERMINATORS[name]
    assert fmt.max_answer_tokens(3, 5) == 3 * 5 + 2 + TERMINATORS[name]
    assert fmt.max_answer_tokens(1, 1) == 1 + TERMINATORS[name]


# --- the reduced tokenizer -------------------------------------------------------------------

def test_reduced_tokenizer_round_trips_format_ids(bound):
    name, tok, fmt = bound
    samples = [fmt.encode_prompt(DEMOS, QUERY), fmt.encode_training(DEMOS)[0],
               fmt.encode_answer(as_grid(np.arange(30 * 30).reshape(30, 30) % 10))]
    for ids in samples:
        text = fmt.decode(ids)
        assert text_ids(tok, text) == ids
        assert tok.decode(ids) == text


def test_reduced_vocab_sizes(bound):
    name, tok, fmt = bound
    vocab, specials = reduced_vocab(name)
    assert len(tok) == len(vocab) == len(set(vocab))
    assert set(specials) <= set(vocab)
    assert tok.convert_ids_to_tokens(fmt.eos_id) == tok.eos_token
    if name == "qwen-chat":
        assert len(tok) == 16 and len(tok.get_vocab()) == 16


# Any sequence of the format's pieces, with no two row breaks in a row.
def _piece_sequences():
    return st.lists(st.integers(0, 200), max_size=60)


@FAST
@given(seed_ids=_piece_sequences())
def test_reduced_tokenizer_round_trips_piece_sequences(bound, seed_ids):
    _, tok, fmt = bound
    pieces = list(fmt.pieces)
    ids = [fmt.id_of[pieces[i % len(pieces)]] for i in seed_ids]
    ids = [i for k, i in enumerate(ids) if not (i == fmt._nl and k and ids[k - 1] == fmt._nl)]
    text = fmt.decode(ids)
    assert text_ids(tok, text) == ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_reduced_tokenizer_splits_consecutive_row_breaks(name):
    tok = build_tokenizer(name)
    fmt = get_format(name, tok)
    assert text_ids(tok, "1\n\n2") == [fmt.id_of["1"], fmt._nl, fmt._nl, fmt.id_of["2"]]


# --- every grid of ARC-AGI-2 evaluation --------------------------------------------------------

def test_round_trip_all_arc_agi_2_evaluation_grids(bound, eval_grids):
    _, tok, fmt = bound
    tasks, grids = eval_grids
    assert len(tasks) == 120 and len(grids) > 1000
    answers = [fmt.encode_answer(g) for g in grids]
    for g, ids in zip(grids, answers):
        back = fmt.parse(ids)
        assert back is not None and back.dtype == np.uint8
        assert back.shape == g.shape and np.array_equal(back, g)
    texts = [fmt.decode(ids) for ids in answers]
    for g, ids, re_ids in zip(grids, answers, tok(texts, add_special_tokens=False).input_ids):
        assert re_ids == ids
        back = fmt.parse_text(tok.decode(re_ids))
        assert back is not None and np.array_equal(back, g)
        assert np.array_equal(fmt.parse(re_ids), g)


# --- parsing ---------------------------------------------------------------------------------

def bad_answers(fmt, name) -> dict[str, list[int]]:
    d = {str(i): fmt.id_of[str(i)] for i in range(10)}
    nl, eos = fmt._nl, fmt.eos_id
    other = fmt.id_of["user"] if name == "qwen-chat" else fmt.id_of["A"]
    tail = [nl, eos] if name == "architects" else [eos]

    def grid(rows):  # row strings -> answer ids with the proper terminator
        return fmt.ids(list(grid_text(rows))) + tail

    return {
        "empty": [],
        "only eos": [eos],
        "eos first": [eos, d["1"], d["2"]],
        "only row break": [nl, eos],
        "leading row break": [nl, d["1"], eos],
        "ragged rows": grid(["12", "3"]),
        "ragged rows 2": grid(["1", "23"]),
        "empty row": fmt.ids(list("12\n\n34")) + tail,
        "trailing row break": fmt.ids(list("12\n34\n")) + [nl, eos],
        "non-digit inside": fmt.ids(["1"]) + [other] + fmt.ids(["2"]) + tail,
        "31 rows": grid(["1"] * 31),
        "31 columns": grid(["1" * 31]),
        "31 x 31": grid(["1" * 31] * 31),
        "trailing garbage before eos": grid(["12", "34"])[:-len(tail)] + [other] + tail,
        "unknown id": [999],
        "unknown id inside": [d["1"], 999, d["2"], eos],
        "unknown id after cells": [d["1"], d["2"], 999],
        "negative id": [-1],
        "negative id inside": [d["1"], -5, d["2"], eos],
    }


def test_parse_returns_none_on_bad_answers(bound):
    name, _, fmt = bound
    for label, ids in bad_answers(fmt, name).items():
        assert fmt.parse(ids) is None, label
        assert fmt.parse(np.asarray(ids, dtype=np.int64)) is None, label


def test_parse_limits_are_30(bound):
    _, _, fmt = bound
    for shape in [(30, 30), (1, 30), (30, 1), (1, 1)]:
        g = np.full(shape, 7, dtype=np.uint8)
        assert np.array_equal(fmt.parse(fmt.encode_answer(g)), g)


def test_parse_stops_at_eos(bound):
    _, _, fmt = bound
    g = as_grid([[1, 2], [3, 4]])
    after = [999, -3, fmt._nl, fmt.id_of["5"], fmt.eos_id]
    assert np.array_equal(fmt.parse(fmt.encode_answer(g) + after), g)
    # no eos at all: the whole sequence is the answer
    assert np.array_equal(fmt.parse(fmt.grid_ids(g).tolist()), g)


def test_parse_text(bound):
    name, _, fmt = bound
    eos = "<|im_end|>" if name == "qwen-chat" else "\n</s>"
    assert np.array_equal(fmt.parse_text("12\n34" + eos), as_grid([[1, 2], [3, 4]]))
    assert np.array_equal(fmt.parse_text("0"), as_grid([[0]]))
    assert np.array_equal(fmt.parse_text("5" + eos + "12\n3"), as_grid([[5]]))
    for bad in ["", "12\n3", "1 2", "12x", "abc", eos, "\n"]:
        assert fmt.parse_text(bad) is None, repr(bad)


@FAST
@given(ids=st.lists(st.integers(-2**63, 2**63 - 1), max_size=80))
@example(ids=[])
@example(ids=[2**63 - 1, -2**63])
def test_parse_never_raises_on_random_ids(bound, ids):
    _, _, fmt = bound
    out = fmt.parse(ids)
    assert out is None or (out.ndim == 2 and out.dtype == np.uint8
                           and 1 <= min(out.shape) and max(out.shape) <= 30)


@FAST
@given(choice=st.lists(st.integers(0, 12), max_size=120))
def test_parse_near_grids(bound, choice):
    """Mostly digits and row breaks: parses happen often; a parsed grid re-encodes consistently."""
    _, _, fmt = bound
    alphabet = [fmt.id_of[str(d)] for d in range(10)] + [fmt._nl, fmt._nl, fmt.eos_id]
    ids = [alphabet[c] for c in choice]
    out = fmt.parse(ids)
    if out is not None:
        assert np.array_equal(fmt.parse(fmt.encode_answer(out)), out)
        assert out.max(initial=0) <= 9


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_parse_never_raises_on_huge_ids(name):
    fmt = get_format(name, build_tokenizer(name))
    assert fmt.parse([2**63]) is None
    assert fmt.parse([fmt.id_of["1"], -2**64]) is None


# --- unusable tokenizers and names -----------------------------------------------------------

class FakeTokenizer:
    """Every piece is one token, except those listed in `split` (two tokens)."""

    eos_token = "</s>"

    def __init__(self, split=()):
        self.split = set(split)
        self.vocab: dict[str, int] = {}

    def _id(self, piece):
        return self.vocab.setdefault(piece, len(self.vocab))

    def encode(self, text, add_special_tokens=False):
        if text in self.split:
            return [self._id(text + "#a"), self._id(text + "#b")]
        return [self._id(text)]

    def convert_ids_to_tokens(self, i):
        return {v: k for k, v in self.vocab.items()}[i]

    def decode(self, ids, clean_up_tokenization_spaces=False):
        inv = {v: k for k, v in self.vocab.items()}
        return "".join(inv[i] for i in ids)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_fake_tokenizer_ok_and_split_digit_rejected(name):
    fmt = get_format(name, FakeTokenizer())
    assert fmt.decode(fmt.encode_answer(as_grid([[1], [2]]))).startswith("1\n2")
    with pytest.raises(FormatError, match="'5'"):
        get_format(name, FakeTokenizer(split={"5"}))
    with pytest.raises(FormatError, match=r"'\\n'"):
        get_format(name, FakeTokenizer(split={"\n"}))


def test_qwen_tokenizer_cannot_serve_architects():
    tok = build_tokenizer("qwen-chat")
    with pytest.raises(FormatError, match="architects.*'A'"):
        get_format("architects", tok)
    with pytest.raises(FormatError, match="qwen-chat.*'user'"):
        get_format("qwen-chat", build_tokenizer("architects"))


def test_unknown_format_name():
    tok = build_tokenizer("qwen-chat")
    with pytest.raises(FormatError, match="nope"):
        get_format("nope", tok)
    with pytest.raises(FormatError, match="nope"):
        reduced_vocab("nope")
    with pytest.raises(FormatError, match="nope"):
        build_tokenizer("nope")
