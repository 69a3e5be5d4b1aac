"""transformers + peft model loader (CPU and GPU). Builds the LoRA model the shared loop trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config, TTTConfig
from . import has_cuda, installed, resolve_dtype


def lora_config(t: TTTConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=t.r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                      target_modules=list(t.target_modules), use_rslora=t.use_rslora,
                      modules_to_save=list(getattr(t, "modules_to_save", ())) or None,
                      bias="none", task_type="CAUSAL_LM")


def load_peft(model_path: str | Path, cfg: Config, section: TTTConfig | None = None
              ) -> tuple[Any, Any, dict[str, Any]]:
    """(peft model, tokenizer, info) for the LoRA settings of `section` (default cfg.ttt).
    4-bit only on a GPU with bitsandbytes; CPU runs full precision."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from ..tokenizer import load_tokenizer

    t = section or cfg.ttt
    dtype = resolve_dtype(cfg.model.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    four_bit = t.load_in_4bit and has_cuda() and installed("bitsandbytes")
    if four_bit:
        from transformers import BitsAndBytesConfig

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
    with torch.random.fork_rng(devices=[]):  # seeds LoRA A init without touching the global stream
        torch.manual_seed(t.seed)
        peft_model = get_peft_model(model, lora_config(t))
    tokenizer = load_tokenizer(model_path)  # as its files describe it (see tokenizer.py)
    info = {"trainer_backend": "peft", "dtype": str(dtype).replace("torch.", ""),
            "load_in_4bit": four_bit, "device": "cuda" if has_cuda() else "cpu"}
    return peft_model, tokenizer, info
