"""GPU memory sizing of one layout: what vLLM 0.32.0 and the 4-bit LoRA trainer beside it need at a
given `gpu_memory_utilization`, `max_loras` and `max_num_batched_tokens`, as a MemoryPlan.

Does: the estimates and their constants (weights, LoRA slot buffers, the profiled activation peak,
CUDA graphs, KV cache for at least one `max_model_len` sequence, the trainer), the MemoryPlan value
and the `LLM(...)` arguments it sized. Does not: choose a setting (memory.py searches them), read
config.json (model_shape.py), import torch or touch a GPU.

How vLLM 0.32.0 spends its share (read from its GPU wheel):
- `v1/worker/utils.py::request_memory`: the budget is ceil(total memory x gpu_memory_utilization),
  a fraction of the TOTAL memory, not of what is free (and free memory must be at least that).
- `v1/worker/gpu_worker.py::determine_available_memory`: KV cache = budget - (weights + non-torch
  memory + peak activation of `profile_run` at `max_num_batched_tokens`, `utils/mem_utils.py::
  memory_profiling`) - the CUDA graph estimate (`profile_cudagraph_memory`, counted because
  VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS defaults to 1).
- `v1/core/kv_cache_utils.py::check_enough_kv_cache_memory`: after setting aside one null block, the
  KV cache must hold one `max_model_len` request, else ValueError("To serve at least one request
  with the model's max seq len (...)"); zero or less raises "No available memory for the cache blocks".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from submission.config import MAX_LORA_RANK, Config
from submission.errors import SubmissionError
from submission.runtime.model_shape import ModelShape

GIB = float(1 << 30)
# config/lora.py::MaxLoRARanks: the only max_lora_rank values vLLM accepts (512 is the largest).
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
assert MAX_LORA_RANKS[-1] == MAX_LORA_RANK
VLLM_BLOCK_SIZE = 16  # config/cache.py: CacheConfig.DEFAULT_BLOCK_SIZE (FlashAttention on CUDA)
MAX_UTILIZATION = 0.92  # entrypoints/llm.py: LLM's default gpu_memory_utilization; never plan above it
# Estimates that vLLM measures at start-up and the source cannot give; set from its logs, rounded up.
NON_TORCH_GIB = 0.4  # "non_torch_memory takes 0.28-0.39GiB" in single-GPU vLLM profiling logs
ACTIVATION_SLACK = 1.25  # allocator rounding, LoRA shrink buffers, attention workspaces
SAMPLER_BYTES_PER_LOGIT = 32  # _dummy_sampler_run: fp32 logits, top-k/top-p sort values + int64 ids, probs
CUDAGRAPH_BASE_GIB = 0.1
CUDAGRAPH_PER_GRAPH_MIB = 10.0  # per captured graph key (one PIECEWISE key holds one graph per layer)
CUDA_CONTEXT_GIB = 0.6  # per process (torch + CUDA 13 kernels); outside vLLM's budget, which it
#                         measures after creating its context. One per worker: vLLM runs in the
#                         trainer's process (vllm_sampler.py sets VLLM_ENABLE_V1_MULTIPROCESSING=0,
#                         so v1/engine/core_client.py:133 builds an InprocClient)
KV_MARGIN_GIB = 0.5  # KV must exceed one full sequence by this much (the estimates above may be short)
CARD_MARGIN_GIB = 0.5  # left unused on the card
# Trainer (unsloth 4-bit). bitsandbytes 0.50.2 NF4 with double quantisation (unsloth sets
# bnb_4bit_use_double_quant=True): 4 bits per weight + an 8-bit absmax per 64-weight block + an fp32
# absmax per 256 such blocks (functional.py::quantize_4bit, blocksize 64, nested blocksize 256).
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
# Only nn.Linear layers are quantised: embed_tokens (nn.Embedding) and lm_head stay 16-bit
# (transformers quantizers/base.py::get_keys_to_not_convert; unsloth_zoo SKIP_QUANTIZATION_MODULES).
LORA_TRAIN_BYTES_PER_PARAM = 20  # unsloth upcasts LoRA to fp32: weight 4 + grad 4 + Adam 8 + foreach temp 4
# train.py LoRATrainer._init: a clone of the fresh adapter kept on the GPU for reset(), at the LoRA's
# own dtype, fp32 under both trainers (unsloth_zoo/training_utils.py:349-361 and 451-455 cast trainable
# LoRA weights to float32; peft/tuners/tuners_utils.py:2705-2722 upcasts fp16/bf16 adapters).
LORA_INIT_BYTES_PER_PARAM = 4
TRAIN_ACT_BYTES_PER_TOKEN_HIDDEN = 48  # unsloth_zoo block_swap.py: measured 42 on Llama-3.1-8B 4-bit
TRAIN_LOGIT_ROWS = 2048  # unsloth's chunked cross-entropy holds fp32 logits for at most this many rows
TRAIN_FRAGMENTATION = 1 / 16
TRAIN_SAFETY_GIB = 0.25
_PACKED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
           "up_proj": "gate_up_proj", "o_proj": "o_proj", "down_proj": "down_proj"}


class MemoryPlanError(SubmissionError):
    """The model, its LoRA slots and the trainer cannot share this GPU; the message names the numbers."""


def vllm_max_lora_rank(r: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds rank `r` (config rejects ttt.lora.r > 512)."""
    return next(v for v in MAX_LORA_RANKS if v >= r)


def compute_dtype(cfg_dtype: str, compute_capability: tuple[int, int]) -> str:
    """What the GPU path runs in: bf16 on compute capability >= 8, fp16 before (T4), as
    backends.resolve_dtype; vLLM downcasts fp32 checkpoints the same way (config/model.py)."""
    if cfg_dtype == "auto" or (cfg_dtype == "bfloat16" and compute_capability[0] < 8):
        return "bfloat16" if compute_capability[0] >= 8 else "float16"
    return cfg_dtype


@dataclass(frozen=True)
class MemoryPlan:
    """One memory layout for a GPU (sizes in GiB); `fits` False comes with `reason`."""

    fits: bool
    reason: str
    gpu_gib: float
    compute_capability: tuple[int, int]
    dtype: str
    gpu_memory_utilization: float
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    max_num_batched_tokens: int
    max_model_len: int
    max_num_seqs: int
    lora_target_modules: tuple[str, ...]
    enforce_eager: bool
    vllm_gib: float  # the engine's budget: gpu_gib x gpu_memory_utilization
    weights_gib: float
    lora_slots_gib: float
    non_torch_gib: float
    activation_gib: float
    cudagraph_gib: float
    kv_cache_gib: float  # what remains for the KV cache (vLLM's "Available KV cache memory")
    kv_one_seq_gib: float  # one max_model_len sequence plus vLLM's null block
    kv_tokens: int
    vllm_overflow_gib: float  # logits vLLM computes outside its profiled peak (prompt logprobs)
    trainer_on_same_gpu: bool
    trainer_gib: float
    trainer_base_gib: float
    trainer_lora_gib: float
    trainer_activation_gib: float
    cuda_contexts_gib: float
    margin_gib: float
    host_lora_gib: float  # pinned host copies of max_cpu_loras adapters
    notes: tuple[str, ...] = field(default=())
    sampler: str = "vllm"  # what samples: "vllm" beside the trainer, or "transformers" (trainer alone)
    vllm_rescore: bool = True  # vLLM's prompt-logprob logits reserved: re-scoring may run in vLLM
    trainer_init_gib: float = 0.0  # LoRATrainer._init, the adapter's initial copy

    @property
    def kv_seqs(self) -> float:
        return self.kv_tokens / self.max_model_len

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(compute_capability=list(self.compute_capability), notes=list(self.notes),
                    lora_target_modules=list(self.lora_target_modules), kv_seqs=round(self.kv_seqs, 2))
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}

    def vllm_kwargs(self) -> dict[str, Any]:
        """The `LLM(...)` arguments this plan sized (pass them all: LoRA buffers depend on each)."""
        return dict(gpu_memory_utilization=self.gpu_memory_utilization, max_loras=self.max_loras,
                    max_cpu_loras=self.max_cpu_loras, max_lora_rank=self.max_lora_rank,
                    max_num_batched_tokens=self.max_num_batched_tokens,
                    max_model_len=self.max_model_len, enable_chunked_prefill=True,
                    lora_target_modules=list(self.lora_target_modules))

    def require_fit(self) -> "MemoryPlan":
        if not self.fits:
            raise MemoryPlanError(self.reason)
        return self


def _lora_slot_elements(shape: ModelShape, rank: int, targets: tuple[str, ...]) -> int:
    """Elements of one adapter slot: vLLM stacks lora_a (rank x in) and lora_b (out x rank) per
    slice of each wrapped module (lora/layers/base_linear.py and column_parallel_linear.py::
    create_lora_weights); q/k/v are one packed qkv_proj, gate/up one gate_up_proj."""
    dims = shape.linear_dims()
    packed = {_PACKED[m] for m in targets if m in _PACKED}
    members = {p: [m for m, q in _PACKED.items() if q == p] for p in packed}
    per_layer = sum(rank * (dims[m][0] + dims[m][1]) for p in packed for m in members[p])
    return per_layer * shape.layers


def _cudagraph_keys(max_num_seqs: int, tokens: int, compute_capability: tuple[int, int]) -> int:
    """Graphs captured by default (FULL_AND_PIECEWISE, cudagraph_specialize_lora): capture sizes
    from config/vllm.py (1, 2, 4, then steps of 8 to 256, of 16 beyond, up to min(2 x
    max_num_seqs, 512 or 1024 on Blackwell, max_num_batched_tokens)), each with and without LoRA
    (v1/cudagraph_dispatcher.py::_get_lora_cases); FULL decode graphs for sizes <= max_num_seqs."""
    cap = min(max_num_seqs * 2, 1024 if compute_capability[0] == 10 else 512, tokens)
    sizes = {s for s in (1, 2, 4) if s <= cap} | set(range(8, min(cap + 1, 256), 8))
    sizes |= set(range(256, cap + 1, 16)) | {s for s in (tokens, max_num_seqs) if s <= cap}
    decode = [s for s in sizes if s <= max_num_seqs]
    return 2 * (len(sizes) + len(decode))


@dataclass(frozen=True)
class _Trainer:
    base: float
    lora: float
    init: float
    activation: float
    total: float


def _trainer_need(shape: ModelShape, cfg: Config, dtype: str) -> _Trainer:
    """GiB the 4-bit LoRA trainer holds on its GPU: base weights, LoRA weights + grads + Adam, the
    adapter's initial copy, activations and logits (with fragmentation and a safety allowance)."""
    t, L = cfg.ttt, cfg.model.max_seq_len
    b = 4 if dtype == "float32" else 2
    h, i, v = shape.hidden, shape.intermediate, shape.padded_vocab
    targets = tuple(m for m in t.lora.target_modules if m in _PACKED)
    embed = v * h * (1 if shape.tied else 2)
    lora_params = sum(t.lora.r * sum(shape.linear_dims()[m]) for m in targets) * shape.layers
    per_weight = NF4_BYTES_PER_WEIGHT if t.load_in_4bit else b
    base = (shape.linear_weights_per_layer() * shape.layers * per_weight
            + (embed + (2 * shape.layers + 1) * h) * b) / GIB
    lora_state = lora_params * LORA_TRAIN_BYTES_PER_PARAM / GIB
    init = lora_params * LORA_INIT_BYTES_PER_PARAM / GIB
    seq = L * t.batch_size
    if t.gradient_checkpointing:
        act = seq * h * TRAIN_ACT_BYTES_PER_TOKEN_HIDDEN
    else:  # every layer keeps its inputs, attention and MLP intermediates
        act = seq * shape.layers * (4 * h + 2 * shape.q_dim + 2 * shape.kv_dim + 4 * i) * b
    # fused cross-entropy logits while training; a forward-pass re-score keeps [L, vocab] logits
    logits = max(min(seq, TRAIN_LOGIT_ROWS) * v * 4, L * v * b)
    train_act = (act + logits) / GIB
    total = base + init + (lora_state + train_act) * (1 + TRAIN_FRAGMENTATION) + TRAIN_SAFETY_GIB
    return _Trainer(base, lora_state, init, train_act, total)


def _kv_block_bytes(shape: ModelShape, b: int) -> int:
    return VLLM_BLOCK_SIZE * 2 * shape.layers * shape.kv_dim * b  # K and V of 16 tokens, all layers


def _trainer_plan(shape: ModelShape, cfg: Config, gpu_gib: float, cc: tuple[int, int]) -> MemoryPlan:
    """The trainer alone on the card; its transformers forward pass samples (one sequence's KV
    cache at a time, hf_sampler.py) and re-scores."""
    s, t, L = cfg.sampling, cfg.ttt, cfg.model.max_seq_len
    dtype = compute_dtype(cfg.model.dtype, cc)
    b = 4 if dtype == "float32" else 2
    trainer = _trainer_need(shape, cfg, dtype)
    one_seq = math.ceil(L / VLLM_BLOCK_SIZE) * _kv_block_bytes(shape, b) / GIB
    need = trainer.total + one_seq + CUDA_CONTEXT_GIB + CARD_MARGIN_GIB
    reason = "" if need <= gpu_gib else (
        f"{gpu_gib:.2f} GiB card: the trainer alone needs {trainer.total:.2f} GiB (base "
        f"{trainer.base:.2f}, LoRA+grads+Adam {trainer.lora:.2f}, initial adapter copy "
        f"{trainer.init:.2f}, activations {trainer.activation:.2f}), one {L}-token KV cache for "
        f"sampling {one_seq:.3f}, the CUDA context {CUDA_CONTEXT_GIB:.2f} and the margin "
        f"{CARD_MARGIN_GIB:.2f} = {need:.2f} GiB; try a smaller model.max_seq_len or ttt.lora.r, or a "
        "bigger GPU")
    return MemoryPlan(
        fits=not reason, reason=reason, gpu_gib=gpu_gib, compute_capability=(cc[0], cc[1]), dtype=dtype,
        gpu_memory_utilization=0.0, max_loras=s.max_loras, max_cpu_loras=s.max_loras,
        max_lora_rank=vllm_max_lora_rank(t.lora.r), max_num_batched_tokens=0, max_model_len=L,
        max_num_seqs=s.max_num_seqs,
        lora_target_modules=tuple(m for m in t.lora.target_modules if m in _PACKED),
        enforce_eager=s.enforce_eager, vllm_gib=0.0, weights_gib=0.0, lora_slots_gib=0.0,
        non_torch_gib=0.0, activation_gib=0.0, cudagraph_gib=0.0, kv_cache_gib=one_seq,
        kv_one_seq_gib=one_seq, kv_tokens=L, vllm_overflow_gib=0.0, trainer_on_same_gpu=True,
        trainer_gib=trainer.total, trainer_base_gib=trainer.base, trainer_lora_gib=trainer.lora,
        trainer_activation_gib=trainer.activation, cuda_contexts_gib=CUDA_CONTEXT_GIB,
        margin_gib=CARD_MARGIN_GIB, host_lora_gib=0.0, sampler="transformers", vllm_rescore=False,
        trainer_init_gib=trainer.init)


def _evaluate(shape: ModelShape, cfg: Config, gpu_gib: float, cc: tuple[int, int],
              with_trainer: bool, util: float, n_loras: int, tokens: int,
              rescoring: bool = True) -> MemoryPlan:
    s, t, L = cfg.sampling, cfg.ttt, cfg.model.max_seq_len
    dtype = compute_dtype(cfg.model.dtype, cc)
    b = 4 if dtype == "float32" else 2
    h, i, v = shape.hidden, shape.intermediate, shape.padded_vocab
    rank = vllm_max_lora_rank(t.lora.r)
    targets = tuple(m for m in t.lora.target_modules if m in _PACKED)
    # vLLM side.
    embed = v * h * (1 if shape.tied else 2)
    weights = (shape.linear_weights_per_layer() * shape.layers + embed
               + (2 * shape.layers + 1) * h) * b / GIB
    lora_slots = n_loras * _lora_slot_elements(shape, rank, targets) * b / GIB
    reqs = min(s.max_num_seqs, tokens)
    forward = tokens * (2 * h + 3 * i) * b * ACTIVATION_SLACK
    sampler = reqs * v * SAMPLER_BYTES_PER_LOGIT + tokens * h * b
    activation = max(forward, sampler) / GIB
    cudagraphs = 0.0 if s.enforce_eager else (
        CUDAGRAPH_BASE_GIB + _cudagraph_keys(s.max_num_seqs, tokens, cc) * CUDAGRAPH_PER_GRAPH_MIB / 1024
        + min(tokens, 2 * s.max_num_seqs, 512) * (2 * h + 3 * i) * b / GIB)
    block = _kv_block_bytes(shape, b)
    one_seq = (math.ceil(L / VLLM_BLOCK_SIZE) + 1) * block / GIB  # + the null block
    # Not profiled by vLLM: prompt logprobs (re-scoring in vLLM, `rescoring`) compute [chunk, vocab]
    # logits in the model dtype, cast to fp32 and log-softmaxed (gpu_model_runner.py::
    # _get_prompt_logprobs_dict); decode top-k logprobs add an fp32 log-softmax to the sampler's peak.
    prompt_lp = min(tokens, L) * v * (b + 8) + tokens * h * b if rescoring else 0
    decode_lp = reqs * v * (SAMPLER_BYTES_PER_LOGIT + 8) + tokens * h * b
    overflow = max(0.0, max(prompt_lp, decode_lp) / GIB - activation)
    # Trainer side (0 when it has its own GPU).
    lora_params = sum(t.lora.r * sum(shape.linear_dims()[m]) for m in targets) * shape.layers
    tr = _trainer_need(shape, cfg, dtype) if with_trainer else _Trainer(0.0, 0.0, 0.0, 0.0, 0.0)
    trainer = tr.total
    contexts = CUDA_CONTEXT_GIB  # one process holds the trainer and vLLM (see CUDA_CONTEXT_GIB)
    outside = contexts + overflow + trainer + CARD_MARGIN_GIB
    if not util:
        util = min(MAX_UTILIZATION, math.floor((gpu_gib - outside) / gpu_gib * 100) / 100)
    budget = max(util, 0.0) * gpu_gib
    kv = budget - weights - lora_slots - NON_TORCH_GIB - activation - cudagraphs
    kv_tokens = max(0, int(kv * GIB // block) - 1) * VLLM_BLOCK_SIZE
    fixed = (f"weights {weights:.2f} + LoRA slots {lora_slots:.2f} ({n_loras} x rank {rank}) + "
             f"non-torch {NON_TORCH_GIB:.2f} + activations {activation:.2f} ({tokens} batched "
             f"tokens) + CUDA graphs {cudagraphs:.2f}")
    reason = ""
    if util <= 0 or budget + outside > gpu_gib + 1e-9:
        reason = (f"{gpu_gib:.2f} GiB card: the trainer needs {trainer:.2f} GiB, CUDA context "
                  f"{contexts:.2f}, logits outside vLLM's profile {overflow:.2f} and the margin "
                  f"{CARD_MARGIN_GIB:.2f}, leaving {gpu_gib - outside:.2f} GiB "
                  f"(gpu_memory_utilization {max(gpu_gib - outside, 0) / gpu_gib:.2f}) for vLLM, "
                  f"which needs {fixed} + KV for one {L}-token sequence {one_seq:.3f} = "
                  f"{budget - kv + one_seq:.2f} GiB")
    elif kv < one_seq + KV_MARGIN_GIB:
        reason = (f"vLLM at gpu_memory_utilization={util:.2f} of {gpu_gib:.2f} GiB gets "
                  f"{budget:.2f} GiB: {fixed} leave {kv:.2f} GiB for the KV cache, but one "
                  f"{L}-token sequence needs {one_seq:.3f} GiB (+{KV_MARGIN_GIB} margin): vLLM "
                  "would raise ValueError at start-up")
    return MemoryPlan(
        fits=not reason, reason=reason, gpu_gib=gpu_gib, compute_capability=(cc[0], cc[1]), dtype=dtype,
        gpu_memory_utilization=round(util, 4), max_loras=n_loras, max_cpu_loras=n_loras,
        max_lora_rank=rank, max_num_batched_tokens=tokens, max_model_len=L,
        max_num_seqs=s.max_num_seqs, lora_target_modules=targets, enforce_eager=s.enforce_eager,
        vllm_gib=budget, weights_gib=weights, lora_slots_gib=lora_slots, non_torch_gib=NON_TORCH_GIB,
        activation_gib=activation, cudagraph_gib=cudagraphs, kv_cache_gib=kv, kv_one_seq_gib=one_seq,
        kv_tokens=kv_tokens, vllm_overflow_gib=overflow, trainer_on_same_gpu=with_trainer,
        trainer_gib=trainer, trainer_base_gib=tr.base, trainer_lora_gib=tr.lora,
        trainer_activation_gib=tr.activation, cuda_contexts_gib=contexts, margin_gib=CARD_MARGIN_GIB,
        host_lora_gib=n_loras * lora_params * b / GIB, vllm_rescore=rescoring,
        trainer_init_gib=tr.init)
