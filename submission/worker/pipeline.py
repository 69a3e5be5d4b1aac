"""One chunk of tasks through the stages: TTT per task (one adapter each) -> one batched
multi-LoRA generate call for all their views -> parse + invert -> pool -> re-score -> two attempts.

Each task gets a `TaskPlan` (samples, views, TTT time) from budget.py. A stage that fails for one
task (training, saving on a full disk, re-scoring, writing its record) is recorded under `faults`
with its cause and falls back (base-model answers, vote, then placeholders); the other tasks of the
chunk go on. Every stage sends heartbeats from inside its work (`Sink.progress`): an optimizer step,
a finished generate request, a scoring call. Adapters live under `Sink.scratch`, in the model's
dtype, and are deleted once their task's answers are written (unless `budget.keep_adapters`).
Results go to a `Sink` (the run in this process, or a worker's pipe to the supervisor). This module
neither schedules nor writes submission.json.
"""

from __future__ import annotations

import math
import functools
import shutil
import time
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from submission.runtime.budget import TaskPlan
from submission.config import Config
from submission import events as ev
from submission.model.engine import Engine
from submission.errors import AdapterError, SamplerError, SamplerLost, SubmissionError
from submission.runtime.faults import inject
from submission.arc.grids import Task, as_grid, grid_to_list
from submission.runtime.paths import task_file_name
from submission.runtime.records import task_digest
from submission.answers.rescore import rescore
from submission.answers.sampling import GenRequest, answer_budget, build_views, collect_samples
from submission.answers.search import Frame, SearchStats, search, speculative_pays
from submission.answers.select import POLICIES, Sample, candidate_records, grid_key, pool, select_two
from submission.runtime.files import write_json_atomic
from submission.model.ttt_data import build_ttt_data
from submission.runtime.watchdog import Beat

TTT_ERRORS = (RuntimeError, OSError, ValueError, SubmissionError)  # torch OOM is a RuntimeError


class Sink(Protocol):
    cfg: Config
    workdir: Path  # small files: per-task records, fault markers
    identity: dict[str, Any]  # answer-relevant config and the model (what a stored result needs)
    scratch: Path  # large files: adapters (deleted once their task is answered)
    all_policies: bool
    fallbacks: Counter
    faults: list[dict[str, Any]]

    def progress(self, stage: str, task_id: str | None) -> None:
        """Heartbeat: work of `stage` ('ttt' of a task, 'sample', 'rescore' of a task) progressed."""

    def finish_task(self, task: Task, record: dict[str, Any]) -> None:
        """Deliver the task's answers; a failure to store its record is recorded, not raised."""


def task_rng(seed: int, task_id: str, stage: str) -> np.random.Generator:
    """An explicit, reproducible stream per (seed, task, stage), independent of processing order."""
    key = task_id.encode("utf-8", "surrogatepass")  # any JSON key, lone surrogates included
    return np.random.default_rng([seed, zlib.crc32(key), zlib.crc32(stage.encode())])


def planned_config(cfg: Config, plan: TaskPlan) -> Config:
    """The config of one task under its plan (TTT samples, views, DFS threshold and re-scoring
    scaled by the budget)."""
    return replace(cfg, ttt=replace(cfg.ttt, max_samples=plan.max_samples),
                   sampling=replace(cfg.sampling, n_views=plan.n_views,
                                    unsure_extra_views=plan.extra_views,
                                    dfs_threshold=plan.dfs_threshold),
                   selection=replace(cfg.selection, max_rescore=plan.max_rescore,
                                     rescore_augmentations=plan.rescore_augmentations))


def check_adapter(path: str | Path) -> None:
    """A saved adapter must have a readable config and weights before vLLM is given it."""
    import json

    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        json.loads((path / "adapter_config.json").read_text())
        with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as f:
            keys = list(f.keys())
    except (OSError, ValueError, SafetensorError) as exc:
        raise AdapterError(f"adapter {path} is unreadable: {exc}") from exc
    if not keys:
        raise AdapterError(f"adapter {path} has no weights")


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
            _count(state, rec, ev.TTT_FAILED)
            state.faults.append({"task": task.id, "stage": "ttt", "error": repr(exc)})
        rec["timing"]["ttt_s"] = time.monotonic() - t0
    beat.at("sample")
    for task in chunk:
        inject(task.id, "sample", state.workdir)
    samples = sample_chunk(engine, state, chunk, cfgs, adapters, records)
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


def adapter_dir(state: Sink, task_id: str) -> Path:
    """Where a task's adapter is saved: under the scratch directory, by its safe file name."""
    return state.scratch / "adapters" / task_file_name(task_id)


def train_task(engine: Engine, state: Sink, cfg: Config, task: Task, rec: dict[str, Any],
               deadline: float, beat: Beat | None = None):
    """TTT data, reset, train, save and check the adapter; returns its vLLM handle. An adapter this
    run already finished for the task (its chunk was killed later) is reused, not retrained."""
    from submission.model.backends import resolve_dtype

    out = adapter_dir(state, task.id)
    reused = _finished_adapter(out, state, task)
    if reused is not None:
        rec.update(reused, ttt_reused=True)
        state.fallbacks[ev.TTT_ADAPTER_REUSED] += 1
        return engine.new_adapter(task.id, out)
    inject(task.id, "ttt", state.workdir)
    rng = task_rng(cfg.ttt.seed, task.id, "ttt")
    data = build_ttt_data(task, engine.fmt, rng, max_samples=cfg.ttt.max_samples,
                          max_len=cfg.model.max_seq_len, keep_background=cfg.ttt.keep_background,
                          skip_first_output=cfg.ttt.skip_first_output)
    rec["ttt_data"] = data.stats()
    if data.too_long:
        state.fallbacks[ev.TTT_SAMPLES_TOO_LONG] += data.too_long
    if not data.samples:
        raise ValueError("no TTT sample fits the token limit")
    def on_step(done: int) -> None:
        if beat is not None:
            beat()
        if done == 2:
            inject(task.id, "ttt_step", state.workdir)

    engine.trainer.reset()
    try:
        with tqdm(desc=f"ttt {task.id}", unit="step", leave=False) as bar:
            result = engine.trainer.train(data.samples, rng, cfg.ttt, deadline=deadline,
                                          progress=bar, on_step=on_step)
    finally:
        engine.forward.forget_loaded()  # the live adapter weights changed, finished or not
    rec["ttt"] = dict(vars(result))
    if result.stopped_by_deadline:
        state.fallbacks[ev.TTT_CUT_BY_DEADLINE] += 1
    inject(task.id, "save", state.workdir, out)
    path = engine.trainer.save(out, dtype=resolve_dtype(state.cfg.model.dtype))
    inject(task.id, "saved", state.workdir, path)
    check_adapter(path)
    write_json_atomic(path / DONE, {"config": _ttt_identity(state, task), "ttt": rec["ttt"],
                                    "ttt_data": rec["ttt_data"]})
    return engine.new_adapter(task.id, path)


DONE = "ttt_done.json"  # written last: the adapter is complete and checked


def _ttt_identity(state: Sink, task: Task) -> dict[str, Any]:
    """What an adapter depends on: the model and TTT config sections, the model itself and the
    task's content."""
    return {**state.cfg.to_json(("model", "ttt")), "model_identity": state.identity.get("model"),
            "task_digest": task_digest(task)}


def _finished_adapter(path: Path, state: Sink, task: Task) -> dict[str, Any] | None:
    import json

    try:
        done = json.loads((path / DONE).read_text())
        check_adapter(path)
    except (OSError, ValueError, AdapterError):
        return None
    if done.get("config") != _ttt_identity(state, task):
        return None
    return {"ttt": done["ttt"], "ttt_data": done["ttt_data"]}


def sample_chunk(engine: Engine, state: Sink, chunk: Sequence[Task], cfgs: dict[str, Config],
                 adapters: dict, records: dict[str, dict[str, Any]]
                 ) -> dict[tuple[str, int], list[Sample]]:
    """All views of every task in the chunk, one batched generate call (plus base-model fallbacks)."""
    cfg, fmt = state.cfg, engine.fmt
    views, requests = [], []
    base_views: dict[tuple[str, int], list] = {}
    for task in chunk:
        s = cfgs[task.id].sampling
        rng = task_rng(s.seed, task.id, "views")
        for i in range(task.n_test):
            vs, dropped = build_views(task, i, fmt, rng, n_views=s.n_views,
                                      max_len=cfg.model.max_seq_len,
                                      answer_tokens=answer_budget(task, i, fmt),
                                      keep_background=s.keep_background,
                                      shuffle_order=s.shuffle_order)
            if dropped:
                state.fallbacks[ev.VIEW_DEMOS_DROPPED] += dropped
            vs = fitting_views(state, records[task.id], vs)
            base_views[(task.id, i)] = vs[:2]
            adapter = adapters.get(task.id)
            if adapter is None and cfg.ttt.enabled and not s.base_model_fallback:
                continue  # TTT failed and base-model answers are not wanted: placeholders
            for v in vs:
                views.append((v, adapter is None))
                budget = max_tokens(v, fmt, cfg.model.max_seq_len)
                requests.append(GenRequest(v.prompt, adapter, budget))
                if s.n_samples:
                    views.append((v, adapter is None))
                    requests.append(GenRequest(v.prompt, adapter, budget, n=s.n_samples,
                                               temperature=s.temperature))
    t0 = time.monotonic()
    out: dict[tuple[str, int], list[Sample]] = {key: [] for key in base_views}
    stats = SearchStats()
    generate_into(engine, state, views, requests, out, records, stats, cfgs)
    views += resample_unsure(engine, state, chunk, cfgs, adapters, out, records, stats)
    # Base-model answers where the adapter produced fewer than two distinct grids (own call: vLLM bug).
    need = [key for key, smp in out.items() if len(pool(smp)) < 2
            and cfg.sampling.base_model_fallback and key[0] in adapters]
    base_req = [(v, GenRequest(v.prompt, None, max_tokens(v, fmt, cfg.model.max_seq_len)))
                for key in need for v in base_views[key]]
    if base_req:
        generate_into(engine, state, [(v, True) for v, _ in base_req], [r for _, r in base_req], out,
                      records, stats, cfgs)
        state.fallbacks[ev.BASE_MODEL_SAMPLED] += len(need)
    elapsed, total = time.monotonic() - t0, max(1, len(views) + len(base_req))
    for task in chunk:
        mine = sum(1 for v, _ in views if v.task_id == task.id) + sum(
            1 for v, _ in base_req if v.task_id == task.id)
        records[task.id]["timing"]["sample_s"] = elapsed * mine / total
        records[task.id]["timing"]["verify_s"] = stats.verify_s * mine / total
        records[task.id]["views"] = mine
        records[task.id]["chunk_search"] = stats.to_json()  # the whole chunk's answer search
    if stats.unverified:  # drafts whose rows could not be proven computed: decoded instead
        state.fallbacks[ev.DFS_DRAFT_UNPROVEN] += stats.unverified
    return out


def agreement(samples: list[Sample]) -> float:
    """Share of the parsed answers that the most frequent one has (0 when none parsed)."""
    cands = pool(samples)
    parsed = sum(c.count for c in cands)
    return cands[0].count / parsed if parsed else 0.0


def resample_unsure(engine: Engine, state: Sink, chunk: Sequence[Task], cfgs: dict[str, Config],
                    adapters: dict, out: dict[tuple[str, int], list[Sample]],
                    records: dict[str, dict[str, Any]], stats: SearchStats | None = None) -> list:
    """Spend spare time where it matters: test inputs whose answers disagree get
    `unsure_extra_views` more (random) views, in one more batched call. Returns those views."""
    cfg, fmt = state.cfg, engine.fmt
    views, requests = [], []
    for task in chunk:
        s, adapter = cfgs[task.id].sampling, adapters.get(task.id)
        if not s.unsure_extra_views or (adapter is None and cfg.ttt.enabled):
            continue
        for i in range(task.n_test):
            if agreement(out[(task.id, i)]) >= s.unsure_agreement:
                continue
            vs, _ = build_views(task, i, fmt, task_rng(s.seed, task.id, f"extra{i}"),
                                n_views=s.unsure_extra_views, max_len=cfg.model.max_seq_len,
                                answer_tokens=answer_budget(task, i, fmt), extra=True,
                                keep_background=s.keep_background, shuffle_order=s.shuffle_order,
                                first_index=s.n_views)
            vs = fitting_views(state, records[task.id], vs)
            state.fallbacks[ev.UNSURE_RESAMPLED] += 1
            for v in vs:
                views.append((v, adapter is None))
                requests.append(GenRequest(v.prompt, adapter, max_tokens(v, fmt, cfg.model.max_seq_len)))
    generate_into(engine, state, views, requests, out, records, stats, cfgs)
    return views


def fitting_views(state: Sink, rec: dict[str, Any], views: list) -> list:
    """The views whose prompt leaves room for one answer token in `model.max_seq_len`; the rest
    are dropped, counted (vLLM refuses a prompt that does not, and with it every request of the
    call: vllm/v1/engine/input_processor.py:574-601)."""
    keep = [v for v in views if len(v.prompt) < state.cfg.model.max_seq_len]
    for _ in range(len(views) - len(keep)):
        _count(state, rec, ev.VIEW_TOO_LONG)
    return keep


def generate_into(engine: Engine, state: Sink, views: list, requests: list[GenRequest],
                  out: dict[tuple[str, int], list[Sample]],
                  records: dict[str, dict[str, Any]], stats: SearchStats | None = None,
                  cfgs: Mapping[str, Config] | None = None) -> None:
    """Answer search for `requests` (one per (view, from_base) of `views`); samples go to `out`,
    and answers that parsed only leniently are counted in their task's record. When the sampler
    rejects the call, each task's requests go again on their own: a rejected request costs only
    its own task (counted, and a fault). With `sampling.speculative` the views of a test input
    share their answers as drafts. Each task searches at its own config's DFS threshold (`cfgs`,
    by task id; the run's config for a task not in it)."""
    thresholds = {v.task_id: (cfgs[v.task_id] if cfgs and v.task_id in cfgs else state.cfg)
                  .sampling.dfs_threshold for v, _ in views}
    try:
        gens = _search(engine, state.cfg, views, requests, stats, thresholds)
    except SamplerError:
        gens = [[] for _ in requests]
        by_task: dict[str, list[int]] = {}
        for i, (v, _) in enumerate(views):
            by_task.setdefault(v.task_id, []).append(i)
        for task_id, idx in by_task.items():
            try:
                got = _search(engine, state.cfg, [views[i] for i in idx], [requests[i] for i in idx],
                              stats, thresholds)
            except SamplerError as exc:
                _count(state, records[task_id], ev.REQUESTS_REJECTED)
                state.faults.append({"task": task_id, "stage": "sample", "error": repr(exc)[:2000]})
                continue
            for i, g in zip(idx, got):
                gens[i] = g
    fmt = engine.fmt
    for (v, from_base), g in zip(views, gens):
        before, fixes = fmt.lenient_parses, Counter(fmt.lenient_fixes)
        out[(v.task_id, v.test_index)].extend(collect_samples(v, g, fmt, from_base=from_base))
        if fmt.lenient_parses > before:
            rec = records[v.task_id]
            rec["lenient_parses"] = rec.get("lenient_parses", 0) + fmt.lenient_parses - before
            rec.setdefault("lenient_fixes", {})
            for k, n in (fmt.lenient_fixes - fixes).items():
                rec["lenient_fixes"][k] = rec["lenient_fixes"].get(k, 0) + n


def _search(engine: Engine, cfg: Config, views: list, requests: list[GenRequest],
            stats: SearchStats | None, thresholds: Mapping[str, float]) -> list:
    """`search` on the engine's sampler (speculative when `sampling.speculative`), one call per
    DFS threshold among the tasks (`thresholds` by task id: one call when the chunk was planned
    at one scale); if vLLM is lost for good (it could not be rebuilt), the engine switches to the
    transformers sampler (counted) and the search runs again on it."""
    speculative = cfg.sampling.speculative and speculative_pays(engine.speculative)
    if cfg.sampling.speculative and not speculative and not engine.speculative_off:
        engine.speculative_off = True
        engine.fallbacks[ev.SPECULATIVE_OFF] += 1
    frames = view_frames([v for v, _ in views], engine.fmt) if speculative else None
    own = SearchStats()
    groups: dict[float, list[int]] = {}
    for i, (v, _) in enumerate(views):
        groups.setdefault(thresholds[v.task_id], []).append(i)
    out: list = [None] * len(requests)
    for threshold, idx in groups.items():
        kwargs = dict(threshold=threshold, max_paths=cfg.sampling.dfs_max_paths,
                      stop_ids=engine.fmt.stop_token_ids,
                      frames=[frames[i] for i in idx] if frames is not None else None, stats=own)
        part = [requests[i] for i in idx]
        try:
            got = search(engine.sampler, part, **kwargs)
        except SamplerLost as exc:
            engine.sampler_lost(exc)
            got = search(engine.sampler, part, **kwargs)
        for i, g in zip(idx, got):
            out[i] = g
    if stats is not None:
        stats.add(own)
    if speculative:
        engine.speculative.add(own)
    return out


def view_frames(views: list, fmt) -> list[Frame]:
    """Per view, how its answers meet the other views of its test input: a strictly parsed
    answer as the grid in the original frame, and back as this view's answer tokens. Views start
    in waves of doubling size (the 1st view, the 2nd, the 3rd-4th, 5th-8th, ...) in view order,
    so each wave has the answers of all earlier ones as drafts."""
    position: dict[tuple[str, int], int] = {}
    frames = []
    for v in views:
        key = (v.task_id, v.test_index)
        n = position[key] = position.get(key, -1) + 1
        frames.append(Frame(key, n.bit_length(), functools.partial(_answer_key, v, fmt),
                            functools.partial(_draft_ids, v, fmt)))
    return frames


def _answer_key(view, fmt, ids: list[int]) -> tuple | None:
    grid = fmt.parse_strict(ids)
    return None if grid is None else tuple(map(tuple, view.transform.invert_grid(grid).tolist()))


def _draft_ids(view, fmt, key: tuple) -> list[int]:
    return fmt.encode_answer(view.transform.apply_grid(as_grid(np.array(key, dtype=np.uint8))))


def max_tokens(view, fmt, max_len: int) -> int:
    """Room for the largest possible answer (30x30), within the context length."""
    return max(1, min(fmt.max_answer_tokens(), max_len - len(view.prompt)))


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
        _count(state, rec, ev.RESCORE_OUT_OF_TIME)
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
            _count(state, rec, ev.RESCORE_FAILED)
            state.faults.append({"task": task.id, "stage": "rescore", "test_index": test_index,
                                 "error": repr(exc)})
    rec["timing"]["rescore_s"] = rec["timing"].get("rescore_s", 0.0) + time.monotonic() - t0
    by_policy = {p: select_two(cands, p, poe_offset=cfg.selection.poe_offset) for p in policies}
    chosen = by_policy[policy]
    keyed = {c.key(): c for c in cands}
    for g in chosen:
        if keyed[grid_key(g)].from_base and cfg.ttt.enabled:
            _count(state, rec, ev.ATTEMPT_FROM_BASE)
    for _ in range(2 - len(chosen)):
        _count(state, rec, ev.ATTEMPT_PLACEHOLDER)
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


def _count(state: Sink, rec: dict[str, Any], name: str) -> None:
    state.fallbacks[name] += 1
    rec["fallbacks"][ev.check(name)] = rec["fallbacks"].get(name, 0) + 1


