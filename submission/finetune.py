"""Initial fine-tuning: teach a base model ARC in our text format before any test-time training.

Data: whole tasks (demos and test pairs) from bundled datasets (`arc-agi-2:training`) or folders of
ARC JSON files, each task under `finetune.samples_per_task` random transforms (D8 x colours x demo
order), loss on every output. Training uses the TTT loop and loaders (unsloth on GPU, peft on CPU)
with resumable checkpoints; the end merges the LoRA (and any fully trained modules) into the base
and writes a model directory `run` accepts. Evaluation splits are refused unless allowed, and
overlaps with the evaluation sets (by task id and by identical grids) are reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .augment import sample_transforms
from .config import Config
from .errors import InputError
from .formats import TextFormat
from .grids import Pair, Task
from .files import write_json_atomic
from .tasks import DATASETS, SPLITS, load_dataset, parse_task
from .ttt_data import TrainSample

STATE = "trainer_state.pt"
MIN_SHARED_CELLS = 10  # grids smaller than this match by chance too often to count as a leak


def load_sources(spec: str, *, allow_eval: bool = False) -> dict[str, Task]:
    """Tasks from `dataset:split` items and folders of task JSON files, comma-separated."""
    tasks: dict[str, Task] = {}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        if ":" in item and item.split(":", 1)[0] in DATASETS:
            dataset, split = item.split(":", 1)
            if split not in SPLITS:
                raise InputError(f"--data {item}: split must be one of {', '.join(SPLITS)}")
            if split == "evaluation" and not allow_eval:
                raise InputError(f"--data {item}: refusing to train on an evaluation split "
                                 "(pass --allow-eval if this is really intended)")
            tasks.update(load_dataset(dataset, split))
        elif Path(item).is_dir():
            tasks.update(load_task_dir(Path(item)))
        else:
            raise InputError(f"--data {item}: not a dataset:split ({', '.join(DATASETS)}) "
                             "nor a directory of task files")
    if not tasks:
        raise InputError(f"--data {spec}: no tasks found")
    return tasks


def load_task_dir(folder: Path) -> dict[str, Task]:
    """Every `*.json` file below `folder` is one task in the public ARC format (test outputs given)."""
    out = {}
    for path in sorted(folder.rglob("*.json")):
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"invalid JSON: {exc}", file=str(path)) from exc
        task = parse_task(path.stem, obj, file=path)
        if task.test_outputs is None:
            raise InputError("training tasks need test outputs", file=str(path), task=path.stem,
                             field="test[0].output")
        out[path.stem] = task
    return out


def _grid_hashes(task: Task) -> set[str]:
    grids = [g for p in task.train for g in p] + list(task.test_inputs) + list(task.test_outputs or ())
    return {hashlib.sha1(np.ascontiguousarray(g).tobytes() + bytes(g.shape)).hexdigest()
            for g in grids if g.size >= MIN_SHARED_CELLS}


def leakage_report(tasks: dict[str, Task]) -> dict[str, Any]:
    """Training tasks that are evaluation tasks of either dataset, by id or by shared grids."""
    report: dict[str, Any] = {}
    for dataset in DATASETS:
        evaluation = load_dataset(dataset, "evaluation")
        owner = {h: tid for tid, t in evaluation.items() for h in _grid_hashes(t)}
        by_id = sorted(set(tasks) & set(evaluation))
        by_grid = {}
        for tid, t in tasks.items():
            shared = {owner[h] for h in _grid_hashes(t) if h in owner}
            if shared:
                by_grid[tid] = sorted(shared)
        report[f"{dataset}:evaluation"] = {"by_id": by_id, "by_grids": by_grid}
    return report


def build_samples(tasks: dict[str, Task], fmt: TextFormat, rng: np.random.Generator, *,
                  per_task: int, max_len: int, keep_background: bool) -> tuple[list[TrainSample], int]:
    """(samples, count too long to fit even with demos dropped)."""
    samples, too_long = [], 0
    for task in tasks.values():
        pairs = list(task.train) + [Pair(i, o) for i, o in zip(task.test_inputs, task.test_outputs)]
        for t in sample_transforms(rng, per_task, len(pairs), keep_background=keep_background):
            order = t.order if t.order is not None else tuple(range(len(pairs)))
            seq = [t.apply_pair(pairs[j]) for j in order]
            while True:
                ids, mask = fmt.encode_training(seq)
                if len(ids) <= max_len or len(seq) == 1:
                    break
                seq = seq[1:]
            if len(ids) > max_len:
                too_long += 1
                continue
            samples.append(TrainSample(ids, mask, t, len(seq) - 1, len(pairs) - len(seq)))
    return samples, too_long


def fingerprint(samples: list[TrainSample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(np.asarray(s.ids, dtype=np.int32).tobytes())
    return h.hexdigest()


def latest_checkpoint(out: Path) -> Path | None:
    done = sorted((p for p in (out / "checkpoints").glob("step-*") if (p / STATE).exists()),
                  key=lambda p: int(p.name.split("-")[1]))
    return done[-1] if done else None


def finetune(model: str | Path, data: str, out: str | Path, cfg: Config, *,
             allow_eval: bool = False, drop_overlaps: bool = False,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune `model` on `data`, resumable from `out/checkpoints`; writes `out/model`."""
    import torch
    from tqdm.auto import tqdm

    from .engine import check_model_dir, load_trainer
    from .formats import get_format
    from .train import planned_steps

    out, f = Path(out), cfg.finetune
    check_model_dir(model)
    out.mkdir(parents=True, exist_ok=True)
    tasks = load_sources(data, allow_eval=allow_eval)
    leaks = leakage_report(tasks)
    for name, r in leaks.items():
        if r["by_id"] or r["by_grids"]:
            log(f"warning: {len(r['by_id'])} training task(s) are {name} tasks by id and "
                f"{len(r['by_grids'])} share grids with them (see {out / 'leakage.json'})")
    if drop_overlaps:
        bad = {t for r in leaks.values() for t in list(r["by_id"]) + list(r["by_grids"])}
        tasks = {k: v for k, v in tasks.items() if k not in bad}
        log(f"dropped {len(bad)} overlapping task(s); {len(tasks)} left")
    write_json_atomic(out / "leakage.json", leaks)
    trainer, tokenizer, info = load_trainer(model, cfg, f)
    fmt = get_format(cfg.model.format, tokenizer, model_dir=model)  # "auto": detected
    samples, too_long = build_samples(tasks, fmt, np.random.default_rng([f.seed, 1]),
                                      per_task=f.samples_per_task, max_len=cfg.model.max_seq_len,
                                      keep_background=f.keep_background)
    if not samples:
        raise InputError(f"--data {data}: no sample fits model.max_seq_len={cfg.model.max_seq_len}")
    fp = fingerprint(samples)
    resume, ckpt = None, latest_checkpoint(out)
    if ckpt is not None:
        resume = torch.load(ckpt / STATE, weights_only=False)
        if resume.get("fingerprint") != fp:
            raise InputError(f"{ckpt} was made with other data or settings; use a new --out")
        trainer.load_adapter_weights(ckpt)
        log(f"resuming from {ckpt} (step {resume['step']})")

    def save_checkpoint(step: int, state: dict[str, Any]) -> None:
        final = out / "checkpoints" / f"step-{step:07d}"
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.model.save_pretrained(str(tmp))
        torch.save(dict(state, step=step, fingerprint=fp), tmp / STATE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        kept = sorted((p for p in final.parent.glob("step-*")), key=lambda p: int(p.name.split("-")[1]))
        for old in kept[:-f.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    total = planned_steps(len(samples), f)
    steps, final_loss = (int(resume["step"]), resume.get("loss")) if resume else (0, None)
    if not (resume and resume.get("final")):
        with tqdm(total=total, initial=steps, desc="finetune", unit="step") as bar:
            result = trainer.train(samples, np.random.default_rng([f.seed, 2]), f, progress=bar,
                                   resume=resume, checkpoint=save_checkpoint,
                                   checkpoint_every=f.checkpoint_every)
        steps, final_loss = result.steps, result.final_loss
        save_checkpoint(steps, {"final": True, "loss": final_loss})  # the adapter to merge
    final = latest_checkpoint(out)
    merged = merge_adapter(model, final, out / "model", cfg)
    report = {"tasks": len(tasks), "samples": len(samples), "too_long": too_long,
              "steps": steps, "planned_steps": total, "final_loss": final_loss,
              "backend": info, "model": str(merged), "resumed_from": str(ckpt) if ckpt else None}
    write_json_atomic(out / "finetune.json", dict(report, config=cfg.to_dict()))
    return report


def merge_adapter(base: str | Path, adapter: str | Path, out: str | Path, cfg: Config) -> Path:
    """Merge a saved adapter into a full-precision copy of `base` and save it with the tokenizer.
    Loading the base unquantized keeps the merge exact even when training ran on a 4-bit base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .backends import resolve_dtype
    from .tokenizer import copy_tokenizer_files

    dtype = resolve_dtype(cfg.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype, local_files_only=True)
    with torch.no_grad():
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp))
    copy_tokenizer_files(base, tmp)  # verbatim: the merged model keeps the base's tokenizer
    for extra in ("generation_config.json", "arc_format.json"):
        if (Path(base) / extra).exists() and not (tmp / extra).exists():
            shutil.copy(Path(base) / extra, tmp / extra)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
