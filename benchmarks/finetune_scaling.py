"""Fine-tuning throughput at 1 and 2 processes on CPU, and what packing does to a step's layout.

Part 1 runs the real `finetune` command under `torchrun --standalone --nproc_per_node N` for N = 1
and 2 (gloo; one thread per process, so N processes use N cores) on a small random Qwen3 model and
the same data and global batch, and reads the samples per second each run measured inside its
training loop (start-up, data indexing and the merge excluded). The ratio of the two is the
scaling on this machine; on a machine shared with other work it is a lower bound.

Part 2 needs no model: for ARC-AGI-2 training samples under random augmentations (real lengths,
`model.max_seq_len` 8192) it lays out optimizer steps of `batch_size x grad_accum` samples as
padded micro-batches and as packed rows, and reports forward passes per step, tokens per pass and
the share of padding. The update is the same either way (tests/finetune/test_finetune_distributed.py).

    python benchmarks/finetune_scaling.py [--tasks 24] [--hidden 256] [--skip-launch]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def launch(nproc: int, model: Path, data: Path, out: Path, sets: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), "-m", "submission", "finetune", "--model", str(model), "--data", str(data),
           "--out", str(out), *[a for s in sets for a in ("--set", s)]]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"finetune on {nproc} process(es) failed:\n{proc.stderr[-3000:]}")
    report = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    report["wall_s"] = time.monotonic() - t0
    return report


def scaling(args: argparse.Namespace) -> None:
    from submission.arc.tasks import load_dataset, tasks_to_challenges, tasks_to_solutions
    from submission.model.tiny import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="ft-scaling-"))
    model = make_tiny_model(work / "model", "qwen-chat", hidden_size=args.hidden, layers=args.layers,
                            heads=4, kv_heads=2)
    tasks = dict(list(load_dataset("arc-agi-2", "training").items())[:args.tasks])
    data = work / "data.jsonl"
    with open(data, "w") as f:
        for tid, t in tasks.items():
            ch = tasks_to_challenges({tid: t})[tid]
            for i, o in enumerate(tasks_to_solutions({tid: t})[tid]):
                ch["test"][i]["output"] = o
            f.write(json.dumps(dict(ch, id=tid)) + "\n")
    sets = ["finetune.samples_per_task=2", f"finetune.grad_accum={args.grad_accum}",
            "finetune.checkpoint_every=100000", "finetune.lora.r=16", "finetune.lora.alpha=16",
            f"model.max_seq_len={args.max_len}"]
    runs = {n: launch(n, model, data, work / f"out{n}", sets) for n in (1, 2)}
    print(f"\nfinetune on CPU (gloo, 1 thread per process): {len(tasks)} ARC-AGI-2 tasks x 2 samples, "
          f"global batch {args.grad_accum}, Qwen3 hidden {args.hidden} x {args.layers} layers")
    print(f"{'processes':>10}{'steps':>7}{'samples/s':>11}{'tokens/s':>10}{'final loss':>12}{'wall s':>8}")
    for n, r in runs.items():
        print(f"{n:>10}{r['steps']:>7}{r['samples_per_s']:>11.2f}{r['tokens_per_s']:>10.0f}"
              f"{r['final_loss']:>12.4f}{r['wall_s']:>8.1f}")
    print(f"samples/s ratio, 2 processes / 1: {runs[2]['samples_per_s'] / runs[1]['samples_per_s']:.2f}"
          f" (ideal 2.00; same losses: {abs(runs[1]['final_loss'] - runs[2]['final_loss']) < 1e-3})")


def layout(args: argparse.Namespace) -> None:
    import numpy as np

    from submission.arc.formats import build_tokenizer, get_format
    from submission.finetune.data import StreamSamples, open_sources, pack_rows

    fmt = get_format("qwen-chat", build_tokenizer("qwen-chat", Path(tempfile.mkdtemp())))
    src = open_sources("arc-agi-2:training")
    stream = StreamSamples(src, fmt, seed=0, per_task=2, max_len=8192, keep_background=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(stream))[:args.layout_samples]
    lengths = [len(s.ids) for s in (stream[i] for i in order) if s is not None]
    per_step = args.batch_size * args.layout_accum
    steps = [lengths[i:i + per_step] for i in range(0, len(lengths) - per_step + 1, per_step)]
    print(f"\nstep layout, {len(steps)} steps of {per_step} ARC-AGI-2 training samples "
          f"(mean {np.mean(lengths):.0f} tokens, max {max(lengths)}), max_seq_len 8192")
    print(f"{'layout':<28}{'passes/step':>12}{'tokens/pass':>12}{'padding':>9}{'tokens/step':>12}")
    real = np.mean([sum(s) for s in steps])
    for bs in sorted({1, args.batch_size}):
        passes, padded = [], []
        for s in steps:
            micro = [s[i:i + bs] for i in range(0, len(s), bs)]
            passes.append(len(micro))
            padded.append(sum(len(m) * max(m) for m in micro))
        pad = 1 - real / np.mean(padded)
        print(f"{f'unpacked, batch_size {bs}':<28}{np.mean(passes):>12.1f}"
              f"{np.mean(padded) / np.mean(passes):>12.0f}{pad:>9.1%}{real:>12.0f}")
    rows = [pack_rows(s, 8192) for s in steps]
    print(f"{'packed into 8192-token rows':<28}{np.mean([len(r) for r in rows]):>12.1f}"
          f"{real / np.mean([len(r) for r in rows]):>12.0f}{0.0:>9.1%}{real:>12.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=8, help="global batch (batch_size 1)")
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=4, help="layout: sequences per padded micro-batch")
    ap.add_argument("--layout-accum", type=int, default=4, help="layout: micro-batches per step")
    ap.add_argument("--layout-samples", type=int, default=2000)
    ap.add_argument("--skip-launch", action="store_true", help="only the layout part")
    args = ap.parse_args()
    if not args.skip_launch:
        scaling(args)
    layout(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
