"""What a stored answer is tied to: the model's every weight byte and the task's grids.

A record or an adapter made under another model or for other grids under the same task id is
redone; records whose identity still matches are reused. The Run-level tests need no engine: the
records are read and judged in `Run.__init__`.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest

from submission.config import RENAMED, Config
from submission.arc.grids import Pair, Task, as_grid
from submission.runtime.modelfiles import model_identity, weight_digest
from submission.runtime.records import record_path, store_record, task_digest
from submission.runtime.run import WEIGHT_DIGESTS, Run
from submission.arc.tasks import export_kaggle, tasks_to_challenges
from tests.helpers import random_task
from tests.helpers import write_safetensors

BIG = {"a.weight": ("F32", [300, 256]), "b.bias": ("BF16", [5])}  # 307 kB: a middle past 64 KiB


def big_model(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text('{"model_type": "qwen3"}')
    write_safetensors(d / "model.safetensors", BIG, fill=b"\x02")
    return d


def rewrite_middle(path: Path, keep_mtime: bool = True) -> None:
    """Change 4 bytes in the middle of the file in place; same size, and the mtime put back."""
    st = path.stat()
    with path.open("r+b") as fh:
        fh.seek(st.st_size // 2)
        fh.write(b"\x07\x07\x07\x07")
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def test_fingerprint_covers_the_middle_of_a_weight_file(tmp_path):
    model = big_model(tmp_path / "m")
    weights = model / "model.safetensors"
    before = model_identity(model)["fingerprint"]
    rewrite_middle(weights)
    assert model_identity(model)["fingerprint"] != before


def test_fingerprint_cache_reads_each_weight_file_once(tmp_path, monkeypatch):
    model = big_model(tmp_path / "m")
    weights = model / "model.safetensors"
    cache = tmp_path / "work" / WEIGHT_DIGESTS
    reads = []
    real_open = Path.open

    def counting_open(self, mode="r", *args, **kwargs):
        if self == weights and "b" in mode:
            reads.append(mode)
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    first = model_identity(model, cache=cache)
    assert len(reads) == 1 and cache.is_file()
    entry = json.loads(cache.read_text())[str(weights)]
    assert entry["size"] == weights.stat().st_size and len(entry["sha256"]) == 64
    assert model_identity(model, cache=cache) == first and len(reads) == 1  # from the cache
    monkeypatch.setattr(Path, "open", real_open)
    assert first["fingerprint"] == model_identity(model)["fingerprint"]  # cache or not: the same
    rewrite_middle(weights)  # same size and mtime: the ctime still says it changed
    monkeypatch.setattr(Path, "open", counting_open)
    changed = model_identity(model, cache=cache)
    assert len(reads) == 2 and changed["fingerprint"] != first["fingerprint"]
    cache.write_text("{not json")  # a broken cache only means hashing again
    assert model_identity(model, cache=cache) == changed and len(reads) == 3
    assert json.loads(cache.read_text())[str(weights)]["sha256"] != entry["sha256"]
    monkeypatch.setattr(Path, "open", real_open)
    assert changed == model_identity(model)


def test_a_stale_cache_entry_is_not_trusted(tmp_path):
    model = big_model(tmp_path / "m")
    weights = model / "model.safetensors"
    real = weight_digest(weights)
    forged = dict(real, sha256="0" * 64)
    assert weight_digest(weights, forged)["sha256"] == "0" * 64  # matching stamp: reused
    for key in ("size", "ino", "mtime_ns", "ctime_ns"):
        assert weight_digest(weights, dict(forged, **{key: forged[key] + 1})) == real, key
    assert weight_digest(weights, {"sha256": 5, **{k: real[k] for k in forged if k != "sha256"}}) == real


def small_task(task_id: str) -> Task:
    return random_task(task_id, zlib.crc32(task_id.encode()), side=3)


def write_tasks(tmp: Path, tasks: dict[str, Task]) -> Path:
    path, _ = export_kaggle(tasks, tmp / "data", "evaluation")
    return path


def answered(state: Run) -> None:
    """Store a finished record for every pending task, as the pipeline does."""
    for task in state.pending:
        store_record(state, task, {"attempts": [[[[1]]]], "timing": {}, "fallbacks": {}})


def make_run(tmp: Path, challenges: Path, model: Path) -> Run:
    return Run(challenges, tmp / "submission.json", tmp / "work", Config(), model=model)


def test_records_follow_weight_bytes_and_task_grids(tmp_path):
    model = big_model(tmp_path / "m")
    tasks = {i: small_task(i) for i in ("aaaa0001", "bbbb0002", "cccc0003")}
    ch = write_tasks(tmp_path, tasks)
    state = make_run(tmp_path, ch, model)
    assert state.resumed == 0 and len(state.pending) == 3
    answered(state)
    assert (tmp_path / "work" / WEIGHT_DIGESTS).is_file()
    assert make_run(tmp_path, ch, model).resumed == 3  # same model, same grids: all reused
    rewrite_middle(model / "model.safetensors")
    state = make_run(tmp_path, ch, model)
    assert state.resumed == 0 and len(state.pending) == 3  # other weights: nothing reused
    answered(state)
    assert make_run(tmp_path, ch, model).resumed == 3
    # One cell of one demonstration changes under the same id: that task alone is redone.
    train = list(tasks["bbbb0002"].train)
    out = train[1].output.copy()
    out[2, 1] = (out[2, 1] + 1) % 10
    train[1] = Pair(train[1].input, out)
    changed = dict(tasks, bbbb0002=Task("bbbb0002", tuple(train), tasks["bbbb0002"].test_inputs))
    assert task_digest(changed["bbbb0002"]) != task_digest(tasks["bbbb0002"])
    ch.write_text(json.dumps(tasks_to_challenges(changed)))
    state = make_run(tmp_path, ch, model)
    assert state.resumed == 2 and [t.id for t in state.pending] == ["bbbb0002"]
    rec = json.loads(record_path(tmp_path / "work", "aaaa0001").read_text())
    assert rec["task_digest"] == task_digest(tasks["aaaa0001"])


def test_task_digest_is_canonical_content():
    t = small_task("x0000001")
    same = Task("other-id", tuple(Pair(p.input.astype(np.int64), p.output) for p in t.train),
                t.test_inputs, test_outputs=(as_grid([[1]]),))
    assert task_digest(same) == task_digest(t)  # id, dtype and solutions do not matter
    swapped = Task(t.id, t.train[::-1], t.test_inputs)
    transposed = Task(t.id, t.train, (t.test_inputs[0].T.copy(),))
    assert len({task_digest(t), task_digest(swapped), task_digest(transposed)}) == 3


@pytest.mark.slow
def test_changed_grids_retrain_the_adapter(engine, tmp_path):
    """A finished adapter kept for a task is reused for the same grids only."""
    from submission.runtime.run import run
    from tests.helpers import QUICK
    from tests.helpers import QUICK_RATES as RATES

    cfg = QUICK.with_overrides(["budget.keep_adapters=true", "budget.workers=0"])
    tasks = {i: small_task(i) for i in ("adpt0001", "adpt0002")}
    ch = write_tasks(tmp_path, tasks)
    work = tmp_path / "work"

    def go() -> dict:
        return run(ch, None, tmp_path / "s.json", work, cfg, engine=engine, calibration=RATES)

    assert go()["resumed"] == 0
    for p in (work / "tasks").iterdir():
        p.unlink()  # only the kept adapters are left
    report = go()
    assert report["resumed"] == 0 and report["fallbacks"].get("ttt_adapter_reused") == 2
    for p in (work / "tasks").iterdir():
        p.unlink()
    t = tasks["adpt0001"]
    grid = t.test_inputs[0].copy()
    grid[0, 0] = (grid[0, 0] + 1) % 10
    ch.write_text(json.dumps(tasks_to_challenges(dict(tasks, adpt0001=Task(t.id, t.train, (grid,))))))
    report = go()
    assert report["resumed"] == 0 and report["fallbacks"].get("ttt_adapter_reused") == 1
    assert "ttt_reused" not in report["per_task"]["adpt0001"]
    assert report["per_task"]["adpt0002"].get("ttt_reused") is True


def before_lora_tables(config: dict) -> dict:
    """A config dict as stored before [ttt.lora] / [finetune.lora]: the LoRA fields flat, old names."""
    old = {new.rsplit(".", 1)[1]: key.split(".")[1] for key, new in RENAMED.items()}
    out = dict(config)
    for section in ("ttt", "finetune"):
        if isinstance(out.get(section), dict):
            sec = dict(out[section])
            lora = sec.pop("lora")
            out[section] = {**sec, **{old[k]: v for k, v in lora.items()}}
    return out


def test_a_workdir_from_before_the_lora_tables_is_resumed(tmp_path):
    """Same values under the old keys are the same answer-relevant identity: reused, not redone;
    an old record whose LoRA values differ is still redone."""
    model = big_model(tmp_path / "m")
    tasks = {i: small_task(i) for i in ("aaaa0001", "bbbb0002")}
    ch = write_tasks(tmp_path, tasks)
    answered(make_run(tmp_path, ch, model))
    for tid in tasks:
        path = record_path(tmp_path / "work", tid)
        rec = json.loads(path.read_text())
        rec["config"] = before_lora_tables(rec["config"])
        assert "r" in rec["config"]["ttt"] and "lora" not in rec["config"]["ttt"]
        if tid == "bbbb0002":
            rec["config"]["ttt"]["r"] = 8
        path.write_text(json.dumps(rec))
    state = make_run(tmp_path, ch, model)
    assert state.resumed == 1 and [t.id for t in state.pending] == ["bbbb0002"]


def test_an_adapter_from_before_the_lora_tables_is_reused(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from submission.worker import ttt_stage

    monkeypatch.setattr(ttt_stage, "check_adapter", lambda path: None)
    task = small_task("aaaa0001")
    state = SimpleNamespace(cfg=Config(), identity={"model": {"path": "/m", "fingerprint": "f"}})
    done = {"config": ttt_stage._ttt_identity(state, task), "ttt": {"steps": 3}, "ttt_data": {}}
    (tmp_path / ttt_stage.DONE).write_text(json.dumps(
        dict(done, config=before_lora_tables(done["config"]))))
    assert ttt_stage._finished_adapter(tmp_path, state, task) == {"ttt": {"steps": 3}, "ttt_data": {}}
    state.cfg = Config().with_overrides(["ttt.lora.r=8"])
    assert ttt_stage._finished_adapter(tmp_path, state, task) is None
