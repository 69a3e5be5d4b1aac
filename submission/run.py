"""The run: tasks -> TTT per task -> batched multi-LoRA sampling -> candidates -> re-scoring ->
two attempts -> submission.json, rewritten atomically after every task.

Tasks go in chunks of `sampling.max_loras`: the chunk's adapters are trained one after another on the
single trainer model (reset between tasks), then all views of the chunk are sampled in one batched
call with one adapter each. A task whose stage fails falls back (base model, then placeholder), is
counted, and the run goes on. Finished tasks are stored under `workdir/tasks/`, so a rerun with the
same workdir resumes. This module does not spawn processes or plan budgets beyond a fair share.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .config import Config
from .engine import Engine, build_engine
from .grids import Task, grid_to_list
from .rescore import rescore
from .sample import GenRequest, answer_budget, build_views, collect_samples
from .select import POLICIES, Sample, grid_key, pool, rank, select_two, to_record
from .submit import build_submission, write_json_atomic
from .tasks import load_tasks_lenient, read_json_object
from .ttt_data import build_ttt_data

TTT_ERRORS = (RuntimeError, OSError, ValueError)  # torch OOM is a RuntimeError subclass


def task_rng(seed: int, task_id: str, stage: str) -> np.random.Generator:
    """An explicit, reproducible stream per (seed, task, stage), independent of processing order."""
    return np.random.default_rng([seed, zlib.crc32(task_id.encode()), zlib.crc32(stage.encode())])


class Run:
    """State of one run: outputs, per-task records and fallback counters."""

    def __init__(self, challenges: str | Path, out: str | Path, workdir: str | Path, cfg: Config,
                 *, limit: int | None = None, all_policies: bool = False) -> None:
        self.cfg, self.out, self.workdir = cfg, Path(out), Path(workdir)
        self.cfg_json = json.loads(json.dumps(cfg.to_dict()))  # as stored: tuples become lists
        self.all_policies = all_policies
        (self.workdir / "tasks").mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.workdir / "config.json", cfg.to_dict())
        self.tasks, bad = load_tasks_lenient(challenges)
        raw = read_json_object(challenges)
        ids = list(raw)[:limit] if limit else list(raw)
        self.counts = {i: _raw_test_count(raw[i]) for i in ids}
        self.faults: list[dict[str, Any]] = [{"task": i, "stage": "load", "error": bad[i]}
                                             for i in ids if i in bad]
        self.fallbacks: Counter = Counter(bad_task=len(self.faults))
        self.answers: dict[str, list[list[Any]]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        for i in ids:
            rec = self._load_record(i)
            if rec is not None:
                self.records[i] = rec
                self.answers[i] = rec["attempts"]
        self.pending = [self.tasks[i] for i in ids if i in self.tasks and i not in self.records]
        self.resumed = len(self.records)
        self.write_submission()

    def _load_record(self, task_id: str) -> dict[str, Any] | None:
        path = self.workdir / "tasks" / f"{task_id}.json"
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return rec if rec.get("config") == self.cfg_json else None

    def write_submission(self) -> None:
        write_json_atomic(self.out, build_submission(self.counts, self.answers))

    def finish_task(self, task: Task, record: dict[str, Any]) -> None:
        record["config"] = self.cfg_json
        write_json_atomic(self.workdir / "tasks" / f"{task.id}.json", record)
        self.records[task.id] = record
        self.answers[task.id] = record["attempts"]
        self.write_submission()

    def report(self, engine_info: dict[str, Any], seconds: float) -> dict[str, Any]:
        report = {"config": self.cfg.to_dict(), "backends": engine_info, "seconds": seconds,
                  "tasks": len(self.counts), "resumed": self.resumed,
                  "fallbacks": dict(self.fallbacks), "faults": self.faults,
                  "per_task": {k: {f: v for f, v in r.items() if f != "config"}
                               for k, r in self.records.items()}}
        write_json_atomic(self.workdir / "run.json", report)
        return report


def run(challenges: str | Path, model: str | Path, out: str | Path, workdir: str | Path,
        cfg: Config, *, limit: int | None = None, all_policies: bool = False,
        engine: Engine | None = None) -> dict[str, Any]:
    """Run every task of `challenges`; returns the run report (also saved as workdir/run.json)."""
    start = time.monotonic()
    state = Run(challenges, out, workdir, cfg, limit=limit, all_policies=all_policies)
    if not state.pending:
        return state.report(engine.info if engine else {}, time.monotonic() - start)
    if engine is None:
        t0 = time.monotonic()
        engine = build_engine(model, cfg)
        engine.info["load_s"] = time.monotonic() - t0
    engine.fallbacks = state.fallbacks
    loop_start, compute_start = time.monotonic(), compute_seconds(engine)
    deadline = start + cfg.budget.time_budget_s
    size = cfg.sampling.max_loras
    with tqdm(total=len(state.pending), desc="tasks", unit="task") as bar:
        for k in range(0, len(state.pending), size):
            chunk = state.pending[k:k + size]
            if time.monotonic() >= deadline:
                state.fallbacks["deadline_skipped_tasks"] += len(chunk)
                bar.update(len(chunk))
                continue
            process_chunk(engine, state, chunk, deadline, remaining=len(state.pending) - k)
            bar.update(len(chunk))
    loop_s, compute_s = time.monotonic() - loop_start, compute_seconds(engine) - compute_start
    engine.info["compute"] = {"loop_s": loop_s, "compute_s": compute_s,
                              "host_share": max(0.0, loop_s - compute_s) / loop_s if loop_s else 0.0}
    return state.report(engine.info, time.monotonic() - start)


def compute_seconds(engine: Engine) -> float:
    """Seconds spent in model compute so far (training steps, generate and scoring calls); the rest
    of the task loop is host work (data, views, parsing, selection, writing)."""
    samplers = {id(s): s for s in (engine.sampler, engine.forward)}.values()
    return engine.trainer.compute_s + sum(getattr(s, "compute_s", 0.0) for s in samplers)


def process_chunk(engine: Engine, state: Run, chunk: Sequence[Task], deadline: float,
                  *, remaining: int) -> None:
    cfg = state.cfg
    records = {t.id: {"timing": {}, "fallbacks": {}} for t in chunk}
    adapters = {}
    for task in chunk:
        rec, t0 = records[task.id], time.monotonic()
        share = max(0.0, deadline - t0) / max(1, remaining) * cfg.budget.ttt_fraction
        ttt_deadline = t0 + min(share, cfg.budget.task_cap_s * cfg.budget.ttt_fraction)
        if not cfg.ttt.enabled:
            continue
        try:
            adapters[task.id] = train_task(engine, state, task, rec, ttt_deadline)
        except TTT_ERRORS as exc:
            state.fallbacks["ttt_failed"] += 1
            rec["fallbacks"]["ttt_failed"] = 1
            state.faults.append({"task": task.id, "stage": "ttt", "error": repr(exc)})
        rec["timing"]["ttt_s"] = time.monotonic() - t0
        remaining -= 1
    samples = sample_chunk(engine, state, chunk, adapters, records)
    for task in chunk:
        t0, rec = time.monotonic(), records[task.id]
        rec["attempts"] = [choose(engine, state, task, i, samples[(task.id, i)],
                                  adapters.get(task.id), rec) for i in range(task.n_test)]
        rec["timing"]["select_s"] = time.monotonic() - t0
        state.finish_task(task, rec)


def train_task(engine: Engine, state: Run, task: Task, rec: dict[str, Any], deadline: float):
    cfg = state.cfg
    rng = task_rng(cfg.ttt.seed, task.id, "ttt")
    data = build_ttt_data(task, engine.fmt, rng, max_samples=cfg.ttt.max_samples,
                          max_len=cfg.model.max_seq_len, keep_background=cfg.ttt.keep_background,
                          skip_first_output=cfg.ttt.skip_first_output)
    rec["ttt_data"] = data.stats()
    if data.too_long:
        state.fallbacks["ttt_samples_too_long"] += data.too_long
    if not data.samples:
        raise ValueError("no TTT sample fits the token limit")
    engine.trainer.reset()
    with tqdm(desc=f"ttt {task.id}", unit="step", leave=False) as bar:
        result = engine.trainer.train(data.samples, rng, cfg.ttt, deadline=deadline, progress=bar)
    engine.forward.forget_loaded()
    rec["ttt"] = {k: v for k, v in vars(result).items()}
    if result.stopped_by_deadline:
        state.fallbacks["ttt_cut_by_deadline"] += 1
    path = engine.trainer.save(state.workdir / "adapters" / task.id)
    return engine.new_adapter(task.id, path)


def sample_chunk(engine: Engine, state: Run, chunk: Sequence[Task], adapters: dict,
                 records: dict[str, dict[str, Any]]) -> dict[tuple[str, int], list[Sample]]:
    """All views of every task in the chunk, one batched generate call (plus base-model fallbacks)."""
    cfg, fmt, s = state.cfg, engine.fmt, state.cfg.sampling
    views, requests = [], []
    base_views: dict[tuple[str, int], list] = {}
    for task in chunk:
        rng = task_rng(s.seed, task.id, "views")
        for i in range(task.n_test):
            vs, dropped = build_views(task, i, fmt, rng, n_views=s.n_views, max_len=cfg.model.max_seq_len,
                                      answer_tokens=answer_budget(task, i, fmt),
                                      keep_background=s.keep_background,
                                      shuffle_order=s.shuffle_order)
            if dropped:
                state.fallbacks["view_demos_dropped"] += dropped
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
    gens = engine.sampler.generate(requests) if requests else []
    out: dict[tuple[str, int], list[Sample]] = {key: [] for key in base_views}
    for (v, from_base), g in zip(views, gens):
        out[(v.task_id, v.test_index)].extend(collect_samples(v, g, fmt, from_base=from_base))
    # Base-model answers where the adapter produced fewer than two distinct grids (own call: vLLM bug).
    need = [key for key, smp in out.items() if len(pool(smp)) < 2 and s.base_model_fallback
            and key[0] in adapters]
    base_req = [(v, GenRequest(v.prompt, None, max_tokens(v, fmt, cfg.model.max_seq_len)))
                for key in need for v in base_views[key]]
    if base_req:
        gens = engine.sampler.generate([r for _, r in base_req])
        for (v, _), g in zip(base_req, gens):
            out[(v.task_id, v.test_index)].extend(collect_samples(v, g, fmt, from_base=True))
        state.fallbacks["base_model_sampled_inputs"] += len(need)
    elapsed, total = time.monotonic() - t0, max(1, len(requests) + len(base_req))
    for task in chunk:
        mine = sum(1 for v, _ in views if v.task_id == task.id) + sum(
            1 for v, _ in base_req if v.task_id == task.id)
        records[task.id]["timing"]["sample_s"] = elapsed * mine / total
        records[task.id]["views"] = mine
    return out


def max_tokens(view, fmt, max_len: int) -> int:
    """Room for the largest possible answer (30x30), within the context length."""
    return max(1, min(fmt.max_answer_tokens(), max_len - len(view.prompt)))


def choose(engine: Engine, state: Run, task: Task, test_index: int, samples: list[Sample],
           adapter, rec: dict[str, Any]) -> list[list[list[int]]]:
    """Pool, re-score the top candidates, select two attempts; fallbacks counted in `rec` and run."""
    cfg = state.cfg
    cands = pool(samples)
    top = cands[:cfg.selection.max_rescore]
    policies = POLICIES if state.all_policies else (cfg.selection.policy,)
    t0 = time.monotonic()
    if top and any(p != "vote" for p in policies):
        t = top[0]
        probe = engine.fmt.encode_prompt(list(task.train), task.test_inputs[test_index])
        scorer = engine.scorer(cfg.selection.rescore_backend, probe,
                                engine.fmt.encode_answer(t.grid), adapter)
        rescore(task, test_index, top, engine.fmt, scorer, adapter,
                task_rng(cfg.selection.rescore_augmentations, task.id, f"rescore{test_index}"),
                n=cfg.selection.rescore_augmentations, max_len=cfg.model.max_seq_len,
                keep_background=cfg.sampling.keep_background)
    rec["timing"]["rescore_s"] = rec["timing"].get("rescore_s", 0.0) + time.monotonic() - t0
    by_policy = {p: select_two(cands, p, poe_offset=cfg.selection.poe_offset) for p in policies}
    chosen = by_policy[cfg.selection.policy] if cfg.selection.policy in by_policy else select_two(
        cands, cfg.selection.policy, poe_offset=cfg.selection.poe_offset)
    keyed = {c.key(): c for c in cands}

    for g in chosen:
        if keyed[grid_key(g)].from_base and cfg.ttt.enabled:
            _count(state, rec, "attempt_from_base_model")
    for _ in range(2 - len(chosen)):
        _count(state, rec, "attempt_placeholder")
    entry = {"test_index": test_index, "samples": len(samples),
             "unparsed": sum(1 for s in samples if s.grid is None),
             "candidates": [to_record(c) for c in rank(cands, cfg.selection.policy,
                                                       poe_offset=cfg.selection.poe_offset)[:8]]}
    if state.all_policies:
        entry["attempts_by_policy"] = {p: [grid_to_list(g) for g in a] for p, a in by_policy.items()}
    rec.setdefault("tests", []).append(entry)
    return [grid_to_list(g) for g in chosen]


def _count(state: Run, rec: dict[str, Any], name: str) -> None:
    state.fallbacks[name] += 1
    rec["fallbacks"][name] = rec["fallbacks"].get(name, 0) + 1


def _raw_test_count(obj: Any) -> int:
    tests = obj.get("test") if isinstance(obj, dict) else None
    return len(tests) if isinstance(tests, list) and tests else 1
