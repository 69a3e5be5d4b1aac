"""transformers + peft model loader (CPU and GPU). Builds the LoRA model the shared loop trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from . import has_cuda, installed, resolve_dtype


def lora_config(cfg: Config) -> Any:
    from peft import LoraConfig

    t = cfg.ttt
    return LoraConfig(r=t.r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                      target_modules=list(t.target_modules), use_rslora=t.use_rslora,
                      bias="none", task_type="CAUSAL_LM")


def load_peft(model_path: str | Path, cfg: Config) -> tuple[Any, Any, dict[str, Any]]:
    """(peft model, tokenizer, info). 4-bit only on a GPU with bitsandbytes; CPU runs full precision."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(cfg.model.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    four_bit = cfg.ttt.load_in_4bit and has_cuda() and installed("bitsandbytes")
    if four_bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(str(model_path), **kwargs)
    if has_cuda() and not four_bit:
        model = model.to("cuda")
    if cfg.ttt.gradient_checkpointing and has_cuda():
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.config.use_cache = False
    with torch.random.fork_rng(devices=[]):  # seeds LoRA A init without touching the global stream
        torch.manual_seed(cfg.ttt.seed)
        peft_model = get_peft_model(model, lora_config(cfg))
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    info = {"trainer_backend": "peft", "dtype": str(dtype).replace("torch.", ""),
            "load_in_4bit": four_bit, "device": "cuda" if has_cuda() else "cpu"}
    return peft_model, tokenizer, info
