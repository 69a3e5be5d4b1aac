"""The config sections: every field with its default and why, the choices as `Literal` types, and
each section's own check (`check(where)`, run by `Config` on construction).

TTT and the initial fine-tune share one training loop (`TrainConfig`: model/train.py and the
loaders) and one adapter shape (`LoraConfig`, the `[ttt.lora]` and `[finetune.lora]` tables).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from submission.config.fields import (build, check_fields, hints, is_section, parse_value,
                                      positive, renamed_error, short, within)
from submission.environment import TIME_BUDGET_S
from submission.errors import ConfigError

ANSWER_SECTIONS = ("model", "ttt", "sampling", "selection")  # what a task's answers depend on
TRAIN_SECTIONS = ("ttt", "finetune")  # one training loop (train.py): the same rules for both
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FULL_MODULES = ("embed_tokens", "lm_head")  # vLLM serves no LoRA on them; the fine-tune trains them fully

FormatName = Literal["auto", "qwen-chat", "architects"]  # arc/formats.py FORMAT_CHOICES
DtypeName = Literal["auto", "bfloat16", "float16", "float32"]
TrainBackend = Literal["auto", "unsloth", "peft"]
SamplingBackend = Literal["auto", "vllm", "transformers"]
Policy = Literal["vote", "poe", "count-nll"]  # answers/select.py POLICIES
RescoreBackend = Literal["auto", "vllm", "forward"]
LanePolicy = Literal["lane-first", "neural-first"]  # lane/ensemble.py

# Sizes with an upper (or lower) bound: a value outside is a typo, not a plan. (lo, hi), inclusive.
MAX_VIEWS = 256  # 8 D8 elements x 32 colour permutations; a task with two colours besides the
# background has only 8 x 72 distinct views, and 256 views of ~3k tokens take minutes per test
# input on an L4, several times a 120-task run's whole share per task
MAX_DFS_PATHS = 64  # answers with p >= dfs_threshold: at most 1/threshold exist (they sum to 1)
RESCORE_AUGMENTATIONS_LIMIT = 64  # twice the 32 the 2025 ARChitects scored under; each is a prefill
MAX_STEPS = 1_000_000  # at >= 0.1 s per optimizer step of a 4B model, a million steps is days
MAX_EPOCHS = 100  # MIT and NVARC make 1-2 passes; 100 passes over the same samples memorise them
MAX_WORKERS = 64  # one process and model copy per GPU; the largest single machines hold 8 to 16
MIN_STALL_S = 10.0  # heartbeats come at most once a second (watchdog.Beat) and one long prefill
# on a T4 takes seconds: a shorter allowance kills healthy work as hung
MIN_TASK_CAP_S = 60.0  # one task loads its adapter, trains, samples and re-scores: a minute at least
SEED_MAX = 2**32 - 1  # vLLM seeds numpy's legacy generator, which takes 0 .. 2**32 - 1
MAX_LORA_RANK = 512  # the largest max_lora_rank vLLM accepts
_MODULE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")  # q_proj, model.layers.0.mlp.up_proj


def _check_seed(seed: int, where: str) -> None:
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"config {where}.seed={short(seed)}: must be in 0..{SEED_MAX}")


@dataclass(frozen=True)
class ModelConfig:
    format: FormatName = "auto"  # auto: detected from the model's tokenizer (qwen-chat: NVARC, architects: ARChitects)
    dtype: DtypeName = "auto"  # auto: bf16 on GPUs with compute capability >= 8, fp16 on T4, fp32 on CPU
    max_seq_len: int = 8192  # ARC-AGI-2 prompt+answer: p90 ~4.7k, max ~9.4k tokens; longer demos get dropped

    def check(self, where: str) -> None:
        check_fields(self, where)
        positive(self, where, "max_seq_len")


@dataclass(frozen=True)
class LoraConfig:
    """The adapter's shape: what TTT trains per task, the fine-tune once, and vLLM serves."""

    r: int = 64  # LoRA rank; MIT used 128, NVARC 256 (rsLoRA); 64 keeps vLLM's max_lora_rank cheap
    alpha: int = 32  # with rsLoRA the scale is alpha/sqrt(r), as NVARC (a=32)
    rslora: bool = True  # rank-stabilised scaling keeps the effective lr stable across ranks
    dropout: float = 0.0  # dropout hurts on 100-sample runs and disables unsloth's fused kernels
    target_modules: tuple[str, ...] = LINEAR_MODULES  # linear layers only: vLLM rejects lm_head/embed LoRA

    def check(self, where: str) -> None:
        check_fields(self, where)
        positive(self, where, "r", "alpha")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config {where}.dropout={short(self.dropout)}: must be in [0, 1)")
        key, modules = f"{where}.target_modules", self.target_modules
        if not modules:
            raise ConfigError(f"config {key}: empty; name the linear layers to adapt, e.g. "
                              f"{','.join(LINEAR_MODULES)}")
        bad = [m for m in modules if not _MODULE_NAME.fullmatch(m)]
        if bad:
            raise ConfigError(f"config {key}: {short(bad)} are not module names (letters, digits, "
                              "'_', dot-separated)")
        twice = sorted({m for m in modules if modules.count(m) > 1})
        if twice:
            raise ConfigError(f"config {key}: {short(twice)} listed twice")
        full = [m for m in modules if m in FULL_MODULES]
        if full:
            raise ConfigError(f"config {key}: {full} cannot be served by vLLM as LoRA; use linear "
                              "layers (finetune.modules_to_save trains them fully)")


@dataclass(frozen=True)
class TrainConfig:
    """What TTT and the initial fine-tune share: the loaders' settings and the training loop's."""

    backend: TrainBackend = "auto"  # auto: unsloth when a GPU and unsloth are present, else transformers+peft
    load_in_4bit: bool = True  # unsloth 4-bit base (ARChitects): frees memory for the sampler on the same L4
    lora: LoraConfig = LoraConfig()
    learning_rate: float = 1e-4  # MIT TTT per-task lr
    weight_decay: float = 0.0  # too few steps for decay to matter
    warmup_fraction: float = 0.1  # short linear warmup, then linear decay to 0 (MIT, NVARC)
    epochs: int = 1  # NVARC: one pass over 128 augmented samples
    batch_size: int = 1  # one sequence per step: ARC lengths vary 10x, padding wastes GPU time
    grad_accum: int = 2  # effective batch 2 (MIT)
    max_steps: int = 0  # 0: epochs * samples / (batch * accum); a positive value caps the steps
    max_grad_norm: float = 1.0  # clip: tiny data, occasional huge-gradient samples
    keep_background: bool = True  # colour 0 stays 0 in colour permutations (background in most tasks)
    gradient_checkpointing: bool = True  # 8k-token sequences on an L4; ignored on CPU
    seed: int = 0  # adapter init and data sampling; every task draws from its own derived stream

    def check(self, where: str) -> None:
        check_fields(self, where)
        _check_seed(self.seed, where)
        self.lora.check(f"{where}.lora")
        positive(self, where, "learning_rate", "epochs", "batch_size", "grad_accum")
        within(self, where, "max_steps", 0, MAX_STEPS)
        within(self, where, "epochs", 1, MAX_EPOCHS)
        if not (self.weight_decay >= 0.0 and 0.0 <= self.warmup_fraction <= 1.0
                and self.max_grad_norm > 0.0):
            raise ConfigError(f"config {where}: weight_decay must be >= 0, warmup_fraction in "
                              "[0, 1], max_grad_norm > 0")


@dataclass(frozen=True)
class TTTConfig(TrainConfig):
    """Test-time training: one adapter per task on its own demonstrations."""

    enabled: bool = True  # False samples the base model only (ablation / no-TTT baseline)
    max_samples: int = 128  # NVARC: 8 dihedral x 16 colour perms; MIT capped at 250
    skip_first_output: bool = False  # loss on every demo output (MIT); True skips the first (no context yet)

    def check(self, where: str) -> None:
        super().check(where)
        positive(self, where, "max_samples")
        if self.lora.r > MAX_LORA_RANK:
            raise ConfigError(f"config {where}.lora.r={short(self.lora.r)}: vLLM serves LoRA ranks "
                              f"up to {MAX_LORA_RANK} (max_lora_rank)")


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """The initial fine-tune over many tasks (finetune command): same loop and loaders as TTT."""

    load_in_4bit: bool = False  # a base model is worth 16-bit training where memory allows
    # ARChitects trained their base LoRA at r=64-256 over all tasks
    lora: LoraConfig = LoraConfig(r=64, alpha=64, rslora=False)
    warmup_fraction: float = 0.05
    grad_accum: int = 16  # effective batch 16: steadier over thousands of different tasks
    samples_per_task: int = 8  # augmented copies of every task (D8 x colours x demo order)
    modules_to_save: tuple[str, ...] = ()  # trained in full, e.g. embed_tokens,lm_head (then merged)
    checkpoint_every: int = 200  # optimizer steps between resumable checkpoints
    keep_checkpoints: int = 2  # older checkpoints are deleted

    def check(self, where: str) -> None:
        super().check(where)
        bad = [m for m in self.modules_to_save if m not in FULL_MODULES]
        if bad:
            raise ConfigError(f"config {where}.modules_to_save: {bad}; only embed_tokens and lm_head")
        if self.samples_per_task < 1 or self.checkpoint_every < 1:
            raise ConfigError(f"config {where}.samples_per_task and checkpoint_every must be >= 1")


@dataclass(frozen=True)
class SamplingConfig:
    backend: SamplingBackend = "auto"  # auto: vLLM if importable and it fits beside the trainer, else transformers
    n_views: int = 16  # ARChitects/NVARC: 16 views (8 dihedral x 2 colour perms), demo order shuffled
    dfs_threshold: float = 0.17  # ARChitects' DFS: every answer with p >= 0.17 (NVARC: 0.2); 0: greedy only
    dfs_max_paths: int = 8  # answers searched per view at most (the greedy one included)
    # views check the answers earlier views found in one prefill instead of decoding them again: the
    # same answers (tests/answers/test_search.py), 8x fewer decoded tokens when 8 views agree
    # (benchmarks/speculative_dfs.py, docs/method.md); false: every view decodes (plain DFS)
    speculative: bool = True
    unsure_extra_views: int = 16  # more views for a test input whose answers disagree (if time allows)
    unsure_agreement: float = 0.5  # "disagree": the top answer has under this share of the parsed ones
    n_samples: int = 0  # extra samples per view at `temperature` on top of the greedy answer
    temperature: float = 1.0  # only for the extra samples
    keep_background: bool = True  # same convention as TTT data
    shuffle_order: bool = True  # demo order is part of the view
    base_model_fallback: bool = True  # sample the base model (no LoRA) for tasks whose adapter failed
    gpu_memory_utilization: float = 0.0  # 0: the memory plan (memory.py) gives vLLM what the trainer leaves
    max_loras: int = 8  # adapters resident in one engine batch; the memory plan may lower it to fit
    max_num_seqs: int = 128  # concurrent sequences per engine step
    max_num_batched_tokens: int = 0  # 0: the memory plan picks it; below max_seq_len prefill is chunked
    enforce_eager: bool = False  # CUDA graphs on GPU; the CPU backend ignores it
    seed: int = 0  # engine seed (per-request seeds crash vLLM on CPU with chunked prefill)

    def check(self, where: str) -> None:
        check_fields(self, where)
        _check_seed(self.seed, where)
        positive(self, where, "n_views", "max_loras", "max_num_seqs")
        within(self, where, "n_views", 1, MAX_VIEWS)
        within(self, where, "unsure_extra_views", 0, MAX_VIEWS)
        within(self, where, "dfs_max_paths", 1, MAX_DFS_PATHS)
        if not 0.0 <= self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"config {where}.gpu_memory_utilization must be in [0, 1] (0: auto)")
        if not (self.max_num_batched_tokens == 0 or self.max_num_batched_tokens >= self.max_num_seqs):
            raise ConfigError(f"config {where}.max_num_batched_tokens must be 0 (auto) or >= "
                              f"{where}.max_num_seqs (vLLM rejects fewer)")
        if not 0.0 <= self.unsure_agreement <= 1.0:
            raise ConfigError(f"config {where}.unsure_agreement must be in [0, 1]")
        if not 0.0 <= self.dfs_threshold < 1.0:
            raise ConfigError(f"config {where}.dfs_threshold must be in [0, 1)")
        if self.n_samples < 0:
            raise ConfigError(f"config {where}.n_samples must be >= 0")
        if self.temperature < 0.0:
            raise ConfigError(f"config {where}.temperature must be >= 0")


@dataclass(frozen=True)
class SelectionConfig:
    policy: Policy = "count-nll"  # NVARC 2025 winner: times found minus mean NLL under augmentations
    rescore_augmentations: int = 8  # augmented prompts each candidate is re-scored under
    max_rescore: int = 8  # most frequent candidates re-scored per test input
    poe_offset: float = 3.0  # ARChitects: sum over augmentations of (log p + 3)
    # auto: vLLM if it orders candidates as the forward pass does and is faster
    rescore_backend: RescoreBackend = "auto"

    def check(self, where: str) -> None:
        check_fields(self, where)
        positive(self, where, "rescore_augmentations")
        within(self, where, "rescore_augmentations", 1, RESCORE_AUGMENTATIONS_LIMIT)


@dataclass(frozen=True)
class BudgetConfig:
    time_budget_s: float = TIME_BUDGET_S  # Kaggle's 12 h minus margin for start-up and writing
    workers: int = 1  # worker processes, one per GPU (4 on 4 x L4); 0 runs in this process
    task_cap_s: float = 1800.0  # hard cap per task: its worker is killed, the task re-queued once
    stall_s: float = 300.0  # no heartbeat (step, finished request, score call) this long = hung
    calibrate: bool = True  # measure the three rates at engine start (a few seconds on GPU)
    keep_adapters: bool = False  # False deletes each adapter once its task's answers are written
    # >1 lets spare time buy more TTT samples, views, a lower DFS threshold and more re-scoring than
    # configured; benchmarks/budget_sim.py: 240 tasks all answered by their own adapter at 40% of
    # the priors with 4 (docs/operations.md)
    max_scale: float = 4.0
    prior_train_tokens_per_s: float = 2500.0  # L4, 4B 4-bit: 128 samples of ~2.5k tokens in ~2 min
    prior_sample_tokens_per_s: float = 3000.0  # L4: 16 views of ~2.9k tokens in ~15 s
    prior_score_tokens_per_s: float = 9000.0  # as one pass per (aug., candidate); prefix reuse: ~4x
    # speculative verification, (prompt + draft) tokens prefilled per second: L4 bf16 peak 121 TFLOPS
    # over 2 x 4e9 FLOPs per token of a 4B model is ~15k tokens/s; at 40% of peak
    prior_verify_tokens_per_s: float = 6000.0

    def check(self, where: str) -> None:
        check_fields(self, where)
        positive(self, where, "max_scale", "stall_s", "task_cap_s", "time_budget_s",
                 *(f.name for f in dataclasses.fields(self) if f.name.startswith("prior_")))
        within(self, where, "workers", 0, MAX_WORKERS)
        within(self, where, "stall_s", MIN_STALL_S)
        within(self, where, "task_cap_s", MIN_TASK_CAP_S)


@dataclass(frozen=True)
class LaneConfig:
    """The CPU program-search lane (submission/lane/) beside the GPU workers."""

    enabled: bool = True  # attempt 1 of a verified program: wrong on 0 of 98 ARC-AGI-1 training tasks
    policy: LanePolicy = "lane-first"  # how its answers join the model's (see lane/ensemble.py)
    task_cap_s: float = 60.0  # CPU seconds per task; lowered where the budget cannot pay for it
    processes: int = 0  # 0: the machine's cores minus reserve_cores (at least 1)
    reserve_cores: int = 2  # cores left to the GPU workers and the supervisor (per worker: 1 more)
    mem_mib: int = 3072  # address-space limit of each lane process (RLIMIT_AS)
    nice: int = 19  # lane processes yield the cores to the workers whenever both want them

    def check(self, where: str) -> None:
        check_fields(self, where)
        positive(self, where, "task_cap_s", "mem_mib")
        if self.processes < 0 or self.reserve_cores < 0 or not 0 <= self.nice <= 19:
            raise ConfigError(f"config {where}.processes and {where}.reserve_cores must be >= 0, "
                              f"{where}.nice in 0..19")


# Keys before the LoRA fields became the [ttt.lora] / [finetune.lora] tables: old name -> new name
_LORA_RENAMES = {"r": "r", "lora_alpha": "alpha", "use_rslora": "rslora", "lora_dropout": "dropout",
                 "target_modules": "target_modules"}
RENAMED = {f"{s}.{old}": f"{s}.lora.{new}" for s in TRAIN_SECTIONS for old, new in _LORA_RENAMES.items()}


def upgrade_json(data: Any) -> Any:
    """A config dict stored before the LoRA tables (records, adapters, run.json) in today's
    layout: the same values under their new keys. Anything else comes back as it was."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for s in TRAIN_SECTIONS:
        sec = out.get(s)
        if isinstance(sec, dict) and "lora" not in sec and set(_LORA_RENAMES) & set(sec):
            lora = {new: sec[old] for old, new in _LORA_RENAMES.items() if old in sec}
            out[s] = {**{k: v for k, v in sec.items() if k not in _LORA_RENAMES}, "lora": lora}
    return out


@dataclass(frozen=True)
class Config:
    """One frozen, nested configuration passed down every stage; every section checks itself."""

    model: ModelConfig = field(default_factory=ModelConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    lane: LaneConfig = field(default_factory=LaneConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).check(f.name)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Build from nested dicts over the defaults; unknown sections or keys raise ConfigError."""
        return build(cls, data, "", _DEFAULT, RENAMED)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The dict as stored in JSON files (tuples become lists), optionally only `sections`."""
        data = json.loads(json.dumps(self.to_dict()))
        return data if sections is None else {k: data[k] for k in sections}

    def with_overrides(self, items: list[str] | tuple[str, ...]) -> "Config":
        """Apply `section.field=value` (or `section.lora.field=value`) strings; values parse by
        the field's type."""
        data = self.to_dict()
        for item in items:
            key, sep, raw = item.partition("=")
            key = key.strip()
            parts = key.split(".")
            if not sep or len(parts) < 2 or not all(parts):
                raise ConfigError(f"--set {item!r}: expected section.field=value")
            if key in RENAMED:
                raise renamed_error(key, RENAMED[key])
            if parts[0] not in hints(Config):
                raise ConfigError(f"unknown config section {parts[0]!r}; sections: "
                                  f"{', '.join(hints(Config))}")
            tp: Any = Config
            node = data
            for depth, name in enumerate(parts):
                if not is_section(tp):
                    raise ConfigError(f"--set {item!r}: expected section.field=value")
                if name not in hints(tp):
                    raise ConfigError(f"--set {item!r}: unknown field {name!r} in section "
                                      f"{'.'.join(parts[:depth])!r}")
                tp = hints(tp)[name]
                if depth < len(parts) - 1:
                    node = node[name]
            if is_section(tp):
                raise ConfigError(f"--set {item!r}: {key} is a table; set one of its fields")
            node[parts[-1]] = parse_value(raw.strip(), tp, key)
        return Config.from_dict(data)


_DEFAULT = Config()  # what from_dict fills in, nested tables included (finetune.lora's own)
