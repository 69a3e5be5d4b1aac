"""A model's shape from its config.json: the numbers of a decoder-only transformer that GPU memory
depends on (layers, widths, heads, vocabulary, tied embeddings, checkpoint dtype).

Does: read and check `config.json` (a multimodal wrapper's `text_config` too; InputError names the
file and the field) and derive the projection sizes per layer. Does not: size or plan any memory
(memory_sizing.py, memory.py), load weights, import torch or touch a GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submission.errors import InputError

VOCAB_PADDING = 64  # vLLM pads embedding / lm_head rows to a multiple of 64 (DEFAULT_VOCAB_PADDING_SIZE)


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory depends on."""

    source: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    checkpoint_dtype: str

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab // VOCAB_PADDING) * VOCAB_PADDING

    def linear_weights_per_layer(self) -> int:
        return sum(a * b for a, b in self.linear_dims().values())

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection, by peft module name."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def shape_from_dict(data: dict[str, Any], source: str = "config.json") -> ModelShape:
    """A ModelShape from a parsed config.json; InputError names the file and the missing field."""
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", file=source)
    if "hidden_size" not in data and isinstance(data.get("text_config"), dict):
        data = data["text_config"]  # multimodal wrappers keep the language model's shape here

    def need(name: str, default: int | None = None) -> int:
        value = default if data.get(name) is None else data[name]
        if value is None:
            raise InputError("missing; the memory plan needs the model's shape", file=source, field=name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"expected a positive integer, got {value!r}", file=source, field=name)
        return value

    if data.get("quantization_config"):
        raise InputError("pre-quantised checkpoints are not planned: vLLM 0.32.0 serves this "
                         "project's adapters on 16-bit base weights", file=source,
                         field="quantization_config")
    hidden, heads = need("hidden_size"), need("num_attention_heads")
    if data.get("head_dim") is None and hidden % heads:
        raise InputError(f"missing, and hidden_size {hidden} is not a multiple of "
                         f"num_attention_heads {heads}", file=source, field="head_dim")
    dtype = data.get("torch_dtype") or data.get("dtype") or "float32"  # transformers' default
    return ModelShape(source=source, layers=need("num_hidden_layers"), hidden=hidden, heads=heads,
                      kv_heads=need("num_key_value_heads", heads),  # absent: multi-head attention
                      head_dim=need("head_dim", hidden // heads),
                      intermediate=need("intermediate_size"), vocab=need("vocab_size"),
                      tied=bool(data.get("tie_word_embeddings", False)),
                      checkpoint_dtype=str(dtype).replace("torch.", ""))


def read_model_shape(model_dir: str | Path) -> ModelShape:
    """The shape in `model_dir/config.json` (InputError if missing, unreadable or incomplete)."""
    path = Path(model_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the model config: {exc}", file=str(path)) from exc
    return shape_from_dict(data, str(path))
