"""Initial fine-tuning: teach a base model ARC in our text format before any test-time training.

Data: whole tasks (demos and test pairs) from bundled datasets (`arc-agi-2:training`), folders of
ARC JSON files and JSON-lines files, indexed and read back task by task (stream.py), each task
under `finetune.samples_per_task` random transforms (D8 x colours x demo order), loss on every
output. Training uses the TTT loop and loaders (unsloth on GPU, peft on CPU) with resumable
checkpoints; the end merges the LoRA (and any fully trained modules) into the base and writes a
model directory `run` accepts. Evaluation splits are refused unless allowed, and overlaps with the
evaluation sets (by task id and by identical grids) are reported.

Under `torchrun` or `accelerate launch` every rank runs this same code (distributed.py): the data
are sharded per step, rank 0 alone logs, writes the leakage report and the checkpoints, and merges.
A checkpoint holds full (unsharded) state, so it resumes at any world size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftConfig, PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from submission.config import Config
from submission.finetune.distributed import DEFAULT_TIMEOUT_S, DistEnv
from submission.errors import ConfigError, InputError
from submission.runtime.files import replace_dir_atomic, write_json_atomic
from submission.arc.grids import Task
from submission.finetune.data import TaskSource, open_sources
from submission.arc.tasks import DATASETS, load_dataset

STATE = "trainer_state.pt"
MIN_SHARED_CELLS = 10  # grids smaller than this match by chance too often to count as a leak


def load_sources(spec: str, *, allow_eval: bool = False) -> dict[str, Task]:
    """Every task of `spec` in memory (small data; `finetune` itself streams, see stream.py)."""
    return dict(open_sources(spec, allow_eval=allow_eval).items())


def _grid_hashes(task: Task) -> set[str]:
    grids = [g for p in task.train for g in p] + list(task.test_inputs) + list(task.test_outputs or ())
    return {hashlib.sha1(np.ascontiguousarray(g).tobytes() + bytes(g.shape)).hexdigest()
            for g in grids if g.size >= MIN_SHARED_CELLS}


def leakage_report(tasks: Mapping[str, Task] | TaskSource) -> dict[str, Any]:
    """Training tasks that are evaluation tasks of either dataset, by id or by shared grids
    (one pass over the tasks, read one at a time)."""
    owners = {}
    for dataset in DATASETS:
        evaluation = load_dataset(dataset, "evaluation")
        owners[dataset] = (set(evaluation),
                           {h: tid for tid, t in evaluation.items() for h in _grid_hashes(t)})
    report: dict[str, Any] = {f"{d}:evaluation": {"by_id": [], "by_grids": {}} for d in DATASETS}
    items: Iterable[tuple[str, Task]] = tasks.items()
    for tid, t in items:
        hashes = _grid_hashes(t)
        for dataset, (eval_ids, owner) in owners.items():
            r = report[f"{dataset}:evaluation"]
            if tid in eval_ids:
                r["by_id"].append(tid)
            shared = {owner[h] for h in hashes if h in owner}
            if shared:
                r["by_grids"][tid] = sorted(shared)
    for r in report.values():
        r["by_id"].sort()
    return report


def latest_checkpoint(out: Path) -> Path | None:
    done = sorted((p for p in (out / "checkpoints").glob("step-*") if (p / STATE).exists()),
                  key=lambda p: int(p.name.split("-")[1]))
    return done[-1] if done else None


def finetune(model: str | Path, data: str, out: str | Path, cfg: Config, *,
             allow_eval: bool = False, drop_overlaps: bool = False, pack: bool = False,
             fsdp: bool = False, dist_timeout_s: float = DEFAULT_TIMEOUT_S,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune `model` on `data`, resumable from `out/checkpoints`; writes `out/model`.
    `pack`: a step's samples are packed into rows of `model.max_seq_len` tokens (same update,
    fewer and fuller forward passes). `fsdp`: shard the model over the ranks instead of
    replicating it (DDP). Every rank of a distributed launch calls this; rank 0 gets the report
    with the merged model, the others a report without it."""
    from submission.finetune.distributed import init_distributed, shutdown

    env, started = init_distributed(dist_timeout_s)
    try:
        report, adapter = _train_all_ranks(model, data, Path(out), cfg, env, allow_eval=allow_eval,
                                           drop_overlaps=drop_overlaps, pack=pack, fsdp=fsdp,
                                           log=log if env.is_main else (lambda m: None))
    finally:
        if started:
            shutdown()
    if not env.is_main:
        return dict(report, model=None)
    merged = merge_adapter(model, adapter, Path(out) / "model", cfg)  # once, on rank 0
    report["model"] = str(merged)
    write_json_atomic(Path(out) / "finetune.json", dict(report, config=cfg.to_dict()))
    return report


def _check_parallel(cfg: Config, env: DistEnv, fsdp: bool, log: Callable[[str], None]) -> Any:
    """The finetune section to load with, after the checks a multi-process run needs."""
    from submission.model.backends import has_cuda
    from submission.finetune.distributed import local_grad_accum

    f = cfg.finetune
    local_grad_accum(f.grad_accum, env.world)
    if env.world == 1:
        if fsdp:
            log("note: --fsdp has no effect in a single process")
        return f
    if f.backend == "unsloth":
        raise ConfigError("finetune.backend=unsloth runs on one GPU only; use finetune.backend=peft "
                          "(or auto) under torchrun / accelerate launch")
    if f.load_in_4bit and has_cuda():
        raise ConfigError("finetune.load_in_4bit loads the model onto GPU 0 in every process; "
                          "train 16-bit (finetune.load_in_4bit=false) under torchrun")
    return dataclasses.replace(f, backend="peft")


def _train_all_ranks(model, data, out: Path, cfg: Config, env: DistEnv, *, allow_eval, drop_overlaps,
                     pack, fsdp, log) -> tuple[dict[str, Any], Path]:
    from tqdm.auto import tqdm

    from submission.finetune.distributed import DataParallel, all_sum, barrier, broadcast
    from submission.model.engine import load_trainer
    from submission.runtime.modelfiles import check_model_dir
    from submission.arc.formats import get_format
    from submission.finetune.data import StreamSamples
    from submission.model.train import planned_steps

    f = cfg.finetune
    section = _check_parallel(cfg, env, fsdp, log)
    if not env.is_main:  # one copy of the libraries' progress bars and warnings: rank 0's
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    check_model_dir(model)
    out.mkdir(parents=True, exist_ok=True)
    source = open_sources(data, allow_eval=allow_eval)
    bad: set[str] = set()
    if env.is_main:
        leaks = leakage_report(source)
        for name, r in leaks.items():
            if r["by_id"] or r["by_grids"]:
                log(f"warning: {len(r['by_id'])} training task(s) are {name} tasks by id and "
                    f"{len(r['by_grids'])} share grids with them (see {out / 'leakage.json'})")
        write_json_atomic(out / "leakage.json", leaks)
        bad = {t for r in leaks.values() for t in list(r["by_id"]) + list(r["by_grids"])}
    if drop_overlaps:
        bad = broadcast(bad, env)
        source.close()
        source = source.without(bad)
        log(f"dropped {len(bad)} overlapping task(s); {len(source)} left")
        if not len(source):
            raise InputError(f"--data {data}: no task left after dropping the overlaps")
    trainer, tokenizer, info = load_trainer(model, cfg, section)
    fmt = get_format(cfg.model.format, tokenizer, model_dir=model)  # "auto": detected
    samples = StreamSamples(source, fmt, seed=f.seed, per_task=f.samples_per_task,
                            max_len=cfg.model.max_seq_len, keep_background=f.keep_background)
    # what fixes the sample order and the steps; the world size, packing and FSDP do not
    fp = hashlib.sha256(repr((source.fingerprint(), fmt.name, f.seed, f.samples_per_task,
                              cfg.model.max_seq_len, f.keep_background, f.batch_size * f.grad_accum,
                              f.epochs, f.max_steps)).encode()).hexdigest()

    resume, ckpt, weights = None, None, None
    if env.is_main:
        for stale in (out / "checkpoints").glob(".step-*.tmp*"):  # a write cut short by a kill
            shutil.rmtree(stale, ignore_errors=True)
    if env.is_main and (ckpt := latest_checkpoint(out)) is not None:
        resume = torch.load(ckpt / STATE, weights_only=False)
        weights = load_file(str(ckpt / "adapter_model.safetensors"))
    ckpt, resume, weights = broadcast((ckpt, resume, weights), env)
    if resume is not None:
        if resume.get("fingerprint") != fp:
            raise InputError(f"{ckpt} was made with other data or settings; use a new --out")
        set_peft_model_state_dict(trainer.model, weights)
        log(f"resuming from {ckpt} (step {resume['step']}, written by {resume.get('world', 1)} "
            f"process(es); now {env.world})")
    if env.world > 1:
        trainer.parallel = DataParallel(trainer.model, env, fsdp=fsdp)
    trainer.pack_tokens = cfg.model.max_seq_len if pack else 0

    def save_checkpoint(step: int, state: dict[str, Any]) -> None:
        full = trainer.parallel.adapter_state() if trainer.parallel is not None else None
        if env.is_main:
            def fill(tmp: Path) -> None:
                trainer.model.save_pretrained(str(tmp), state_dict=full)
                torch.save(dict(state, step=step, fingerprint=fp, world=env.world), tmp / STATE)

            final = replace_dir_atomic(out / "checkpoints" / f"step-{step:07d}", fill)
            kept = sorted(final.parent.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
            for old in kept[:-f.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        barrier(env)  # nobody runs ahead of a checkpoint that is still being written

    total = planned_steps(len(samples), f)
    steps, final_loss = (int(resume["step"]), resume.get("loss")) if resume else (0, None)
    tokens = seconds = 0.0
    if not (resume and resume.get("final")):
        bar = tqdm(total=total, initial=steps, desc="finetune", unit="step") if env.is_main else None
        try:
            result = trainer.train(samples, np.random.default_rng([f.seed, 2]), f, progress=bar,
                                   resume=resume, checkpoint=save_checkpoint,
                                   checkpoint_every=f.checkpoint_every)
        finally:
            if bar is not None:
                bar.close()
        tokens, too_long, shortened = all_sum([result.tokens, samples.too_long, samples.shortened], env)
        if not tokens:
            raise InputError(f"--data {data}: no sample fits model.max_seq_len={cfg.model.max_seq_len}")
        done = result.steps - steps
        steps, final_loss, seconds = result.steps, result.final_loss, result.seconds
        save_checkpoint(steps, {"final": True, "loss": final_loss, "too_long": too_long,
                                "shortened": shortened})  # the adapter to merge
    else:
        done, too_long, shortened = 0, resume.get("too_long", 0), resume.get("shortened", 0)
    per_step = f.batch_size * f.grad_accum
    report = {"tasks": len(source), "samples": len(samples), "too_long": int(too_long),
              "shortened": int(shortened), "steps": steps, "planned_steps": total,
              "final_loss": final_loss, "world_size": env.world, "fsdp": bool(fsdp and env.world > 1),
              "pack": pack, "global_batch": per_step, "train_seconds": seconds,
              "samples_per_s": done * per_step / seconds if seconds else None,
              "tokens_per_s": tokens / seconds if seconds else None,
              "backend": info, "resumed_from": str(ckpt) if ckpt else None}
    source.close()
    return report, out / "checkpoints" / f"step-{steps:07d}"


def merge_adapter(base: str | Path, adapter: str | Path, out: str | Path, cfg: Config) -> Path:
    """Merge a saved adapter into a full-precision copy of `base` and save it with the tokenizer.
    Loading the base unquantized keeps the merge exact even when training ran on a 4-bit base.
    An adapter with fully trained modules on a tied base gives an untied model (config and
    weights), which vLLM 0.32.0 then loads as such (model_executor/models/qwen3.py:313)."""
    from submission.model.backends import resolve_dtype
    from submission.model.backends.peft_loader import untie_embeddings
    from submission.model.tokenizer import copy_tokenizer_files

    dtype = resolve_dtype(cfg.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype, local_files_only=True)
    if PeftConfig.from_pretrained(str(adapter)).modules_to_save:
        untie_embeddings(model)  # as trained (peft_loader.load_peft): lm_head and embeddings apart
    with torch.no_grad():
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()

    def fill(tmp: Path) -> None:
        merged.save_pretrained(str(tmp))
        copy_tokenizer_files(base, tmp)  # verbatim: the merged model keeps the base's tokenizer
        for extra in ("generation_config.json", "arc_format.json"):
            if (Path(base) / extra).exists() and not (tmp / extra).exists():
                shutil.copy(Path(base) / extra, tmp / extra)

    return replace_dir_atomic(out, fill)
