"""Tests of submission.arc.formats: exact prompt layouts, loss masks, the reduced tokenizers, parsing,
lenient parsing and format detection."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from submission.errors import FormatError
from submission.arc.formats import build_tokenizer, detect_format, get_format, reduced_vocab
from submission.arc.grids import Pair, as_grid

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
    "architects": ("<s>ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz"
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
    "architects": [("<s>" + PREPROMPT + "I12\n34\n+/-=O", False),
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
    from submission.arc.tasks import load_dataset

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
        assert tok.bos_token is None and fmt.bos_id is None
    else:  # 65 single characters, </s>, <pad>, and the begin token <s>
        assert len(tok) == 68 and len(reduced_vocab(name, bos=False)[0]) == 67
        assert sum(len(p) == 1 for p in vocab) == 65
        assert tok.bos_token == "<s>" and fmt.bos_id == tok.bos_token_id == vocab.index("<s>")


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
    """Outputs with no unique grid: parse (strict or lenient) must give None."""
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
        "only row breaks": [nl, nl, nl, eos],
        "ragged rows": grid(["12", "3"]),
        "ragged rows 2": grid(["1", "23"]),
        "ragged around a blank line": fmt.ids(list("12\n\n345")) + tail,
        "ragged after a leading row break": [nl] + grid(["12", "3"]),
        "ragged within the first 30 rows": grid(["1"] * 29 + ["12", "1", "1"]),
        "non-digit inside": fmt.ids(["1"]) + [other] + fmt.ids(["2"]) + tail,
        "non-digit with a blank line": fmt.ids(list("12\n\n")) + [other] + tail,
        "31 columns": grid(["1" * 31]),
        "31 x 31": grid(["1" * 31] * 31),
        "31 columns after a leading row break": [nl] + grid(["1" * 31]),
        "trailing garbage before eos": grid(["12", "34"])[:-len(tail)] + [other] + tail,
        "unknown id": [999],
        "unknown id inside": [d["1"], 999, d["2"], eos],
        "unknown id after cells": [d["1"], d["2"], 999],
        "unknown id with a row break": [nl, d["1"], 999],
        "negative id": [-1],
        "negative id inside": [d["1"], -5, d["2"], eos],
        "negative id with a row break": [d["1"], nl, nl, -5],
    }


def test_parse_returns_none_on_bad_answers(bound):
    name, _, fmt = bound
    before = fmt.lenient_parses
    for label, ids in bad_answers(fmt, name).items():
        assert fmt.parse(ids) is None, label
        assert fmt.parse(np.asarray(ids, dtype=np.int64)) is None, label
        assert fmt.parse_lenient(ids) == (None, ()), label
        assert fmt.parse_strict(ids) is None, label
    assert fmt.lenient_parses == before


def lenient_answers(fmt, name) -> dict[str, tuple[list[int], list[list[int]], tuple[str, ...]]]:
    """label -> (output ids, the one grid they can mean, deviations reported)."""
    nl, eos = fmt._nl, fmt.eos_id
    tail = [nl, eos] if name == "architects" else [eos]

    def ids(text):
        return fmt.ids(list(text))

    return {
        "leading row break": ([nl] + ids("12\n34") + tail, [[1, 2], [3, 4]], ("leading_row_break",)),
        "leading row breaks": ([nl, nl] + ids("5") + tail, [[5]], ("leading_row_break",)),
        "trailing row break before eos": (ids("12\n34\n") + tail, [[1, 2], [3, 4]],
                                          ("trailing_row_break",)),
        "trailing row breaks, no eos": (ids("7\n\n\n"), [[7]], ("trailing_row_break",)),
        "blank line": (ids("12\n\n34") + tail, [[1, 2], [3, 4]], ("blank_line",)),
        "blank lines": (ids("1\n\n\n2\n\n3") + tail, [[1], [2], [3]], ("blank_line",)),
        "all three": ([nl] + ids("12\n\n34\n") + tail, [[1, 2], [3, 4]],
                      ("leading_row_break", "trailing_row_break", "blank_line")),
        "31 rows": (ids(grid_text(["10"] * 31)) + tail, [[1, 0]] * 30, ("over_30_rows",)),
        "40 rows, ragged after the 30th, no eos": (ids(grid_text(["3"] * 30 + ["33", "3"] * 5)),
                                                   [[3]] * 30, ("over_30_rows",)),
        "31 rows after a blank line": (ids("4\n\n" + grid_text(["4"] * 30)) + tail, [[4]] * 30,
                                       ("blank_line", "over_30_rows")),
    }


def test_parse_lenient_variants(bound):
    """Deviations NVARC's parser accepts give the one grid they can mean, and are counted."""
    name, _, fmt = bound
    before, fixes_before = fmt.lenient_parses, fmt.lenient_fixes.copy()
    cases = lenient_answers(fmt, name)
    for label, (ids, want, fixes) in cases.items():
        assert fmt.parse_strict(ids) is None, label
        grid, got_fixes = fmt.parse_lenient(ids)
        assert grid is not None and grid.dtype == np.uint8, label
        assert np.array_equal(grid, as_grid(want)), label
        assert got_fixes == fixes, label
        assert np.array_equal(fmt.parse(ids), as_grid(want)), label
    assert fmt.lenient_parses - before == len(cases)
    counted = fmt.lenient_fixes - fixes_before
    assert counted == Counter(f for _, _, fixes in cases.values() for f in fixes)


def test_strict_answers_are_not_counted_as_lenient(bound):
    name, _, fmt = bound
    before = fmt.lenient_parses
    for g in [as_grid([[1, 2], [3, 4]]), as_grid(np.full((30, 30), 9))]:
        assert fmt.parse_lenient(fmt.encode_answer(g))[1] == ()
        assert np.array_equal(fmt.parse(fmt.encode_answer(g)), g)
    if name == "architects":  # the row break before </s> may be left out
        assert fmt.parse_lenient(fmt.ids(list("12")) + [fmt.eos_id])[1] == ()
    assert fmt.lenient_parses == before


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
    assert np.array_equal(fmt.parse_text("\n12\n\n34\n" + eos), as_grid([[1, 2], [3, 4]]))
    for bad in ["", "12\n3", "1 2", "12x", "abc", eos, "\n", "\n\n"]:
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


# --- the begin token -------------------------------------------------------------------------

def test_architects_begin_token_starts_every_sequence_once():
    tok = build_tokenizer("architects")
    fmt = get_format("architects", tok)
    bos = tok.convert_tokens_to_ids("<s>")
    assert fmt.bos_id == bos
    prompt = fmt.encode_prompt(DEMOS, QUERY)
    train, mask = fmt.encode_training(DEMOS + [Pair(QUERY, DEMOS[0].output)])
    for ids in (prompt, train, fmt.encode_prompt([], QUERY)):
        assert ids[0] == bos and ids.count(bos) == 1
        assert fmt.decode(ids[1:]).startswith(PREPROMPT + "I")
    assert mask[0] is False
    answer = fmt.encode_answer(DEMOS[1].output)
    assert bos not in answer  # re-scoring scores prompt + answer: one begin token in all
    assert (prompt + answer).count(bos) == 1
    # the tokenizer itself adds the same begin token to text (as the published one does)
    assert tok(fmt.decode(prompt[1:])).input_ids == prompt


def test_architects_without_begin_token_and_qwen_never_gets_one():
    fmt = get_format("architects", build_tokenizer("architects", bos=False))
    assert fmt.bos_id is None
    assert fmt.decode(fmt.encode_prompt(DEMOS, QUERY)) == EXPECTED_PROMPT["architects"][3:]

    class QwenWithBos(FakeTokenizer):
        bos_token = "<|im_start|>"

    qwen = get_format("qwen-chat", QwenWithBos())
    assert qwen.bos_id is None
    assert qwen.decode(qwen.encode_prompt(DEMOS, QUERY)) == EXPECTED_PROMPT["qwen-chat"]


# --- format detection -------------------------------------------------------------------------

@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_detect_format_from_reduced_tokenizers(name, tmp_path):
    tok = build_tokenizer(name)
    assert detect_format(tok) == name
    assert get_format("auto", tok).name == name
    assert get_format("auto", tok, model_dir=tmp_path).name == name  # no arc_format.json: ignored


def test_detect_format_prefers_chat_markers_then_the_directory_hint(tmp_path):
    both = FakeTokenizer()  # every piece of both formats is one token: a full chat vocabulary
    assert detect_format(both) == "qwen-chat"
    (tmp_path / "arc_format.json").write_text(json.dumps({"format": "architects"}))
    assert detect_format(both, model_dir=tmp_path) == "architects"
    # a hint that does not fit the tokenizer is ignored
    assert detect_format(build_tokenizer("qwen-chat"), model_dir=tmp_path) == "qwen-chat"
    (tmp_path / "arc_format.json").write_text("{not json")
    assert detect_format(both, model_dir=tmp_path) == "qwen-chat"


def test_detect_format_fails_clearly(tmp_path):
    with pytest.raises(FormatError) as err:
        get_format("auto", FakeTokenizer(split={"user", "A"}), model_dir=tmp_path / "m")
    msg = str(err.value)
    assert "model.format=auto" in msg and str(tmp_path / "m") in msg
    assert "qwen-chat" in msg and "'user'" in msg and "architects" in msg and "'A'" in msg
