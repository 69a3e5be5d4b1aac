"""NVARC's published tokenizer files (Qwen3-4B checkpoint `sorokin/qwen3_4b_grids15_sft139`), written
field by field from the published facts:

- `tokenizer.json`: model `WordLevel` with `unk_token` "<|endoftext|>" and the vocabulary "0".."9"
  (ids 0..9), "Ċ" (10, the row break as byte-level text), "user" (11), "assistant" (12).
  `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` exist only in `added_tokens` (ids 13, 14, 15,
  special), so the unk token is NOT in the model's vocabulary. Normalizer NFC; pre-tokenizer a
  Sequence of the Qwen2 `Split` regex (Isolated) and `ByteLevel` (add_prefix_space false,
  use_regex false); post-processor and decoder `ByteLevel`, as in every Qwen2 tokenizer.json.
- `tokenizer_config.json`: `tokenizer_class` Qwen2Tokenizer, `add_bos_token` false,
  `added_tokens_decoder` for 13-15, and Qwen's special tokens (no bos/unk, eos `<|im_end|>`, pad
  `<|endoftext|>`).
- `vocab.json` (the model vocabulary), `added_tokens.json`, `special_tokens_map.json`,
  `chat_template.j2` (a chat template the kernel never reads).

Encoding any other piece (e.g. "A") raises the tokenizers binding's plain `Exception`
"WordLevel error: Missing [UNK] token from the vocabulary".
"""

from __future__ import annotations

import json
from pathlib import Path

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
              "use_regex": False}
MODEL_VOCAB = {**{str(d): d for d in range(10)}, "Ċ": 10, "user": 11, "assistant": 12}
ADDED = {"<|endoftext|>": 13, "<|im_start|>": 14, "<|im_end|>": 15}
IDS = {**{str(d): d for d in range(10)}, "\n": 10, "user": 11, "assistant": 12, **ADDED}


def _added_token(content: str) -> dict:
    return {"content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def write_published_nvarc(out: str | Path) -> Path:
    """Write the six tokenizer files of NVARC's checkpoint into `out` (created); returns it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    added = [{"id": tid, **_added_token(t)} for t, tid in ADDED.items()]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated",
             "invert": False},
            BYTE_LEVEL]},
        "post_processor": BYTE_LEVEL, "decoder": BYTE_LEVEL,
        "model": {"type": "WordLevel", "vocab": MODEL_VOCAB, "unk_token": "<|endoftext|>"}}
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    config = {"add_bos_token": False, "add_prefix_space": False,
              "added_tokens_decoder": {str(tid): _added_token(t) for t, tid in ADDED.items()},
              "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
              "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>",
              "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (out / "vocab.json").write_text(json.dumps(MODEL_VOCAB, ensure_ascii=False), encoding="utf-8")
    (out / "added_tokens.json").write_text(json.dumps(ADDED), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": _added_token("<|im_end|>"), "pad_token": _added_token("<|endoftext|>")}),
        encoding="utf-8")
    (out / "chat_template.j2").write_text(
        "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{{ message['content'] }}<|im_end|>{%- endfor %}"
        "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}", encoding="utf-8")
    return out


def published_nvarc_model(out: str | Path, *, seed: int = 0) -> Path:
    """A tiny random Qwen3 (vocabulary 16: the published ids) carrying exactly those files:
    the tiny model's own tokenizer files and format hint are removed first."""
    from submission.model.tiny import make_tiny_model

    out = Path(out)
    make_tiny_model(out, "qwen-chat", seed=seed)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "arc_format.json", "chat_template.jinja"):
        (out / name).unlink(missing_ok=True)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] >= 16 and (cfg["pad_token_id"], cfg["eos_token_id"]) == (13, 15)
    return write_published_nvarc(out)


def answer_always(model_dir: str | Path, digit: int) -> Path:
    """Rewrite a tiny Qwen3's weights so that it answers every qwen-chat prompt with the 1 x 1
    grid `digit`: every layer's output projections are zero (the residual stream is the current
    token's embedding), embeddings are one-hot, and the head maps the row break (the prompt's
    last token) to `digit` and `digit` to `<|im_end|>`, each with a logit of 40."""
    import torch
    from safetensors.torch import load_file, save_file

    path = Path(model_dir) / "model.safetensors"
    state = load_file(str(path))
    for name, tensor in state.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            tensor.zero_()
    emb, head = state["model.embed_tokens.weight"], state["lm_head.weight"]
    emb.zero_()
    emb[:, :emb.shape[0]] = torch.eye(emb.shape[0])
    head.zero_()
    head[digit, IDS["\n"]] = 40.0 / emb.shape[1] ** 0.5  # RMSNorm scales a one-hot by sqrt(hidden)
    head[IDS["<|im_end|>"], digit] = 40.0 / emb.shape[1] ** 0.5
    save_file(state, str(path), metadata={"format": "pt"})
    return Path(model_dir)
