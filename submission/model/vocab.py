"""Shrink a causal LM's vocabulary to the tokens one text format uses.

`shrink_vocab` keeps, for every piece of the format's reduced vocabulary (`formats.reduced_vocab`,
in that order), the row of the ORIGINAL model's input embedding and output head that belongs to that
piece, and writes a model whose vocabulary is exactly the format's reduced tokenizer
(`formats.build_tokenizer`): new id i is piece i. On texts of the format the shrunk model computes
the same logits as the original one restricted to the kept ids, so it samples the same answers while
the embedding and head matrices (and the softmax) shrink from ~150k rows to 16 (qwen-chat) or 68
(architects: 65 characters, eos, pad and the begin token; 67 when the original has no begin token).

It does not fine-tune, does not change hidden layers, attention or positions, and does not copy the
original tokenizer or chat template: the output directory gets the reduced tokenizer only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from submission.errors import FormatError, InputError
from submission.arc.formats import _single_token_id, build_tokenizer, reduced_vocab
from submission.runtime.modelfiles import check_model_config, reading_model
from submission.model.tokenizer import load_tokenizer

_EOS = {"qwen-chat": "<|im_end|>", "architects": "</s>"}
_PAD = {"qwen-chat": "<|endoftext|>", "architects": "<pad>"}


def keeps_bos(tokenizer: Any, format_name: str) -> bool:
    """Whether the reduced vocabulary keeps a begin token: architects, where the original has one."""
    return format_name == "architects" and _special_id(tokenizer, tokenizer.bos_token) is not None


def original_ids(tokenizer: Any, format_name: str) -> list[int]:
    """Original token id of every reduced-vocabulary piece (`reduced_vocab(format_name,
    bos=keeps_bos(...))`), in reduced id order (FormatError if any piece is not exactly one token of
    `tokenizer`, naming all such pieces)."""
    vocab, specials = reduced_vocab(format_name, bos=keeps_bos(tokenizer, format_name))
    ids: list[int | None] = []
    missing: list[str] = []
    for piece in vocab:
        tid = None
        if format_name == "architects" and piece == "<s>":
            tid = _special_id(tokenizer, tokenizer.bos_token)
        elif format_name == "architects" and piece == "</s>":
            tid = _special_id(tokenizer, tokenizer.eos_token)
        elif format_name == "architects" and piece == "<pad>":
            tid = _special_id(tokenizer, tokenizer.pad_token) if tokenizer.pad_token else None
            tid = _special_id(tokenizer, tokenizer.eos_token) if tid is None else tid
        elif piece in specials:
            tid = _special_id(tokenizer, piece)
        if tid is None:
            try:
                tid = _single_token_id(tokenizer, piece, format_name)
            except FormatError:
                missing.append(piece)
        ids.append(tid)
    if missing:
        raise FormatError(f"format {format_name}: the model's tokenizer cannot write "
                          f"{', '.join(map(repr, missing))} as one token each; cannot shrink to it")
    plain = [i for p, i in zip(vocab, ids) if p != "<pad>"]
    if len(set(plain)) != len(plain):
        raise FormatError(f"format {format_name}: two pieces share one original token id: "
                          f"{dict(zip(vocab, ids))}")
    return [int(i) for i in ids]  # type: ignore[arg-type]


def _special_id(tokenizer: Any, token: str | None) -> int | None:
    """Id of a whole token by name, or None if the tokenizer does not have it."""
    if not token:
        return None
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return int(tid)


def shrink_vocab(model_dir: str | Path, format_name: str, out_dir: str | Path) -> dict:
    """Write to `out_dir` the model in `model_dir` cut down to the vocabulary of `format_name`.

    Returns {"format", "vocab_before", "vocab_after", "kept_ids" (original ids, new-id order),
    "params_before", "params_after", "out_dir"}. FormatError if a piece of the format is not one
    token of the original tokenizer; InputError if `model_dir` is missing or equals `out_dir`.
    """
    src, out = Path(model_dir), Path(out_dir)
    if not src.is_dir():
        raise InputError("model directory not found", file=str(src))
    if out.exists() and out.resolve() == src.resolve():
        raise InputError("output directory must differ from the model directory", file=str(out))
    reduced_vocab(format_name)  # FormatError for unknown names, before loading anything
    tokenizer = load_tokenizer(src)
    bos = keeps_bos(tokenizer, format_name)
    vocab, _ = reduced_vocab(format_name, bos=bos)
    kept = original_ids(tokenizer, format_name)
    check_model_config(src)
    with reading_model(src):
        model = AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True, dtype="auto")
    params_before = sum(p.numel() for p in model.parameters())

    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    text_cfg = model.config.get_text_config()
    tied = bool(getattr(text_cfg, "tie_word_embeddings", False)) or (
        head is not None and head.weight is emb.weight)
    rows = emb.weight.shape[0]
    if max(kept) >= rows:
        raise FormatError(f"format {format_name}: token id {max(kept)} is past the model's "
                          f"{rows} embedding rows (tokenizer and model do not match)")
    index = torch.tensor(kept, dtype=torch.long, device=emb.weight.device)
    new_eos, new_pad = vocab.index(_EOS[format_name]), vocab.index(_PAD[format_name])

    with torch.no_grad():
        emb.weight = torch.nn.Parameter(emb.weight.index_select(0, index).clone(),
                                        requires_grad=emb.weight.requires_grad)
        emb.num_embeddings = len(kept)
        if getattr(emb, "padding_idx", None) is not None:
            emb.padding_idx = new_pad
        if head is not None:
            if tied:
                head.weight = emb.weight
            else:
                w = head.weight.index_select(0, index.to(head.weight.device)).clone()
                head.weight = torch.nn.Parameter(w, requires_grad=head.weight.requires_grad)
            if getattr(head, "bias", None) is not None:
                b = head.bias.index_select(0, index.to(head.bias.device)).clone()
                head.bias = torch.nn.Parameter(b, requires_grad=head.bias.requires_grad)
            head.out_features = len(kept)

    ids = {"bos_token_id": vocab.index("<s>") if bos else None, "eos_token_id": new_eos,
           "pad_token_id": new_pad}
    for cfg in {id(c): c for c in (model.config, text_cfg)}.values():
        cfg.vocab_size = len(kept)
        for key, value in ids.items():
            setattr(cfg, key, value)
    if tied:
        text_cfg.tie_word_embeddings = True
    if getattr(model, "generation_config", None) is not None:
        for key, value in ids.items():
            setattr(model.generation_config, key, value)

    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(format_name, out, bos=bos)
    model.save_pretrained(str(out))  # safetensors
    (out / "arc_format.json").write_text(json.dumps(
        {"format": format_name, "shrunk_from": str(src), "kept_ids": kept}))
    return {"format": format_name, "vocab_before": rows, "vocab_after": len(kept),
            "kept_ids": kept, "params_before": params_before,
            "params_after": sum(p.numel() for p in model.parameters()), "out_dir": str(out)}
