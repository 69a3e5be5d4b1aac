"""Tests of submission.model.vocab: shrinking a full-vocabulary model to a format's reduced vocabulary."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from submission.errors import FormatError
from submission.arc.formats import get_format, reduced_vocab
from submission.arc.grids import Pair, as_grid
from submission.model.vocab import shrink_vocab

FULL_VOCAB = 200
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_PLAIN = [str(d) for d in range(10)] + ["\n", "user", "assistant"]


def _filler(n: int) -> list[str]:
    """Distinct 4-letter words (never a single letter, a digit or a qwen-chat piece)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["w" + a + b + c for a, b, c in itertools.islice(itertools.product(letters, repeat=3), n)]


def _full_vocab(extra: tuple[str, ...] = (), seed: int = 1) -> list[str]:
    """200 tokens: the qwen-chat pieces (and `extra`) at scattered ids among filler words."""
    pieces = QWEN_PLAIN + SPECIALS + ["[UNK]"] + list(extra)
    slots = sorted(random.Random(seed).sample(range(1, FULL_VOCAB), len(pieces)))
    random.Random(seed + 1).shuffle(pieces)
    vocab = _filler(FULL_VOCAB)
    for slot, piece in zip(slots, pieces):
        vocab[slot] = piece
    assert len(set(vocab)) == FULL_VOCAB
    return vocab


def _make_full_model(out, *, tied: bool = False, eos: str = "<|im_end|>",
                     pad: str | None = "<|endoftext|>", extra: tuple[str, ...] = (), seed: int = 0,
                     bos: str | None = None):
    """A WordLevel tokenizer + random Qwen3 with a 200-token vocabulary, saved to `out`."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    vocab = _full_vocab(extra + ((bos,) if bos else ()))
    tk = Tokenizer(models.WordLevel({p: i for i, p in enumerate(vocab)}, unk_token="[UNK]"))
    # Each digit and each row break is its own pre-token; letter runs are words.
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[0-9]|\n|[A-Za-z]+|[^A-Za-z0-9\s]"),
                                            behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(SPECIALS + ([bos] if bos else []))
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, pad_token=pad, bos_token=bos,
                                   unk_token="[UNK]", clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(out))
    cfg = Qwen3Config(vocab_size=FULL_VOCAB, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=32, max_position_embeddings=2048, tie_word_embeddings=tied,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                      bos_token_id=fast.bos_token_id,
                      torch_dtype="float32", rope_theta=10000.0)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # tied: this is the embedding too
    model.save_pretrained(str(out))
    return out


TEXT_PAIRS = [Pair(as_grid([[1, 2], [3, 4]]), as_grid([[5]])),
              Pair(as_grid([[0, 0, 7]]), as_grid([[8], [9]])),
              Pair(as_grid([[6, 6, 6], [1, 0, 9]]), as_grid([[2, 3, 4], [5, 6, 7]]))]


def _texts(fmt):
    return [fmt.encode_training(TEXT_PAIRS[:2])[0],
            fmt.encode_training(TEXT_PAIRS[1:])[0],
            fmt.encode_prompt(TEXT_PAIRS[:2], TEXT_PAIRS[2].input),
            fmt.encode_prompt([], as_grid([[9]]))]


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _check_same_logits(src, dst, report):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    old = AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True)
    new = AutoModelForCausalLM.from_pretrained(str(dst), local_files_only=True)
    new_tok = AutoTokenizer.from_pretrained(str(dst), local_files_only=True)
    assert new.config.vocab_size == 16 and new.get_input_embeddings().weight.shape[0] == 16
    assert new.get_output_embeddings().weight.shape[0] == 16
    fmt = get_format("qwen-chat", new_tok)
    kept = np.array(report["kept_ids"])
    assert fmt.id_of == {p: i for i, p in enumerate(reduced_vocab("qwen-chat")[0])}
    for ids in _texts(fmt):
        want = _logits(old, kept[ids].tolist())[:, kept]
        got = _logits(new, ids)
        assert got.shape == want.shape == (len(ids), 16)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    return old, new


def test_shrink_qwen_chat_keeps_logits(tmp_path):
    from transformers import AutoTokenizer

    src = _make_full_model(tmp_path / "full")
    report = shrink_vocab(src, "qwen-chat", tmp_path / "small")
    orig = AutoTokenizer.from_pretrained(str(src))
    pieces = reduced_vocab("qwen-chat")[0]
    assert report["kept_ids"] == [orig.convert_tokens_to_ids(p) for p in pieces]
    assert report["kept_ids"] != sorted(report["kept_ids"])  # the scattering is really exercised
    assert report["vocab_before"] == FULL_VOCAB and report["vocab_after"] == 16
    assert report["params_before"] - report["params_after"] == 2 * (FULL_VOCAB - 16) * 64
    meta = json.loads((tmp_path / "small" / "arc_format.json").read_text())
    assert meta == {"format": "qwen-chat", "shrunk_from": str(src), "kept_ids": report["kept_ids"]}
    assert list((tmp_path / "small").glob("*.safetensors"))
    _, new = _check_same_logits(src, tmp_path / "small", report)
    assert new.lm_head.weight.data_ptr() != new.model.embed_tokens.weight.data_ptr()


def test_shrink_tied_embeddings(tmp_path):
    src = _make_full_model(tmp_path / "full", tied=True)
    report = shrink_vocab(src, "qwen-chat", tmp_path / "small")
    assert report["params_before"] - report["params_after"] == (FULL_VOCAB - 16) * 64
    old, new = _check_same_logits(src, tmp_path / "small", report)
    assert old.lm_head.weight is old.model.embed_tokens.weight
    assert new.config.tie_word_embeddings
    assert new.lm_head.weight.data_ptr() == new.model.embed_tokens.weight.data_ptr()


def test_special_ids_point_at_new_rows(tmp_path):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    src = _make_full_model(tmp_path / "full")
    shrink_vocab(src, "qwen-chat", tmp_path / "small")
    cfg = AutoConfig.from_pretrained(str(tmp_path / "small"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "small"))
    pieces = reduced_vocab("qwen-chat")[0]
    assert cfg.eos_token_id == pieces.index("<|im_end|>") == tok.eos_token_id
    assert cfg.pad_token_id == pieces.index("<|endoftext|>") == tok.pad_token_id
    assert cfg.bos_token_id is None
    gen = GenerationConfig.from_pretrained(str(tmp_path / "small"))
    assert gen.eos_token_id == cfg.eos_token_id and gen.pad_token_id == cfg.pad_token_id


def test_architects_needs_preprompt_letters(tmp_path):
    src = _make_full_model(tmp_path / "full", eos="<|endoftext|>")
    with pytest.raises(FormatError, match="'A'") as err:
        shrink_vocab(src, "architects", tmp_path / "small")
    assert "'z'" in str(err.value) and "'\\n'" not in str(err.value)
    assert not (tmp_path / "small").exists()


def test_architects_shrink_maps_eos_and_missing_pad(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = reduced_vocab("architects", bos=False)[0]
    letters = tuple(p for p in arch if p not in QWEN_PLAIN and p not in ("</s>", "<pad>"))
    src = _make_full_model(tmp_path / "full", eos="<|im_end|>", pad=None, extra=letters)
    report = shrink_vocab(src, "architects", tmp_path / "small")
    orig = AutoTokenizer.from_pretrained(str(src))
    eos = orig.convert_tokens_to_ids("<|im_end|>")
    assert report["kept_ids"][arch.index("</s>")] == eos == report["kept_ids"][arch.index("<pad>")]
    assert report["vocab_after"] == len(arch) == 67
    new_tok = AutoTokenizer.from_pretrained(str(tmp_path / "small"))
    fmt = get_format("architects", new_tok)
    old = AutoModelForCausalLM.from_pretrained(str(src))
    new = AutoModelForCausalLM.from_pretrained(str(tmp_path / "small"))
    assert new.config.eos_token_id == fmt.eos_id == arch.index("</s>")
    assert new.config.pad_token_id == arch.index("<pad>")
    assert new.config.bos_token_id is None and fmt.bos_id is None and new_tok.bos_token is None
    kept = np.array(report["kept_ids"])
    for ids in _texts(fmt):
        np.testing.assert_allclose(_logits(new, ids), _logits(old, kept[ids].tolist())[:, kept],
                                   atol=1e-5, rtol=0)


def test_architects_shrink_keeps_the_begin_token(tmp_path):
    """A source with a begin token keeps it as reduced id 67 and the format starts with it."""
    from transformers import AutoModelForCausalLM

    from submission.model.tokenizer import load_tokenizer

    arch = reduced_vocab("architects")[0]
    assert len(arch) == 68 and arch[-1] == "<s>"
    letters = tuple(p for p in arch if p not in QWEN_PLAIN and p not in ("</s>", "<pad>", "<s>"))
    src = _make_full_model(tmp_path / "full", eos="<|im_end|>", extra=letters, bos="<s>")
    orig = load_tokenizer(src)
    report = shrink_vocab(src, "architects", tmp_path / "small")
    assert report["vocab_after"] == 68
    assert report["kept_ids"][67] == orig.convert_tokens_to_ids("<s>") == orig.bos_token_id
    new_tok = load_tokenizer(tmp_path / "small")
    fmt = get_format("architects", new_tok)
    assert fmt.bos_id == new_tok.bos_token_id == 67
    new = AutoModelForCausalLM.from_pretrained(str(tmp_path / "small"))
    assert new.config.bos_token_id == 67
    old = AutoModelForCausalLM.from_pretrained(str(src))
    kept = np.array(report["kept_ids"])
    for ids in _texts(fmt):
        assert ids[0] == 67
        np.testing.assert_allclose(_logits(new, ids), _logits(old, kept[ids].tolist())[:, kept],
                                   atol=1e-5, rtol=0)


def test_unknown_format(tmp_path):
    src = _make_full_model(tmp_path / "full")
    with pytest.raises(FormatError, match="unknown format"):
        shrink_vocab(src, "nope", tmp_path / "small")


def test_cli_shrink_vocab_on_the_tiny_model(tmp_path, capsys, tiny_model):
    """The command runs end to end (the tiny model's vocabulary is already the format's: 16 stay)."""
    import json as _json

    from submission.cli import main

    assert main(["shrink-vocab", "--model", str(tiny_model), "--format", "qwen-chat",
                 "--out", str(tmp_path / "small")]) == 0
    report = _json.loads(capsys.readouterr().out)
    assert report["vocab_after"] == 16 and (tmp_path / "small" / "config.json").exists()
