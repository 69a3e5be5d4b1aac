"""The TTT stage of one task: its TTT data, the trainer reset and trained until the task's
deadline, the adapter saved under `Sink.scratch` in the model's dtype, checked and marked done
(`ttt_done.json`); an adapter this run already finished for the task (its chunk was killed later)
is reused, not retrained. A failure is raised, not recorded: the chunk (pipeline.py) records it and
goes on without the adapter. This module neither samples nor deletes adapters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from submission.config import Config, upgrade_json
from submission import events as ev
from submission.model.engine import Engine
from submission.errors import AdapterError
from submission.runtime.faults import inject
from submission.arc.grids import Task
from submission.runtime.paths import task_file_name
from submission.runtime.records import task_digest
from submission.runtime.files import write_json_atomic
from submission.model.ttt_data import build_ttt_data
from submission.runtime.watchdog import Beat
from submission.worker.sink import Sink, task_rng


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
    if upgrade_json(done.get("config")) != _ttt_identity(state, task):  # older: same values, old keys
        return None
    return {"ttt": done["ttt"], "ttt_data": done["ttt_data"]}
