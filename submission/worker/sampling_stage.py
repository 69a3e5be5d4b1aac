"""The sampling stage of a chunk: every view of every test input in one batched answer search
(answers/search.py: every answer above the DFS threshold, speculative while drafts pay), more
random views where the answers disagree, and base-model answers where an adapter gave fewer than
two distinct grids; the samples parsed and inverted into the original frame. A rejected call costs
only the task whose requests it holds (counted, and a fault); a vLLM engine lost for good hands over
to the transformers sampler. This module neither trains nor pools, re-scores or selects.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from submission.config import Config
from submission import events as ev
from submission.model.engine import Engine
from submission.errors import SamplerError, SamplerLost
from submission.arc.grids import Task, as_grid
from submission.answers.sampling import GenRequest, answer_budget, build_views, collect_samples
from submission.answers.dfs import SearchStats
from submission.answers.search import search, speculative_pays
from submission.answers.speculative import Frame
from submission.answers.select import Sample, pool
from submission.worker.sink import Sink, count_fallback, task_rng


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
        count_fallback(state, rec, ev.VIEW_TOO_LONG)
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
                count_fallback(state, records[task_id], ev.REQUESTS_REJECTED)
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
    so each wave has the answers of all earlier ones as drafts; the test input itself is the
    draft before any (`Frame.seeds`)."""
    position: dict[tuple[str, int], int] = {}
    frames = []
    for v in views:
        key = (v.task_id, v.test_index)
        n = position[key] = position.get(key, -1) + 1
        seeds = () if v.test_input is None else (tuple(map(tuple, v.test_input.tolist())),)
        frames.append(Frame(key, n.bit_length(), functools.partial(_answer_key, v, fmt),
                            functools.partial(_draft_ids, v, fmt), seeds))
    return frames


def _answer_key(view, fmt, ids: list[int]) -> tuple | None:
    grid = fmt.parse_strict(ids)
    return None if grid is None else tuple(map(tuple, view.transform.invert_grid(grid).tolist()))


def _draft_ids(view, fmt, key: tuple) -> list[int]:
    return fmt.encode_answer(view.transform.apply_grid(as_grid(np.array(key, dtype=np.uint8))))


def max_tokens(view, fmt, max_len: int) -> int:
    """Room for the largest possible answer (30x30), within the context length."""
    return max(1, min(fmt.max_answer_tokens(), max_len - len(view.prompt)))
