"""Builds a worker's models once: the format, the LoRA trainer (unsloth or peft), the sampler (vLLM
or transformers) and the re-scorer, and records which backends were chosen. Runs no task."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from submission.model.backends import choose_sampler_backend, choose_trainer_backend, resolve_dtype
from submission.config import Config, TrainConfig
from submission.events import VLLM_LOST, Counts
from submission.arc.formats import TextFormat, get_format
from submission.answers.sampling import Adapter, Heartbeat, Sampler
from submission.answers.dfs import SearchStats
from submission.model.backends.hf_sampler import HFSampler
from submission.model.train import LoRATrainer


@dataclass
class Engine:
    cfg: Config
    fmt: TextFormat
    trainer: LoRATrainer
    sampler: Sampler
    forward: Sampler  # transformers forward pass over the trainer's model (reference scorer)
    info: dict[str, Any] = field(default_factory=dict)
    fallbacks: Counter = field(default_factory=Counts)
    speculative: SearchStats = field(default_factory=SearchStats)  # this run's speculative searches
    speculative_off: bool = False  # they stopped paying (answers.search.speculative_pays)
    _next_id: int = 0
    _rescore_checked: bool = False  # False: the next `auto` scorer call starts a new RankCheck
    _rank_check: Any = None

    def start_run(self, fallbacks: Counter) -> None:
        """A run begins on this engine: its fallbacks (re-scoring, a lost vLLM, speculative search
        stopped) count into `fallbacks`, the run's or worker's, and the speculative-search totals
        start over (a test suite runs many runs on one engine)."""
        self.fallbacks = fallbacks
        self.speculative, self.speculative_off = SearchStats(), False

    def compute_seconds(self) -> float:
        """Seconds spent in model compute so far (training steps, generate and scoring calls);
        the rest of the task loop is host work (data, views, parsing, selection, writing)."""
        samplers = {id(s): s for s in (self.sampler, self.forward)}.values()
        return self.trainer.compute_s + sum(getattr(s, "compute_s", 0.0) for s in samplers)

    def set_beat(self, beat: Callable[[], None]) -> None:
        """Where the samplers send a heartbeat after every finished request or scoring call
        (a sampler that is not a `Heartbeat` sends none)."""
        for s in (self.sampler, self.forward):
            if isinstance(s, Heartbeat):
                s.set_beat(beat)

    def new_adapter(self, name: str, path: str | Path) -> Adapter:
        """A fresh LoRARequest id per adapter: vLLM caches by id, so ids are never reused."""
        self._next_id += 1
        return Adapter(name=f"{name}-{self._next_id}", int_id=self._next_id, path=str(path))

    def scorer(self, choice: str) -> Sampler:
        """The re-scoring backend for the next test input (`selection.rescore_backend`):
        `forward` the forward pass over the trainer's model (prefix KV reused across candidates);
        `vllm` the vLLM engine; `auto` a `RankCheck` (both backends, forward's scores used) on
        the first test inputs, then whichever it chose (the check compares whole inputs'
        candidate orders).

        On a GPU the two backends do not run the same weights: vLLM 0.32.0 has no bitsandbytes
        loader, so it serves the adapter on the 16-bit base while training (and the forward pass)
        used the 4-bit one; the check therefore compares candidate orders, not log-probs."""
        from submission.answers.rescore import RankCheck

        forward = self.forward
        if isinstance(forward, HFSampler):
            forward.count_fallbacks(self._count)  # prefix-KV fallbacks land in this run's counts
            self.info["rescore_prefix_kv"] = forward.prefix_kv  # updated in place
        if self.sampler is forward or choice == "forward":
            self.info["rescore_backend"] = "forward"
            return forward
        if choice == "vllm":
            self.info["rescore_backend"] = "vllm"
            return self.sampler
        if not self._rescore_checked:  # auto, first use (or a check asked for again)
            self._rescore_checked = True
            sel = self.cfg.selection
            self._rank_check = RankCheck(self.sampler, forward, policy=sel.policy,
                                         poe_offset=sel.poe_offset, info=self.info, count=self._count)
        check = self._rank_check
        if check.choice is None:
            return check
        return self.sampler if check.choice == "vllm" else forward

    def sampler_lost(self, exc: BaseException) -> None:
        """vLLM failed and could not be rebuilt: the transformers sampler takes its place for the
        rest of this engine's life (counted; `info["vllm_lost"]` says why)."""
        self.info["vllm_lost"] = f"{type(exc).__name__}: {exc}"[:2000]
        self.info["sampler_backend"] = "transformers"
        self.sampler = self.forward
        self._count(VLLM_LOST)

    def _count(self, name: str) -> None:
        self.fallbacks[name] += 1


def load_trainer(model_path: str | Path, cfg: Config, section: TrainConfig | None = None
                 ) -> tuple[LoRATrainer, Any, dict[str, Any]]:
    """(trainer, tokenizer, info) with the LoRA of `section` (default cfg.ttt) on unsloth or peft.
    What the libraries raise on a bad model directory is an InputError naming config.json (when
    transformers cannot read the config) or the directory."""
    from submission.runtime.modelfiles import reading_model

    t = section or cfg.ttt
    backend = choose_trainer_backend(t.backend)
    scaler = None
    with reading_model(Path(model_path) / "config.json", "its config"):
        AutoConfig.from_pretrained(str(model_path), local_files_only=True)
    with reading_model(model_path):
        if backend == "unsloth":
            from submission.model.backends.unsloth_loader import load_unsloth

            model, tokenizer, info, scaler = load_unsloth(model_path, cfg, t)
        else:
            from submission.model.backends.peft_loader import load_peft

            model, tokenizer, info = load_peft(model_path, cfg, t)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return LoRATrainer(model, pad_id=pad_id, backend=backend, scaler=scaler), tokenizer, info


def build_engine(model_path: str | Path, cfg: Config,
                 engine_kwargs: dict[str, Any] | None = None) -> Engine:
    """Load the trainer and sampler for `model_path` under `cfg` (vLLM after the trainer, with
    `engine_kwargs` from the memory plan). If vLLM fails to start, the transformers sampler takes
    its place and `info["vllm_start_error"]` says why."""
    from submission.model.backends.torch_settings import torch_settings, vllm_torch_settings

    sampler_backend = choose_sampler_backend(cfg.sampling.backend)
    before = torch_settings() if sampler_backend == "vllm" else {}  # before unsloth is imported
    trainer, tokenizer, info = load_trainer(model_path, cfg)
    fmt = get_format(cfg.model.format, tokenizer, model_dir=model_path)  # "auto": detected
    check_format_ids(fmt, trainer.model.get_input_embeddings().num_embeddings, model_path)
    forward = HFSampler(trainer, stop_ids=fmt.stop_token_ids, pad_id=trainer.pad_id)
    sampler: Sampler = forward
    if sampler_backend == "vllm":
        try:
            with vllm_torch_settings(before, info):
                sampler = start_vllm(model_path, cfg, fmt, engine_kwargs)
        except Exception as exc:  # noqa: BLE001 - vLLM fails to start in many ways; all fall back
            # The run goes on with the transformers sampler (slower, same answers); counted by
            # the caller from info["vllm_start_error"] and shown in run.json.
            info["vllm_start_error"] = f"{type(exc).__name__}: {exc}"[:2000]
            sampler_backend = "transformers"
    info.update(sampler_backend=sampler_backend, format=fmt.name)
    return Engine(cfg=cfg, fmt=fmt, trainer=trainer, sampler=sampler, forward=forward, info=info)


def check_format_ids(fmt: TextFormat, rows: int, model_path: str | Path) -> None:
    """InputError naming config.json's vocab_size when a token id the format writes has no row
    in the model's embedding (a model and a tokenizer that do not belong together)."""
    from submission.errors import InputError

    ids = {**fmt.id_of, **({fmt.bos: fmt.bos_id} if fmt.bos_id is not None else {})}
    piece, top = max(ids.items(), key=lambda kv: kv[1])
    if top >= rows:
        raise InputError(f"vocab_size {rows} is below the tokenizer's ids: format {fmt.name} "
                         f"writes {piece!r} as id {top}", file=str(Path(model_path) / "config.json"),
                         field="vocab_size")


def start_vllm(model_path: str | Path, cfg: Config, fmt: TextFormat,
               engine_kwargs: dict[str, Any] | None = None) -> Sampler:
    """The vLLM sampler for the model (any exception vLLM raises propagates)."""
    from submission.model.backends.vllm_sampler import VLLMSampler

    dtype = str(resolve_dtype(cfg.model.dtype)).replace("torch.", "")
    return VLLMSampler(model_path, cfg, stop_ids=fmt.stop_token_ids, dtype=dtype,
                       engine_kwargs=engine_kwargs)
