"""One frozen, nested configuration passed down every stage.

Every field has a default and a comment saying why. `Config.from_dict` rejects unknown keys,
`with_overrides` takes `section.field=value` strings (CLI `--set`), and `to_dict` is what gets saved
beside every output. This module only describes settings; it runs nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import reprlib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from submission.environment import TIME_BUDGET_S
from submission.errors import ConfigError

ANSWER_SECTIONS = ("model", "ttt", "sampling", "selection")  # what a task's answers depend on
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelConfig:
    format: str = "auto"  # auto: detected from the model's tokenizer (qwen-chat: NVARC, architects: ARChitects)
    dtype: str = "auto"  # auto: bf16 on GPUs with compute capability >= 8, fp16 on T4, fp32 on CPU
    max_seq_len: int = 8192  # ARC-AGI-2 prompt+answer: p90 ~4.7k, max ~9.4k tokens; longer demos get dropped


@dataclass(frozen=True)
class TTTConfig:
    enabled: bool = True  # False samples the base model only (ablation / no-TTT baseline)
    backend: str = "auto"  # auto: unsloth when a GPU and unsloth are present, else transformers+peft
    load_in_4bit: bool = True  # unsloth 4-bit base (ARChitects): frees memory for the sampler on the same L4
    r: int = 64  # LoRA rank; MIT used 128, NVARC 256 (rsLoRA); 64 keeps vLLM's max_lora_rank cheap
    lora_alpha: int = 32  # with rsLoRA the scale is alpha/sqrt(r), as NVARC (a=32)
    use_rslora: bool = True  # rank-stabilised scaling keeps the effective lr stable across ranks
    lora_dropout: float = 0.0  # dropout hurts on 100-sample runs and disables unsloth's fused kernels
    target_modules: tuple[str, ...] = LINEAR_MODULES  # linear layers only: vLLM rejects lm_head/embed LoRA
    learning_rate: float = 1e-4  # MIT TTT per-task lr
    weight_decay: float = 0.0  # too few steps for decay to matter
    warmup_fraction: float = 0.1  # short linear warmup, then linear decay to 0 (MIT, NVARC)
    epochs: int = 1  # NVARC: one pass over 128 augmented samples
    max_samples: int = 128  # NVARC: 8 dihedral x 16 colour perms; MIT capped at 250
    batch_size: int = 1  # one sequence per step: ARC lengths vary 10x, padding wastes GPU time
    grad_accum: int = 2  # effective batch 2 (MIT)
    max_steps: int = 0  # 0: epochs * samples / (batch * accum); a positive value caps the steps
    max_grad_norm: float = 1.0  # clip: tiny data, occasional huge-gradient samples
    skip_first_output: bool = False  # loss on every demo output (MIT); True skips the first (no context yet)
    keep_background: bool = True  # colour 0 stays 0 in colour permutations (background in most tasks)
    gradient_checkpointing: bool = True  # 8k-token sequences on an L4; ignored on CPU
    seed: int = 0  # adapter init and data sampling; every task draws from its own derived stream


@dataclass(frozen=True)
class FinetuneConfig(TTTConfig):
    """The initial fine-tune over many tasks (finetune command): same loop and loaders as TTT."""

    load_in_4bit: bool = False  # a base model is worth 16-bit training where memory allows
    r: int = 64  # ARChitects trained their base LoRA at r=64-256 over all tasks
    lora_alpha: int = 64
    use_rslora: bool = False
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.05
    grad_accum: int = 16  # effective batch 16: steadier over thousands of different tasks
    max_samples: int = 0  # unused here: samples come from samples_per_task
    samples_per_task: int = 8  # augmented copies of every task (D8 x colours x demo order)
    modules_to_save: tuple[str, ...] = ()  # trained in full, e.g. embed_tokens,lm_head (then merged)
    checkpoint_every: int = 200  # optimizer steps between resumable checkpoints
    keep_checkpoints: int = 2  # older checkpoints are deleted


@dataclass(frozen=True)
class SamplingConfig:
    backend: str = "auto"  # auto: vLLM if importable and it fits beside the trainer, else transformers
    n_views: int = 16  # ARChitects/NVARC: 16 views (8 dihedral x 2 colour perms), demo order shuffled
    dfs_threshold: float = 0.17  # ARChitects' DFS: every answer with p >= 0.17 (NVARC: 0.2); 0: greedy only
    dfs_max_paths: int = 8  # answers searched per view at most (the greedy one included)
    # views check the answers earlier views found in one prefill instead of decoding them again: the
    # same answers (tests/test_search.py), 8x fewer decoded tokens when 8 views agree
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


@dataclass(frozen=True)
class SelectionConfig:
    policy: str = "count-nll"  # NVARC 2025 winner: times found minus mean NLL under augmentations
    rescore_augmentations: int = 8  # augmented prompts each candidate is re-scored under
    max_rescore: int = 8  # most frequent candidates re-scored per test input
    poe_offset: float = 3.0  # ARChitects: sum over augmentations of (log p + 3)
    rescore_backend: str = "auto"  # auto: vLLM if it orders candidates as the forward pass does and is faster


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


@dataclass(frozen=True)
class LaneConfig:
    """The CPU program-search lane (submission/lane/) beside the GPU workers."""

    enabled: bool = True  # attempt 1 of a verified program: wrong on 0 of 98 ARC-AGI-1 training tasks
    policy: str = "lane-first"  # how its answers join the model's (see lane/ensemble.py)
    task_cap_s: float = 60.0  # CPU seconds per task; lowered where the budget cannot pay for it
    processes: int = 0  # 0: the machine's cores minus reserve_cores (at least 1)
    reserve_cores: int = 2  # cores left to the GPU workers and the supervisor (per worker: 1 more)
    mem_mib: int = 3072  # address-space limit of each lane process (RLIMIT_AS)
    nice: int = 19  # lane processes yield the cores to the workers whenever both want them


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    lane: LaneConfig = field(default_factory=LaneConfig)

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Build from nested dicts; unknown sections or keys raise ConfigError."""
        return _from_dict(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The dict as stored in JSON files (tuples become lists), optionally only `sections`."""
        data = json.loads(json.dumps(self.to_dict()))
        return data if sections is None else {k: data[k] for k in sections}

    def with_overrides(self, items: list[str] | tuple[str, ...]) -> "Config":
        """Apply `section.field=value` strings; values parse by the field's type."""
        data = self.to_dict()
        for item in items:
            key, sep, raw = item.partition("=")
            parts = key.strip().split(".")
            if not sep or len(parts) != 2:
                raise ConfigError(f"--set {item!r}: expected section.field=value")
            section, name = parts
            hints = _section_hints(section)
            if name not in hints:
                raise ConfigError(f"--set {item!r}: unknown field {name!r} in section {section!r}")
            data[section][name] = _parse_value(raw.strip(), hints[name], key)
        return Config.from_dict(data)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                preset: str | None = None) -> Config:
    """Config from a preset (None: defaults), a JSON or TOML file over it, then `--set` overrides."""
    data: dict[str, Any] = {}
    if preset is not None:
        from submission.presets import read_preset

        data = read_preset(preset)[0]
    if path is not None:
        for section, values in read_config_file(path).items():
            both = isinstance(values, dict) and isinstance(data.get(section), dict)
            data[section] = {**data[section], **values} if both else values
    return Config.from_dict(data).with_overrides(overrides)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw nested dict of a JSON or TOML config file (ConfigError if unreadable)."""
    from submission.runtime.paths import regular_input
    from submission.arc.tasks import _DuplicateKey, _no_duplicates

    p = Path(path)
    regular_input(p, "--config")
    try:
        text = p.read_text()
        # a repeated key is refused as in challenge files (TOML refuses it itself)
        data = (tomllib.loads(text) if p.suffix == ".toml"
                else json.loads(text, object_pairs_hook=_no_duplicates))
    except _DuplicateKey as exc:
        raise ConfigError(f"config file {p}: duplicate key {exc.args[0]!r}") from exc
    except (OSError, ValueError) as exc:  # ValueError: bad JSON/TOML, an integer over the digit limit
        raise ConfigError(f"config file {p}: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"config file {p}: nested too deeply") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be an object")
    return data


def explicit_keys(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                  preset: str | None = None) -> frozenset[str]:
    """The `section.field` keys a user set, in a preset, the config file or as overrides."""
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    if preset is not None:
        from submission.presets import read_preset

        keys |= {f"{sec}.{k}" for sec, fields in read_preset(preset)[0].items() for k in fields}
    if path is not None:
        keys |= {f"{sec}.{k}" for sec, fields in read_config_file(path).items()
                 if isinstance(fields, dict) for k in fields}
    return frozenset(keys)


def _section_hints(section: str) -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    if section not in hints:
        raise ConfigError(f"unknown config section {section!r}; sections: {', '.join(hints)}")
    return typing.get_type_hints(hints[section])


def _from_dict(cls: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config {where or 'top level'}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"config {where or 'top level'}: unknown keys {unknown}; known: {sorted(hints)}")
    kwargs = {}
    for name, value in data.items():
        tp, key = hints[name], f"{where}.{name}" if where else name
        kwargs[name] = (_from_dict(tp, value, key) if dataclasses.is_dataclass(tp)
                        else _coerce(value, tp, key))
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config {key}: expected a list of strings, got {_short(value)}")
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"config {key}: expected {tp.__name__}, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    """A bounded repr for error messages (values may be huge or deeply nested)."""
    try:
        return reprlib.repr(value)
    except (RecursionError, ValueError):
        return f"a {type(value).__name__}"


def _parse_value(raw: str, tp: Any, key: str) -> Any:
    try:
        if tp is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
        if typing.get_origin(tp) is tuple:
            return [s.strip() for s in raw.split(",") if s.strip()]
        return raw
    except ValueError as exc:
        raise ConfigError(f"--set {key}={reprlib.repr(raw)}: not a valid "
                          f"{getattr(tp, '__name__', tp)}") from exc


_CHOICES = {
    ("model", "format"): ("auto", "qwen-chat", "architects"),
    ("model", "dtype"): ("auto", "bfloat16", "float16", "float32"),
    ("ttt", "backend"): ("auto", "unsloth", "peft"),
    ("finetune", "backend"): ("auto", "unsloth", "peft"),
    ("sampling", "backend"): ("auto", "vllm", "transformers"),
    ("selection", "policy"): ("vote", "poe", "count-nll"),
    ("selection", "rescore_backend"): ("auto", "vllm", "forward"),
    ("lane", "policy"): ("lane-first", "neural-first"),
}
_POSITIVE = {("sampling", "n_views"), ("sampling", "max_loras"), ("sampling", "max_num_seqs"),
             ("model", "max_seq_len"), ("budget", "time_budget_s"), ("budget", "max_scale"),
             ("budget", "task_cap_s"), ("budget", "stall_s"), ("budget", "prior_train_tokens_per_s"),
             ("budget", "prior_sample_tokens_per_s"), ("budget", "prior_score_tokens_per_s"),
             ("budget", "prior_verify_tokens_per_s"),
             ("selection", "rescore_augmentations"),
             ("lane", "task_cap_s"), ("lane", "mem_mib")}
TRAIN_SECTIONS = ("ttt", "finetune")  # one training loop (train.py): the same rules for both
_TRAIN_POSITIVE = ("r", "lora_alpha", "learning_rate", "epochs", "batch_size", "grad_accum")
_POSITIVE |= {(s, n) for s in TRAIN_SECTIONS for n in _TRAIN_POSITIVE} | {("ttt", "max_samples")}

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
_RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("sampling", "n_views"): (1, MAX_VIEWS), ("sampling", "unsure_extra_views"): (0, MAX_VIEWS),
    ("sampling", "dfs_max_paths"): (1, MAX_DFS_PATHS),
    ("selection", "rescore_augmentations"): (1, RESCORE_AUGMENTATIONS_LIMIT),
    ("budget", "workers"): (0, MAX_WORKERS), ("budget", "stall_s"): (MIN_STALL_S, math.inf),
    ("budget", "task_cap_s"): (MIN_TASK_CAP_S, math.inf),
    **{(s, "max_steps"): (0, MAX_STEPS) for s in TRAIN_SECTIONS},
    **{(s, "epochs"): (1, MAX_EPOCHS) for s in TRAIN_SECTIONS},
}


SEED_MAX = 2**32 - 1  # vLLM seeds numpy's legacy generator, which takes 0 .. 2**32 - 1
MAX_LORA_RANK = 512  # the largest max_lora_rank vLLM accepts
_MODULE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")  # q_proj, model.layers.0.mlp.up_proj


def _check_values(cfg: Config) -> None:
    """Field-wise checks: finite floats, seeds in range, plausible LoRA target module names."""
    for sec in dataclasses.fields(cfg):
        sub = getattr(cfg, sec.name)
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"config {sec.name}.{f.name}={value}: must be finite")
    for section in ("ttt", "finetune", "sampling"):
        seed = getattr(cfg, section).seed
        if not 0 <= seed <= SEED_MAX:
            raise ConfigError(f"config {section}.seed={_short(seed)}: must be in 0..{SEED_MAX}")
    if cfg.ttt.r > MAX_LORA_RANK:
        raise ConfigError(f"config ttt.r={_short(cfg.ttt.r)}: vLLM serves LoRA ranks up to "
                          f"{MAX_LORA_RANK} (max_lora_rank)")
    for section in ("ttt", "finetune"):
        modules = getattr(cfg, section).target_modules
        if not modules:
            raise ConfigError(f"config {section}.target_modules: empty; name the linear layers "
                              f"to adapt, e.g. {','.join(LINEAR_MODULES)}")
        bad = [m for m in modules if not _MODULE_NAME.fullmatch(m)]
        if bad:
            raise ConfigError(f"config {section}.target_modules: {_short(bad)} are not module "
                              "names (letters, digits, '_', dot-separated)")
        twice = sorted({m for m in modules if modules.count(m) > 1})
        if twice:
            raise ConfigError(f"config {section}.target_modules: {_short(twice)} listed twice")


def _check(cfg: Config) -> None:
    _check_values(cfg)
    for (section, name), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"config {section}.{name}={_short(value)}: choose one of "
                              f"{', '.join(choices)}")
    for section, name in sorted(_POSITIVE):
        if not getattr(getattr(cfg, section), name) > 0:  # also rejects NaN
            raise ConfigError(f"config {section}.{name} must be positive")
    for (section, name), (lo, hi) in _RANGES.items():
        value = getattr(getattr(cfg, section), name)
        if not lo <= value <= hi:
            span = f">= {lo:g}" if math.isinf(hi) else f"in {lo:g}..{hi:g}"
            raise ConfigError(f"config {section}.{name}={_short(value)}: must be {span}")
    if not 0.0 <= cfg.sampling.gpu_memory_utilization <= 1.0:
        raise ConfigError("config sampling.gpu_memory_utilization must be in [0, 1] (0: auto)")
    if not (cfg.sampling.max_num_batched_tokens == 0
            or cfg.sampling.max_num_batched_tokens >= cfg.sampling.max_num_seqs):
        raise ConfigError("config sampling.max_num_batched_tokens must be 0 (auto) or >= "
                          "sampling.max_num_seqs (vLLM rejects fewer)")
    if cfg.lane.processes < 0 or cfg.lane.reserve_cores < 0 or not 0 <= cfg.lane.nice <= 19:
        raise ConfigError("config lane.processes and lane.reserve_cores must be >= 0, "
                          "lane.nice in 0..19")
    if cfg.sampling.unsure_extra_views < 0 or not 0.0 <= cfg.sampling.unsure_agreement <= 1.0:
        raise ConfigError("config sampling.unsure_extra_views must be >= 0, unsure_agreement in [0, 1]")
    if not 0.0 <= cfg.sampling.dfs_threshold < 1.0:
        raise ConfigError("config sampling.dfs_threshold must be in [0, 1)")
    if cfg.sampling.n_samples < 0:
        raise ConfigError("config sampling.n_samples must be >= 0")
    for section in TRAIN_SECTIONS:
        t = getattr(cfg, section)
        if not (0.0 <= t.lora_dropout < 1.0 and t.weight_decay >= 0.0
                and 0.0 <= t.warmup_fraction <= 1.0 and t.max_grad_norm > 0.0):
            raise ConfigError(f"config {section}: lora_dropout must be in [0, 1), weight_decay "
                              ">= 0, warmup_fraction in [0, 1], max_grad_norm > 0")
    if cfg.sampling.temperature < 0.0:
        raise ConfigError("config sampling.temperature must be >= 0")
    for section in ("ttt", "finetune"):
        bad = [m for m in getattr(cfg, section).target_modules if m in ("lm_head", "embed_tokens")]
        if bad:
            raise ConfigError(f"config {section}.target_modules: {bad} cannot be served by vLLM as "
                              "LoRA; use linear layers (finetune.modules_to_save trains them fully)")
    bad = [m for m in cfg.finetune.modules_to_save if m not in ("lm_head", "embed_tokens")]
    if bad:
        raise ConfigError(f"config finetune.modules_to_save: {bad}; only embed_tokens and lm_head")
    if cfg.finetune.samples_per_task < 1 or cfg.finetune.checkpoint_every < 1:
        raise ConfigError("config finetune.samples_per_task and checkpoint_every must be >= 1")
