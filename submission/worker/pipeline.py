"""One chunk of tasks through the stages: TTT per task (one adapter each) -> one batched
multi-LoRA generate call for all their views -> parse + invert -> pool -> re-score -> two attempts.

Each task gets a `TaskPlan` (samples, views, TTT time) from budget.py. A stage that fails for one
task (training, saving on a full disk, re-scoring, writing its record) is recorded under `faults`
with its cause and falls back (base-model answers, vote, then placeholders); the other tasks of the
chunk go on. Every stage sends heartbeats from inside its work (`Sink.progress`): an optimizer step,
a finished generate request, a scoring call. Adapters live under `Sink.scratch`, in the model's
dtype, and are deleted once their task's answers are written (unless `budget.keep_adapters`).
Results go to a `Sink` (sink.py: the run in this process, or a worker's pipe to the supervisor). The
TTT stage is ttt_stage.py, the sampling stage sampling_stage.py; re-scoring and selection are here.
This module neither schedules nor writes submission.json.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from submission.runtime.budget import TaskPlan
from submission.config import Config
from submission import events as ev
from submission.model.engine import Engine
from submission.errors import SubmissionError
from submission.runtime.faults import inject
from submission.arc.grids import Task, grid_to_list
from submission.answers.rescore import rescore
from submission.answers.select import POLICIES, Sample, candidate_records, grid_key, pool, select_two
from submission.runtime.watchdog import Beat
from submission.worker import sampling_stage
from submission.worker.sink import Sink, count_fallback, task_rng
from submission.worker.ttt_stage import adapter_dir, train_task

TTT_ERRORS = (RuntimeError, OSError, ValueError, SubmissionError)  # torch OOM is a RuntimeError


def planned_config(cfg: Config, plan: TaskPlan) -> Config:
    """The config of one task under its plan (TTT samples, views, DFS threshold and re-scoring
    scaled by the budget)."""
    return replace(cfg, ttt=replace(cfg.ttt, max_samples=plan.max_samples),
                   sampling=replace(cfg.sampling, n_views=plan.n_views,
                                    unsure_extra_views=plan.extra_views,
                                    dfs_threshold=plan.dfs_threshold),
                   selection=replace(cfg.selection, max_rescore=plan.max_rescore,
                                     rescore_augmentations=plan.rescore_augmentations))


def process_chunk(engine: Engine, state: Sink, chunk: Sequence[Task],
                  plans: dict[str, TaskPlan]) -> None:
    """Every stage for the tasks of `chunk`; each finished task goes to `state.finish_task`."""
    start = time.monotonic()  # answers are due `TaskPlan.answer_s` after this
    cfgs = {t.id: planned_config(state.cfg, plans[t.id]) for t in chunk}
    records = {t.id: {"timing": {}, "fallbacks": {}, "plan": vars(plans[t.id]).copy()} for t in chunk}
    adapters = {}
    beat = Beat(state.progress)
    engine.set_beat(beat)
    for task in chunk:
        rec, t0 = records[task.id], time.monotonic()
        if not state.cfg.ttt.enabled:
            continue
        beat.at("ttt", task.id)
        try:
            adapters[task.id] = train_task(engine, state, cfgs[task.id], task, rec,
                                           t0 + plans[task.id].ttt_s, beat)
        except TTT_ERRORS as exc:
            count_fallback(state, rec, ev.TTT_FAILED)
            state.faults.append({"task": task.id, "stage": "ttt", "error": repr(exc)})
        rec["timing"]["ttt_s"] = time.monotonic() - t0
    beat.at("sample")
    for task in chunk:
        inject(task.id, "sample", state.workdir)
    samples = sampling_stage.sample_chunk(engine, state, chunk, cfgs, adapters, records)
    slowest = 0.0  # longest selection of one test input so far: what the next one may need
    for task in chunk:
        t0, rec = time.monotonic(), records[task.id]
        beat.at("rescore", task.id)
        rec["attempts"] = []
        for i in range(task.n_test):
            t1 = time.monotonic()
            rec["attempts"].append(choose(engine, state, cfgs[task.id], task, i,
                                          samples[(task.id, i)], adapters.get(task.id), rec,
                                          due=start + plans[task.id].answer_s - slowest))
            slowest = max(slowest, time.monotonic() - t1)
        rec["timing"]["select_s"] = time.monotonic() - t0
        state.finish_task(task, rec)
        if not state.cfg.budget.keep_adapters:
            shutil.rmtree(adapter_dir(state, task.id), ignore_errors=True)


def choose(engine: Engine, state: Sink, cfg: Config, task: Task, test_index: int,
           samples: list[Sample], adapter, rec: dict[str, Any],
           due: float = math.inf) -> list[list[list[int]]]:
    """Pool, re-score the top candidates, select two attempts; fallbacks counted in `rec` and run.
    Past `due` (time.monotonic) nothing is re-scored and the attempts go by vote."""
    cands = pool(samples)
    top = cands[:cfg.selection.max_rescore]
    policies = POLICIES if state.all_policies else (cfg.selection.policy,)
    policy = cfg.selection.policy
    t0 = time.monotonic()
    scoring = bool(top) and any(p != "vote" for p in policies)
    if scoring and t0 > due:  # out of time: the candidates still answer, ranked by vote
        scoring, policy = False, "vote"
        policies = tuple(dict.fromkeys(policies + (policy,)))
        count_fallback(state, rec, ev.RESCORE_OUT_OF_TIME)
    if scoring:
        try:
            scorer = engine.scorer(cfg.selection.rescore_backend)
            rescore(task, test_index, top, engine.fmt, scorer, adapter,
                    task_rng(cfg.sampling.seed, task.id, f"rescore{test_index}"),
                    n=cfg.selection.rescore_augmentations, max_len=cfg.model.max_seq_len,
                    keep_background=cfg.sampling.keep_background)
        except TTT_ERRORS as exc:  # this input is ranked by counts alone; the chunk goes on
            for c in top:
                c.rescore_logprobs = None
            count_fallback(state, rec, ev.RESCORE_FAILED)
            state.faults.append({"task": task.id, "stage": "rescore", "test_index": test_index,
                                 "error": repr(exc)})
    rec["timing"]["rescore_s"] = rec["timing"].get("rescore_s", 0.0) + time.monotonic() - t0
    by_policy = {p: select_two(cands, p, poe_offset=cfg.selection.poe_offset) for p in policies}
    chosen = by_policy[policy]
    keyed = {c.key(): c for c in cands}
    for g in chosen:
        if keyed[grid_key(g)].from_base and cfg.ttt.enabled:
            count_fallback(state, rec, ev.ATTEMPT_FROM_BASE)
    for _ in range(2 - len(chosen)):
        count_fallback(state, rec, ev.ATTEMPT_PLACEHOLDER)
    rescored = sum(len(c.rescore_logprobs or []) for c in top)  # all pairs, not only those listed
    entry = {"test_index": test_index, "samples": len(samples), "rescored_pairs": rescored,
             "unparsed": sum(1 for s in samples if s.grid is None),
             "candidates": candidate_records(cands, policy, poe_offset=cfg.selection.poe_offset)}
    if policy != cfg.selection.policy:
        entry["policy"] = policy
    if state.all_policies:
        entry["attempts_by_policy"] = {p: [grid_to_list(g) for g in a] for p, a in by_policy.items()}
    rec.setdefault("tests", []).append(entry)
    return [grid_to_list(g) for g in chosen]
