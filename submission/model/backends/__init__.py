"""Model backends. unsloth and vLLM are imported only inside the functions of their own modules
(unsloth cannot load without a GPU, vLLM is heavy); the transformers and peft ones import torch,
transformers and peft at the top of the file. This module picks backends and resolves dtypes. It
imports torch only inside `has_cuda` and `resolve_dtype`: the supervisor reads `installed` from it
for its memory plan (runtime/startup.py) and stays torch-free."""

from __future__ import annotations

import importlib.util
from typing import Any

from submission.errors import BackendUnavailable


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_dtype(name: str) -> Any:
    """torch dtype for a config name: auto is bf16 on compute capability >= 8, fp16 on older GPUs,
    fp32 on CPU (every visible GPU must support bf16, as unsloth decides)."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if not torch.cuda.is_available():
        return torch.float32
    caps = [torch.cuda.get_device_capability(i)[0] for i in range(torch.cuda.device_count())]
    return torch.bfloat16 if min(caps) >= 8 else torch.float16


def choose_trainer_backend(requested: str) -> str:
    """'unsloth' or 'peft'. auto takes unsloth only with a GPU and unsloth installed."""
    if requested == "unsloth":
        if not installed("unsloth"):
            raise BackendUnavailable("ttt.backend=unsloth but unsloth is not installed "
                                     "(pip install -r requirements.txt on a GPU machine)")
        if not has_cuda():
            raise BackendUnavailable("ttt.backend=unsloth needs a CUDA GPU; use ttt.backend=peft on CPU")
        return "unsloth"
    if requested == "auto":
        return "unsloth" if has_cuda() and installed("unsloth") else "peft"
    return "peft"


def choose_sampler_backend(requested: str) -> str:
    """'vllm' or 'transformers'. auto takes vLLM when importable, on any GPU it supports: 0.32.0
    runs on compute capability 7.5 (T4) with its Triton attention backend (vllm/platforms/cuda.py:
    168-179 lists it after FlashAttention and FlashInfer, which need 8.0: v1/attention/backends/
    flash_attn.py:453-454, flashinfer.py:571-577; triton_attn.py:381-382 takes any capability).
    Whether vLLM also fits beside the trainer is the memory plan's call (startup.plan_layout),
    which switches the run to transformers where it does not."""
    if requested == "vllm":
        if not installed("vllm"):
            raise BackendUnavailable("sampling.backend=vllm but vllm is not installed")
        return "vllm"
    if requested == "auto":
        return "vllm" if installed("vllm") else "transformers"
    return "transformers"
