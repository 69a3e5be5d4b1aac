"""The method on one task, in this process, as one readable story to fork (a new selection rule, a
new view scheme): load the model (`load`), train the task's LoRA on its demonstrations (`train`),
build the augmented views of every test input (`views_of`), search their answers (`search_views`:
speculative DFS while it pays, as the pipeline does), parse each answer and invert it to the
original frame, add random views where the answers disagree (`sample`), pool identical grids,
re-score the top candidates under augmented prompts and pick two attempts per test input
(`choose`). Every rule is imported from the module that owns it (`arc/`, `answers/`, the trainer,
the transformers sampler, and the pipeline's per-task random streams, answer budget and speculative
frames in `worker/`), so on the same config it gives the pipeline's attempts
(tests/answers/test_reference.py checks it). It does not plan a time budget (every amount is the
config's, as the planner gives with spare time up to `budget.max_scale` 1), fall back (a failure
raises; no base-model answers, no vote when re-scoring is late), use vLLM (it samples and re-scores
with the transformers forward pass whatever `sampling.backend` says), batch tasks, run workers,
write records or submission.json, or watch for hangs. The stages and why: docs/method.md
(../docs/method.md#how-it-works).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from submission.answers.dfs import SearchStats
from submission.answers.rescore import rescore
from submission.answers.sampling import (Adapter, GenRequest, Generation, View, answer_budget,
                                         build_views, collect_samples)
from submission.answers.search import search, speculative_pays
from submission.answers.select import Sample, pool, select_two
from submission.answers.speculative import Frame
from submission.arc.formats import TextFormat, get_format
from submission.arc.grids import Grid, Task
from submission.arc.submit import build_submission
from submission.config import Config
from submission.errors import InputError
from submission.model.backends import resolve_dtype
from submission.model.backends.hf_sampler import HFSampler
from submission.model.engine import check_format_ids, load_trainer
from submission.model.train import LoRATrainer
from submission.model.ttt_data import build_ttt_data
from submission.worker.sampling_stage import agreement, max_tokens, view_frames
from submission.worker.sink import task_rng

# The per-task random streams, by the stage names the pipeline derives them from (task_rng's
# `stage`: ttt_stage.train_task, sampling_stage.sample_chunk / resample_unsure, pipeline.choose).
TTT_STREAM, VIEWS_STREAM, EXTRA_STREAM, RESCORE_STREAM = "ttt", "views", "extra{}", "rescore{}"

Attempts = dict[str, list[list[int]]]  # one test input's entry: arc.submit.ATTEMPT_KEYS -> grid


@dataclass(frozen=True)
class Model:
    """What a task runs on: the text format, the LoRA trainer and the transformers sampler over the
    trainer's model (generation, draft verification and re-scoring)."""

    fmt: TextFormat
    trainer: LoRATrainer
    sampler: HFSampler


def solve(task: Task, model_dir: str | Path, cfg: Config, workdir: str | Path) -> list[Attempts]:
    """Per test input of `task`, its two attempts in the submission's shape (`ATTEMPT_KEYS`, a
    placeholder where fewer than two distinct answers parsed). The adapter is saved under
    `workdir`."""
    model = load(model_dir, cfg)
    adapter = train(model, task, cfg, Path(workdir)) if cfg.ttt.enabled else None
    samples = sample(model, task, cfg, adapter)
    chosen = [choose(model, task, i, samples[i], adapter, cfg) for i in range(task.n_test)]
    return build_submission({task.id: task.n_test}, {task.id: chosen})[task.id]


def load(model_dir: str | Path, cfg: Config) -> Model:
    """The trainer `ttt.backend` picks (transformers + peft on CPU), the format the model's files
    name (checked against its embedding) and the transformers sampler over the trainer's model."""
    trainer, tokenizer, _ = load_trainer(model_dir, cfg)
    fmt = get_format(cfg.model.format, tokenizer, model_dir=model_dir)
    check_format_ids(fmt, trainer.model.get_input_embeddings().num_embeddings, model_dir)
    return Model(fmt, trainer, HFSampler(trainer, stop_ids=fmt.stop_token_ids, pad_id=trainer.pad_id))


def train(model: Model, task: Task, cfg: Config, workdir: Path) -> Adapter:
    """TTT: leave-one-out samples of the demos under random augmentations, the LoRA reset and
    trained on them for the planned steps, saved in the model's dtype; returns its handle."""
    t = cfg.ttt
    rng = task_rng(t.seed, task.id, TTT_STREAM)
    data = build_ttt_data(task, model.fmt, rng, max_samples=t.max_samples,
                          max_len=cfg.model.max_seq_len, keep_background=t.keep_background,
                          skip_first_output=t.skip_first_output)
    if not data.samples:
        raise InputError("no TTT sample fits model.max_seq_len", task=task.id)
    model.trainer.reset()
    try:
        model.trainer.train(data.samples, rng, t)
    finally:
        model.sampler.forget_loaded()  # the live adapter weights changed
    path = model.trainer.save(workdir / "adapter", dtype=resolve_dtype(cfg.model.dtype))
    return Adapter(name=task.id, int_id=1, path=str(path))


def views_of(model: Model, task: Task, test_index: int, cfg: Config, rng: np.random.Generator, *,
             extra: bool = False) -> list[View]:
    """The views of one test input: the standard ones (dihedral x colour permutation x demo order),
    or with `extra` the random further ones, numbered after them. Demos are dropped from the front
    where a prompt and its answer would not fit; a prompt that still leaves no room for an answer
    is an error here (the pipeline drops that view)."""
    s, max_len = cfg.sampling, cfg.model.max_seq_len
    views, _ = build_views(task, test_index, model.fmt, rng,
                           n_views=s.unsure_extra_views if extra else s.n_views, max_len=max_len,
                           answer_tokens=answer_budget(task, test_index, model.fmt),
                           keep_background=s.keep_background, shuffle_order=s.shuffle_order,
                           extra=extra, first_index=s.n_views if extra else 0)
    for v in views:
        if len(v.prompt) >= max_len:  # the rule of sampling_stage.fitting_views (a Sink's method)
            raise InputError(f"view {v.index} of test input {test_index}: its prompt of "
                             f"{len(v.prompt)} tokens leaves no answer room in model.max_seq_len",
                             task=task.id)
    return views


def search_views(model: Model, cfg: Config, views: Sequence[View], requests: Sequence[GenRequest],
                 spent: SearchStats) -> list[list[Generation]]:
    """The answer search over all `requests` (one per entry of `views`): per greedy request every
    answer with p >= `sampling.dfs_threshold`; speculative (views check the answers of earlier
    views of their test input by prefill) while `spent`, the speculative searches so far, pays."""
    speculative = cfg.sampling.speculative and speculative_pays(spent)
    frames: list[Frame | None] | None = [*view_frames(list(views), model.fmt)] if speculative else None
    own = SearchStats()
    gens = search(model.sampler, list(requests), threshold=cfg.sampling.dfs_threshold,
                  max_paths=cfg.sampling.dfs_max_paths, stop_ids=model.fmt.stop_token_ids,
                  frames=frames, stats=own)
    if speculative:
        spent.add(own)
    return gens


def sample(model: Model, task: Task, cfg: Config, adapter: Adapter | None) -> list[list[Sample]]:
    """Per test input, its answers parsed and inverted into the original frame: every view of
    every test input in one search (greedy DFS, plus `sampling.n_samples` at `temperature`), then
    `sampling.unsure_extra_views` random views for inputs whose answers disagree."""
    s, fmt, max_len = cfg.sampling, model.fmt, cfg.model.max_seq_len
    rng = task_rng(s.seed, task.id, VIEWS_STREAM)  # one stream through the test inputs, in order
    views: list[View] = []
    requests: list[GenRequest] = []
    for i in range(task.n_test):
        for v in views_of(model, task, i, cfg, rng):
            budget = max_tokens(v, fmt, max_len)
            views.append(v)
            requests.append(GenRequest(v.prompt, adapter, budget))
            if s.n_samples:
                views.append(v)
                requests.append(GenRequest(v.prompt, adapter, budget, n=s.n_samples,
                                           temperature=s.temperature))
    spent = SearchStats()
    out: list[list[Sample]] = [[] for _ in range(task.n_test)]
    collect(model, views, search_views(model, cfg, views, requests, spent), adapter, out)
    if s.unsure_extra_views:
        unsure = [i for i in range(task.n_test) if agreement(out[i]) < s.unsure_agreement]
        more = [v for i in unsure for v in views_of(model, task, i, cfg, task_rng(
            s.seed, task.id, EXTRA_STREAM.format(i)), extra=True)]
        more_requests = [GenRequest(v.prompt, adapter, max_tokens(v, fmt, max_len)) for v in more]
        collect(model, more, search_views(model, cfg, more, more_requests, spent), adapter, out)
    return out


def collect(model: Model, views: Sequence[View], gens: Sequence[list[Generation]],
            adapter: Adapter | None, out: list[list[Sample]]) -> None:
    """Each view's generations parsed and inverted into the original frame, appended to its test
    input's samples (`from_base` when no adapter answered)."""
    for v, g in zip(views, gens):
        out[v.test_index].extend(collect_samples(v, g, model.fmt, from_base=adapter is None))


def choose(model: Model, task: Task, test_index: int, samples: list[Sample], adapter: Adapter | None,
           cfg: Config) -> list[Grid]:
    """Identical grids pooled into candidates, the `selection.max_rescore` most frequent re-scored
    under `selection.rescore_augmentations` augmented prompts (identity first) with the task's
    adapter, then the first two distinct grids under `selection.policy`. Fork here for a new rule."""
    sel = cfg.selection
    candidates = pool(samples)
    rescore(task, test_index, candidates[:sel.max_rescore], model.fmt, model.sampler, adapter,
            task_rng(cfg.sampling.seed, task.id, RESCORE_STREAM.format(test_index)),
            n=sel.rescore_augmentations, max_len=cfg.model.max_seq_len,
            keep_background=cfg.sampling.keep_background)
    return select_two(candidates, sel.policy, poe_offset=sel.poe_offset)
