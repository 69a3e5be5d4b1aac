"""A tiny random causal LM with a format's reduced-vocabulary tokenizer, built locally.

For tests and CPU dry-runs only: the weights are random, so its answers are noise until trained.
Nothing is downloaded. The architecture (Qwen3, like NVARC's base) is one vLLM and unsloth serve.
The `architects` tokenizer has the begin token `<s>`, as the ARChitects' checkpoint does.
"""

from __future__ import annotations

import json
from pathlib import Path

from submission.arc.formats import AUTO, build_tokenizer, reduced_vocab

DEFAULT_FORMAT = "qwen-chat"  # what `model.format=auto` builds: there is no model to detect from yet


def make_tiny_model(out_dir: str | Path, format_name: str = "qwen-chat", *, seed: int = 0,
                    hidden_size: int = 64, layers: int = 2, heads: int = 2, kv_heads: int = 1,
                    max_positions: int = 8192, head_std: float = 0.5,
                    tie_embeddings: bool = False) -> Path:
    """Write a random Qwen3 causal LM and its tokenizer to `out_dir`; returns the path.
    `tie_embeddings`: one matrix for embed_tokens and lm_head (as Qwen3-4B)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    format_name = DEFAULT_FORMAT if format_name == AUTO else format_name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(format_name, out)
    vocab, _ = reduced_vocab(format_name)
    cfg = Qwen3Config(
        vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=32, max_position_embeddings=max_positions, tie_word_embeddings=tie_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32", rope_theta=10000.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(cfg)
        # The default init (std 0.02) caps a 16-token head's logits near +-1, so no LoRA on the
        # linear layers could make a confident prediction; a wider head keeps the model learnable.
        torch.nn.init.normal_(model.lm_head.weight, std=head_std)
    model.save_pretrained(str(out))
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    (out / "generation_config.json").write_text(json.dumps(
        {k: v for k, v in special.items() if v is not None}))
    (out / "arc_format.json").write_text(json.dumps({"format": format_name, "tiny_random": True}))
    return out

