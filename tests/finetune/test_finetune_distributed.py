"""Fine-tuning across processes on CPU (gloo), streaming data and packing.

The distributed tests launch `torchrun --nproc_per_node 2` as a subprocess with a timeout and compare
its adapter with a one-process run on the same global batch: DDP (LoRA plus fully trained modules),
FSDP with packed rows (launched by `accelerate launch`), a rank that dies (the job exits non-zero
naming it) and the resume of its checkpoint in one process.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from submission.config import Config
from submission.errors import ConfigError, InputError
from submission.arc.tasks import load_dataset, tasks_to_challenges, tasks_to_solutions

ROOT = Path(__file__).resolve().parents[2]
FT = Config().with_overrides([
    "finetune.samples_per_task=2", "finetune.grad_accum=2", "finetune.checkpoint_every=2",
    "finetune.lora.r=8", "finetune.lora.alpha=16", "finetune.learning_rate=1e-3",
    "finetune.modules_to_save=embed_tokens,lm_head", "model.max_seq_len=2048"])
SETS = [f"{k}={v}" for k, v in (
    ("finetune.samples_per_task", 2), ("finetune.grad_accum", 2), ("finetune.checkpoint_every", 2),
    ("finetune.lora.r", 8), ("finetune.lora.alpha", 16), ("finetune.learning_rate", 1e-3),
    ("finetune.modules_to_save", "embed_tokens,lm_head"), ("model.max_seq_len", 2048))]
LAUNCH_TIMEOUT_S = 240  # a 2-process launch takes ~20-40 s on an idle 2-core machine
TOL = 2e-5


def small_tasks(n: int) -> dict:
    """The n ARC-AGI-2 training tasks with the fewest cells (short sequences, fast steps)."""
    tasks = load_dataset("arc-agi-2", "training")

    def cells(t):
        return sum(g.size for p in t.train for g in p) + sum(g.size for g in t.test_inputs)
    return {k: tasks[k] for k in sorted(tasks, key=lambda k: (cells(tasks[k]), k))[:n]}


def task_obj(task) -> dict:
    tid = "x"
    ch = tasks_to_challenges({tid: task})[tid]
    for i, o in enumerate(tasks_to_solutions({tid: task})[tid]):
        ch["test"][i]["output"] = o
    return ch


def write_jsonl(path: Path, tasks: dict) -> Path:
    path.write_text("".join(json.dumps(dict(task_obj(t), id=k)) + "\n" for k, t in tasks.items()))
    return path


def torchrun(args: list[str], *, script: Path | None = None, nproc: int = 2,
             accelerate: bool = False) -> tuple[subprocess.CompletedProcess, float]:
    """`finetune args` on `nproc` CPU processes, by torchrun or by `accelerate launch`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    entry = [str(script)] if script else ["-m", "submission"]
    if accelerate:  # its multi-process launcher (torch.distributed.run underneath); gloo on CPU
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(nproc), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0", *entry, "finetune", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(nproc), *entry, "finetune", *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env, cwd=ROOT)
    return proc, time.monotonic() - t0


def adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    from submission.finetune.run import latest_checkpoint

    return load_file(str(latest_checkpoint(out) / "adapter_model.safetensors"))


def assert_same_adapter(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    assert any("modules_to_save" not in k and "lora_B" in k for k in a)
    assert any("lm_head" in k for k in a) and any("embed_tokens" in k for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=TOL, rtol=1e-4), (k, float((a[k] - b[k]).abs().max()))


# ---- fast: no model, no launch ----

def test_jsonl_and_folders_are_indexed_not_loaded(tmp_path):
    from submission.finetune.data import open_sources

    tasks = small_tasks(4)
    items = list(tasks.items())
    lines = write_jsonl(tmp_path / "a.jsonl", dict(items[:3]))
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "one.json").write_text(json.dumps(task_obj(items[3][1])))
    # a single-key object line, and a blank line
    with open(folder / "more.jsonl", "w") as f:
        f.write(json.dumps({"keyed": task_obj(items[0][1])}) + "\n\n")
    src = open_sources(f"{lines},{folder}")
    assert src.ids() == [k for k, _ in items[:3]] + ["keyed", "one"]
    assert not src._memory  # only offsets and digests are held
    for i, (k, t) in enumerate(items[:3]):
        got = src.load(i)
        assert all(np.array_equal(a, b) for p, q in zip(got.train, t.train) for a, b in zip(p, q))
    assert np.array_equal(src.load(4).test_outputs[0], items[3][1].test_outputs[0])
    assert src.fingerprint() == open_sources(f"{lines},{folder}").fingerprint()
    assert src.without({"keyed"}).ids() == [k for k, _ in items[:3]] + ["one"]
    src.close()


def test_bad_jsonl_line_is_named(tmp_path):
    from submission.finetune.data import open_sources

    path = write_jsonl(tmp_path / "bad.jsonl", small_tasks(1))
    with open(path, "a") as f:
        f.write('{"id": "b", "train": [{"input": [[1]], "output": [[12]]}], "test": []}\n')
    with pytest.raises(InputError, match=r"bad.jsonl, line 2.*task b"):
        open_sources(str(path))
    with pytest.raises(InputError, match="not a dataset:split"):
        open_sources(str(tmp_path / "missing.txt"))


def test_stream_samples_are_deterministic_and_too_long_is_none(tmp_path):
    from submission.arc.formats import build_tokenizer, get_format
    from submission.finetune.data import StreamSamples, open_sources

    tok = build_tokenizer("qwen-chat", tmp_path)
    fmt = get_format("qwen-chat", tok)
    src = open_sources("arc-agi-2:training")
    a = StreamSamples(src, fmt, seed=3, per_task=4, max_len=8192, keep_background=True)
    b = StreamSamples(src, fmt, seed=3, per_task=4, max_len=8192, keep_background=True)
    assert len(a) == 4 * len(src)
    for i in (0, 5, 77, len(a) - 1):
        assert a[i].ids == b[i].ids and a[i].mask == b[i].mask
    assert a[0].ids != a[1].ids  # another transform of the same task
    tight = StreamSamples(src, fmt, seed=3, per_task=4, max_len=40, keep_background=True)
    assert tight[0] is None and tight.too_long == 1


def test_pack_rows_fills_rows_without_overflow():
    from submission.finetune.data import pack_rows

    lengths = [700, 300, 500, 1000, 200, 90, 1200]
    rows = pack_rows(lengths, 1024)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 1024 for r in rows if len(r) > 1)
    assert len(rows) == 4 and pack_rows(lengths, 1024) == rows  # 1200 | 1000 | 700+300 | 500+200+90


def test_global_batch_must_split_over_ranks(monkeypatch):
    from submission.finetune.distributed import DataParallel, dist_env, local_grad_accum

    assert local_grad_accum(16, 8) == 2 and local_grad_accum(16, 1) == 16
    with pytest.raises(ConfigError, match="grad_accum=6 is not divisible by the world size 4"):
        local_grad_accum(6, 4)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="rank must be in"):
        dist_env()
    monkeypatch.setenv("RANK", "1")
    env = dist_env()
    par = object.__new__(DataParallel)
    par.rank, par.world = env.rank, env.world
    assert list(par.shard(list(range(8)))) == [4, 5, 6, 7]


# ---- slow: a model, or torchrun launches ----

@pytest.mark.slow
def test_packed_row_gives_each_sequence_its_own_loss(tiny_model):
    """A packed row (position ids restarting, no 2D mask) equals the sequences run one by one."""
    import torch

    from submission.model.engine import load_trainer
    from submission.arc.formats import get_format
    from submission.finetune.data import StreamSamples, open_sources

    trainer, tok, _ = load_trainer(tiny_model, FT, FT.finetune)
    fmt = get_format("qwen-chat", tok)
    src = open_sources("arc-agi-2:training")
    stream = StreamSamples(src, fmt, seed=0, per_task=2, max_len=2048, keep_background=True)
    seqs = [s for s in (stream[i] for i in range(6)) if s is not None][:3]
    model = trainer.model
    model.eval()
    with torch.no_grad():
        packed = trainer._collate_packed(seqs)
        assert "attention_mask" not in packed
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]
        start, total = 0, 0.0
        n = sum(int(torch.tensor(s.mask[1:]).sum()) for s in seqs)
        n_packed = int((packed["labels"][:, 1:] != -100).sum())
        assert n == n_packed
        for s in seqs:
            one = trainer._collate([s])
            alone = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits[0]
            assert torch.allclose(logits[start:start + len(s.ids)], alone, atol=1e-4)
            total += float(model(**one, num_items_in_batch=torch.tensor(n)).loss)
            start += len(s.ids)
        loss = float(model(**packed, num_items_in_batch=torch.tensor(n)).loss)
    assert abs(loss - total) < 1e-5 * max(1.0, abs(total))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model):
    """A one-process run: 5 tasks x 2 samples, global batch 2 (5 steps; checkpoints at 2, 4, 5)."""
    from submission.finetune.run import finetune

    tmp = tmp_path_factory.mktemp("ftdist")
    data = write_jsonl(tmp / "data.jsonl", small_tasks(5))
    report = finetune(tiny_model, str(data), tmp / "one", FT, log=lambda m: None)
    assert report["steps"] == report["planned_steps"] == 5 and report["world_size"] == 1
    return tmp, data, report


@pytest.mark.slow
def test_two_processes_ddp_give_the_one_process_adapter(reference, tiny_model):
    tmp, data, one = reference
    out = tmp / "ddp"
    proc, _ = torchrun(["--model", str(tiny_model), "--data", str(data), "--out", str(out),
                        *[a for s in SETS for a in ("--set", s)]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1  # rank 0 alone reports
    two = reports[0]
    assert two["world_size"] == 2 and two["steps"] == one["steps"] and not two["fsdp"]
    assert abs(two["final_loss"] - one["final_loss"]) < 1e-4
    assert_same_adapter(adapter(tmp / "one"), adapter(out))
    assert (out / "model" / "config.json").exists() and (out / "leakage.json").exists()
    assert not list((out / "checkpoints").glob(".*tmp*")) and not list(out.glob(".*tmp*"))


@pytest.mark.slow
def test_fsdp_with_packing_under_accelerate_gives_the_same_adapter(reference, tiny_model):
    pytest.importorskip("accelerate")
    tmp, data, one = reference
    out = tmp / "fsdp"
    proc, _ = torchrun(["--model", str(tiny_model), "--data", str(data), "--out", str(out),
                        "--fsdp", "--pack", *[a for s in SETS for a in ("--set", s)]], accelerate=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][0])
    assert two["fsdp"] and two["pack"] and two["steps"] == one["steps"]
    assert_same_adapter(adapter(tmp / "one"), adapter(out))


DIE = """
import os, sys
from submission.model import train

steps = []
def step(self, *args, **kwargs):
    if os.environ["RANK"] == "1" and len(steps) == 2:  # the third step, after checkpoint step-2
        os._exit(7)
    steps.append(1)
    return real(self, *args, **kwargs)

real, train.LoRATrainer._step = train.LoRATrainer._step, step
from submission.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_dead_rank_fails_the_job_and_its_checkpoint_resumes_in_one_process(reference, tiny_model):
    from submission.finetune.run import finetune, latest_checkpoint

    tmp, data, one = reference
    out = tmp / "dies"
    script = tmp / "die.py"
    script.write_text(DIE)
    proc, seconds = torchrun(["--model", str(tiny_model), "--data", str(data), "--out", str(out),
                              "--dist-timeout", "60", *[a for s in SETS for a in ("--set", s)]],
                             script=script)
    assert proc.returncode != 0 and seconds < LAUNCH_TIMEOUT_S
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*7", proc.stderr), \
        proc.stderr[-3000:]
    assert latest_checkpoint(out).name == "step-0000002" and not (out / "model").exists()
    resumed = finetune(tiny_model, str(data), out, FT, log=lambda m: None)  # 1 process now
    assert resumed["resumed_from"].endswith("step-0000002")
    assert resumed["steps"] == one["steps"] == 5 and resumed["world_size"] == 1
    assert_same_adapter(adapter(tmp / "one"), adapter(out))
