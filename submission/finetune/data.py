"""Fine-tuning data that need not fit in memory: an index of tasks over many sources, samples built
on demand, and sequence packing.

Sources (`--data`, comma-separated): `dataset:split` (bundled, small, held in memory), a folder
(every `*.json` below it is one task, every `*.jsonl` a file of tasks), a `.json` task file, or a
`.jsonl` file with one task per line: `{"id": ..., "train": [...], "test": [...]}` or
`{"<id>": {"train": ..., "test": ...}}` (no id: `<file stem>-<line number>`). Indexing reads every
task once to check it (errors name file, line and field) and keeps only its id, place and digest;
a sample is read back, augmented and encoded when the training loop asks for it. Later sources win
on duplicate ids. This module does not train and does not decide the sample order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from submission.arc.augment import sample_transforms
from submission.arc.fit import fit_pairs, ordered_pairs
from submission.errors import InputError
from submission.arc.formats import TextFormat
from submission.arc.grids import Pair, Task
from submission.arc.tasks import DATASETS, SPLITS, load_dataset, parse_task
from submission.model.ttt_data import TrainSample


@dataclass(frozen=True, slots=True)
class TaskRef:
    id: str
    source: int  # index into TaskSource.sources
    offset: int  # byte offset of the task's line in a .jsonl file; -1: a whole file or in memory
    digest: bytes  # sha1 of the task's text (or of its grids, for bundled data)


class TaskSource:
    """An index of training tasks; `load(i)` reads task i back from its file."""

    def __init__(self, sources: list[str], refs: list[TaskRef],
                 memory: dict[int, dict[str, Task]]) -> None:
        self.sources, self.refs, self._memory = sources, refs, memory
        self._handles: dict[int, BinaryIO] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def ids(self) -> list[str]:
        return [r.id for r in self.refs]

    def load(self, i: int) -> Task:
        ref = self.refs[i]
        if ref.source in self._memory:
            return self._memory[ref.source][ref.id]
        path = self.sources[ref.source]
        if ref.offset < 0:
            return _parse(ref.id, Path(path).read_bytes(), path, None)[1]
        f = self._handles.get(ref.source)
        if f is None:
            f = self._handles[ref.source] = open(path, "rb")  # noqa: SIM115 - kept for reuse
        f.seek(ref.offset)
        return _parse_line(f.readline(), path, None, ref.id)[1]

    def items(self) -> Iterator[tuple[str, Task]]:
        """(id, task) for every task, one at a time."""
        for i, ref in enumerate(self.refs):
            yield ref.id, self.load(i)

    def without(self, ids: set[str]) -> "TaskSource":
        return TaskSource(self.sources, [r for r in self.refs if r.id not in ids], self._memory)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for r in self.refs:
            h.update(r.id.encode() + b"\0" + r.digest)
        return h.hexdigest()

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()


def open_sources(spec: str, *, allow_eval: bool = False) -> TaskSource:
    """Index the comma-separated sources of `spec` (see the module docstring)."""
    sources: list[str] = []
    refs: dict[str, TaskRef] = {}
    memory: dict[int, dict[str, Task]] = {}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        if ":" in item and item.split(":", 1)[0] in DATASETS and not Path(item).exists():
            dataset, split = item.split(":", 1)
            if split not in SPLITS:
                raise InputError(f"--data {item}: split must be one of {', '.join(SPLITS)}")
            if split == "evaluation" and not allow_eval:
                raise InputError(f"--data {item}: refusing to train on an evaluation split "
                                 "(pass --allow-eval if this is really intended)")
            memory[len(sources)] = tasks = load_dataset(dataset, split)
            for tid, task in tasks.items():
                refs[tid] = TaskRef(tid, len(sources), -1, _grid_digest(task))
            sources.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file())
        elif path.is_file() and path.suffix in (".json", ".jsonl"):
            files = [path]
        else:
            raise InputError(f"--data {item}: not a dataset:split ({', '.join(DATASETS)}), a "
                             "directory of task files, nor a .json/.jsonl file")
        for f in files:
            for ref in (_index_jsonl(f, len(sources)) if f.suffix == ".jsonl"
                        else [_index_json(f, len(sources))]):
                refs.pop(ref.id, None)  # a later source wins, and takes its place in the order
                refs[ref.id] = ref
            sources.append(str(f))
    if not refs:
        raise InputError(f"--data {spec}: no tasks found")
    return TaskSource(sources, list(refs.values()), memory)


def _index_json(path: Path, source: int) -> TaskRef:
    raw = path.read_bytes()
    tid, _ = _parse(path.stem, raw, str(path), None)
    return TaskRef(tid, source, -1, hashlib.sha1(raw).digest())


def _index_jsonl(path: Path, source: int) -> Iterator[TaskRef]:
    with open(path, "rb") as f:
        offset, line_no = 0, 0
        for line in f:
            line_no += 1
            if line.strip():
                tid, _ = _parse_line(line, str(path), line_no, f"{path.stem}-{line_no}")
                yield TaskRef(tid, source, offset, hashlib.sha1(line).digest())
            offset += len(line)


def _parse_line(line: bytes, file: str, line_no: int | None, default_id: str) -> tuple[str, Task]:
    where = f"{file}, line {line_no}" if line_no is not None else file
    return _parse(default_id, line, where, line_no)


def _parse(default_id: str, raw: bytes, file: str, line_no: int | None) -> tuple[str, Task]:
    try:
        obj: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"invalid JSON: {exc}", file=file) from exc
    tid = default_id
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict) \
            and "train" not in obj:
        tid, obj = next(iter(obj.items()))
    elif isinstance(obj, dict) and isinstance(obj.get("id"), str) and obj["id"]:
        tid = obj["id"]
    task = parse_task(tid, obj, file=file)
    if task.test_outputs is None:
        raise InputError("training tasks need test outputs", file=file, task=tid,
                         field="test[0].output")
    return tid, task


def _grid_digest(task: Task) -> bytes:
    h = hashlib.sha1()
    for g in [g for p in task.train for g in p] + list(task.test_inputs) + list(task.test_outputs or ()):
        h.update(bytes(g.shape) + np.ascontiguousarray(g).tobytes())
    return h.digest()


class StreamSamples:
    """`per_task` augmented samples of every task of a source, built when indexed: sample i is
    transform i % per_task of task i // per_task, drawn from a stream seeded by the run's seed and
    the task's digest, so it is the same on every rank and after a restart. A sample too long for
    `max_len` loses context pairs from the front; one that cannot fit at all is None (counted)."""

    def __init__(self, source: TaskSource, fmt: TextFormat, *, seed: int, per_task: int,
                 max_len: int, keep_background: bool) -> None:
        self.source, self.fmt, self.seed, self.per_task = source, fmt, seed, per_task
        self.max_len, self.keep_background = max_len, keep_background
        self.too_long = 0  # samples met that could not fit (this process)
        self.shortened = 0  # samples met that lost context pairs (this process)

    def __len__(self) -> int:
        return len(self.source) * self.per_task

    def __getitem__(self, i: int) -> TrainSample | None:
        t, k = divmod(int(i), self.per_task)
        task = self.source.load(t)
        pairs = list(task.train) + [Pair(a, b) for a, b in zip(task.test_inputs, task.test_outputs)]
        key = int.from_bytes(self.source.refs[t].digest[:8], "little")
        rng = np.random.default_rng([self.seed, 1, key])
        tf = sample_transforms(rng, self.per_task, len(pairs), keep_background=self.keep_background)[k]
        fitted = fit_pairs(self.fmt, ordered_pairs(tf, pairs), max_len=self.max_len, overlong="none")
        if fitted is None:
            self.too_long += 1
            return None
        assert fitted.mask is not None
        self.shortened += fitted.dropped > 0
        return TrainSample(fitted.ids, fitted.mask, tf, len(pairs) - fitted.dropped - 1, fitted.dropped)


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows of at most `capacity` tokens (first fit, longest first; a longer
    item gets a row of its own). Deterministic for the same lengths."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows
