"""unsloth 4-bit loader for the GPU trainer (thin: the loop, data and saving live in train.py).

GPU ONLY: unsloth cannot load a model without CUDA, so nothing below `_import_unsloth` runs in the CPU
tests; the tests check the wiring (clear error when unsloth or a GPU is missing, same LoRATrainer).
API facts (unsloth 2026.10.7): from_pretrained(load_in_4bit=True) and get_peft_model(r, lora_alpha,
target_modules, use_rslora, random_state) return an ordinary peft model; labels are shifted inside and
the loss honours `num_items_in_batch`; logits are empty unless UNSLOTH_RETURN_LOGITS=1; in fp16 the
fused cross-entropy reads a GradScaler from `accelerator_scaler` on the model wrappers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from submission.config import Config, TrainConfig
from submission.environment import set_offline
from submission.errors import BackendUnavailable
from submission.model.tokenizer import load_tokenizer
from submission.model.backends import has_cuda, installed, resolve_dtype

def prepare_env(compile_dir: str | Path | None = None) -> None:
    """Offline switches (environment.OFFLINE_ENV, forced) and a per-worker compile cache; must run
    before `import unsloth`."""
    set_offline(os.environ, force=True)
    if compile_dir is not None:
        os.environ["UNSLOTH_COMPILE_LOCATION"] = str(Path(compile_dir).resolve())


def _import_unsloth() -> Any:
    if not installed("unsloth"):
        raise BackendUnavailable("unsloth is not installed (GPU stack: pip install -r requirements.txt)")
    if not has_cuda():
        raise BackendUnavailable("unsloth needs a CUDA GPU; on CPU use ttt.backend=peft")
    prepare_env(os.environ.get("UNSLOTH_COMPILE_LOCATION"))
    import unsloth  # noqa: F401  (patches transformers; must precede model creation)
    from unsloth import FastLanguageModel

    return FastLanguageModel


def load_unsloth(model_path: str | Path, cfg: Config, section: TrainConfig | None = None
                 ) -> tuple[Any, Any, dict[str, Any], Any]:
    """(peft model, tokenizer, info, GradScaler or None) for `section` (default cfg.ttt). GPU only."""
    fast = _import_unsloth()
    dtype = resolve_dtype(cfg.model.dtype)
    t = section or cfg.ttt
    # unsloth returns an AutoTokenizer, which transformers 5 rebuilds wrongly for reduced BPE
    # vocabularies (tokenizer.py); the files' own tokenizer is used instead.
    tokenizer = load_tokenizer(model_path)
    # An absolute path never triggers unsloth's name-mapper refresh; local_files_only forces offline.
    model, _ = fast.from_pretrained(
        model_name=str(Path(model_path).resolve()), max_seq_length=cfg.model.max_seq_len,
        dtype=dtype, load_in_4bit=t.load_in_4bit, local_files_only=True, device_map={"": 0},
        use_gradient_checkpointing="unsloth" if t.gradient_checkpointing else False)
    model = fast.get_peft_model(
        model, r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
        target_modules=list(t.lora.target_modules), bias="none", use_rslora=t.lora.rslora,
        random_state=t.seed, max_seq_length=cfg.model.max_seq_len,
        modules_to_save=list(getattr(t, "modules_to_save", ())) or None,
        use_gradient_checkpointing="unsloth" if t.gradient_checkpointing else False)
    scaler = None
    if dtype == torch.float16:  # T4: the fused loss needs the scale during its forward pass
        scaler = torch.amp.GradScaler("cuda")
        for module in (model, model.base_model, model.base_model.model):
            module.accelerator_scaler = scaler
    info = {"trainer_backend": "unsloth", "dtype": str(dtype).replace("torch.", ""),
            "load_in_4bit": t.load_in_4bit, "device": "cuda"}
    return model, tokenizer, info, scaler


def set_mode(model: Any, training: bool) -> None:
    """unsloth's for_training / for_inference (checkpointing, cache, padding side). GPU only."""
    from unsloth import FastLanguageModel

    (FastLanguageModel.for_training if training else FastLanguageModel.for_inference)(model)
