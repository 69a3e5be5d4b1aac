"""transformers + peft model loader (CPU and GPU). Builds the LoRA model the shared loop trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from submission.config import Config, TrainConfig
from submission.model.backends import has_cuda, installed, resolve_dtype


def lora_config(t: TrainConfig) -> Any:
    return LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                      target_modules=list(t.lora.target_modules), use_rslora=t.lora.rslora,
                      modules_to_save=list(getattr(t, "modules_to_save", ())) or None,
                      bias="none", task_type="CAUSAL_LM")


def load_peft(model_path: str | Path, cfg: Config, section: TrainConfig | None = None
              ) -> tuple[Any, Any, dict[str, Any]]:
    """(peft model, tokenizer, info) for the LoRA settings of `section` (default cfg.ttt).
    4-bit only on a GPU with bitsandbytes; CPU runs full precision."""
    from submission.model.tokenizer import load_tokenizer

    t = section or cfg.ttt
    dtype = resolve_dtype(cfg.model.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    four_bit = t.load_in_4bit and has_cuda() and installed("bitsandbytes")
    if four_bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(str(model_path), **kwargs)
    if has_cuda() and not four_bit:
        model = model.to("cuda")
    if t.gradient_checkpointing and has_cuda():
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.config.use_cache = False
    if getattr(t, "modules_to_save", ()):  # trained in full: lm_head and embed_tokens apart
        untie_embeddings(model)
    with torch.random.fork_rng(devices=[]):  # seeds LoRA A init without touching the global stream
        torch.manual_seed(t.seed)
        peft_model = get_peft_model(model, lora_config(t))
    tokenizer = load_tokenizer(model_path)  # as its files describe it (see tokenizer.py)
    info = {"trainer_backend": "peft", "dtype": str(dtype).replace("torch.", ""),
            "load_in_4bit": four_bit, "device": "cuda" if has_cuda() else "cpu"}
    return peft_model, tokenizer, info


def untie_embeddings(model: Any) -> bool:
    """Give the output embedding (lm_head) its own copy of a matrix it shares with the input
    embedding, and say so in the config (top level and text config, the two vLLM reads). For
    `modules_to_save` on a tied base (Qwen3-4B): peft 0.21.2 trains a separate deep copy of each
    module (utils/other.py:653) and only warns that the base ties them (tuners/tuners_utils.py:1454);
    its merge unties the config only when it finds the two apart (tuners/tuners_utils.py:722-735).
    Made explicit here, the model trained, the merged model and what vLLM loads are one untied
    model. Returns whether anything was tied."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None:
        return False
    configs = [model.config]
    if hasattr(model.config, "get_text_config"):
        configs.append(model.config.get_text_config())
    shared = out.weight.data_ptr() == inp.weight.data_ptr()
    flagged = any(getattr(c, "tie_word_embeddings", False) for c in configs)
    if not (shared or flagged):
        return False
    for c in configs:
        c.tie_word_embeddings = False
    if shared:
        out.weight = torch.nn.Parameter(inp.weight.detach().clone(),
                                        requires_grad=inp.weight.requires_grad)
    if hasattr(model, "all_tied_weights_keys"):  # transformers 5: what tie_weights() would re-tie
        model.all_tied_weights_keys = {}
    return True
