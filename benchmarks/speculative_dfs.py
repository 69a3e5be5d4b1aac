"""Answer search cost: today's DFS against speculative DFS on the same views, in one run.

Takes the first test input of the N ARC-AGI-2 evaluation tasks with the shortest prompts, V views each,
and searches each input both ways on the tiny model served by vLLM (CPU), with two kinds of
adapters:
- agreeing: TTT of the tiny model on a synthetic family built from the task itself (its demos
  and its test input, every output replaced by one fixed background square, invariant under the
  views' augmentations), so views answer the same grid, as a trained model's views mostly do.
  The square is --side cells a side (5 by default; at 2: the tiny model, 2 layers of width 64, learns
  to end a small square after a prompt of several hundred tokens; at 4 epochs it did not even
  learn that, and every view decoded to the token budget without an answer, so nothing could be
  drafted; it trains on, up to MAX_ROUNDS rounds of --epochs, until its first view answers the
  square, and an input whose adapter never does is shown but left out of the agreeing total).
  The share of views whose greedy answer is the square is printed: it is the agreement the
  ratios are measured at;
- disagreeing: random LoRA weights (views answer noise, each its own).
Reports per test input and in total: sequential steps (per generate call its longest
generation, plus one per verify call: with unlimited batch width, the latency, which waves of
views lengthen and drafts shorten), decoded tokens, prefilled tokens (prompt and verification
tokens computed, prefix-cache hits excluded), wall time on this CPU, and the same counts priced
on an L4 serving Qwen3-4B (`l4_model_s`, a roofline: a decode step or a verify call reads the
weights once and a decode step, per sequence, the KV cache of everything it attends to, at the
memory bandwidth; a prefilled token costs 2 FLOPs per parameter at peak compute), with the
ratios today / speculative. On a GPU whose batch is full (many views of many tasks, long prompts)
decoded tokens and their KV reads are the cost, which the roofline prices. The answers of both
searches are compared (they must be equal). Absolute times depend on the machine; compare the
ratios. Goals: >= 3x fewer sequential steps and decoded tokens with agreeing adapters, no loss
with disagreeing.

    python benchmarks/speculative_dfs.py [--tasks 3] [--views 16] [--threshold 0.17] [--samples 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

MAX_LEN = 8192
GOAL = 3.0
MAX_ROUNDS = 4  # rounds of --epochs the agreeing adapter trains at most
KEYS = ("steps", "decoded_tokens", "prefilled_tokens", "wall_s", "l4_model_s")
# The roofline's machine and model: L4 spec sheet (300 GB/s GDDR6, 121 TFLOPS dense bf16);
# Qwen3-4B's config.json (36 layers, 8 KV heads of 128, bf16) and its ~4.0e9 parameters.
L4_BYTES_S, L4_FLOPS = 300e9, 121e12
PARAMS = 4.0e9
WEIGHT_BYTES = 2 * PARAMS
KV_BYTES = 36 * 8 * 128 * 2 * 2  # per token: layers x KV heads x head dim x (K, V) x bf16


def l4_seconds(steps: int, context_tokens: int, prefilled: int) -> float:
    """The roofline price of a search's counts on an L4 with Qwen3-4B (module docstring)."""
    return ((steps * WEIGHT_BYTES + context_tokens * KV_BYTES) / L4_BYTES_S
            + prefilled * 2 * PARAMS / L4_FLOPS)


def family_task(task, side: int):
    """`task` with every output replaced by the background square, its test inputs among the
    demos (TTT then sees prompts as long as the views')."""
    from submission.arc.grids import Pair, as_grid

    square = as_grid(np.zeros((side, side), dtype=np.uint8))
    inputs = [p.input for p in task.train] + list(task.test_inputs)
    return replace(task, train=tuple(Pair(g, square) for g in inputs),
                   test_outputs=tuple(square for _ in task.test_inputs))


def measure(engine, views, reqs, frames, args) -> tuple[dict, list]:
    from submission.answers.dfs import SearchStats
    from submission.answers.search import search

    v = engine.sampler
    v.llm.reset_prefix_cache()  # no run reuses another's blocks
    stats = SearchStats()
    p0, t0 = v.prefill_tokens + v.verify_tokens, time.perf_counter()
    gens = search(v, reqs, threshold=args.threshold, max_paths=args.max_paths,
                  stop_ids=engine.fmt.stop_token_ids, frames=frames, stats=stats)
    prefilled = v.prefill_tokens + v.verify_tokens - p0
    steps = stats.decode_steps + stats.verify_calls
    row = {"steps": steps, "decoded_tokens": stats.decoded_tokens,
           "prefilled_tokens": prefilled, "wall_s": time.perf_counter() - t0,
           "l4_model_s": l4_seconds(steps, stats.decode_context_tokens, prefilled)}
    return row, [[tuple(g.ids) for g in x] for x in gens]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--threshold", type=float, default=0.17)
    ap.add_argument("--max-paths", type=int, default=8)
    ap.add_argument("--samples", type=int, default=32, help="TTT samples of the agreeing adapters")
    ap.add_argument("--epochs", type=int, default=16, help="TTT epochs of the agreeing adapters")
    ap.add_argument("--side", type=int, default=5, help="side of the agreeing family's square answer")
    args = ap.parse_args()

    from submission.config import Config
    from submission.model.engine import build_engine
    from submission.worker.sampling_stage import view_frames
    from submission.answers.sampling import GenRequest, answer_budget, build_views
    from submission.arc.tasks import load_dataset
    from submission.model.tiny import make_tiny_model
    from tests.helpers import random_adapter
    from submission.model.ttt_data import build_ttt_data

    tmp = Path(tempfile.mkdtemp(prefix="spec-bench-"))
    model = make_tiny_model(tmp / "model", "qwen-chat", seed=0, max_positions=MAX_LEN)
    cfg = Config().with_overrides([
        "ttt.lora.r=8", "ttt.lora.alpha=16", f"model.max_seq_len={MAX_LEN}", "sampling.max_loras=2",
        "sampling.backend=vllm", "ttt.learning_rate=1e-2", f"ttt.epochs={args.epochs}", "ttt.grad_accum=1"])
    engine = build_engine(model, cfg)
    fmt = engine.fmt
    # the shortest prompts of the evaluation set: CPU time (TTT and decoding) grows with them
    every = sorted(load_dataset("arc-agi-2", "evaluation").values(),
                   key=lambda t: len(fmt.encode_prompt(list(t.train), t.test_inputs[0])))
    tasks = every[:args.tasks]
    rows: dict[str, list] = {"agreeing": [], "disagreeing": []}
    equal = True
    for n, task in enumerate(tasks):
        fam = family_task(task, args.side)
        rng = np.random.default_rng(n)
        data = build_ttt_data(fam, fmt, rng, max_samples=args.samples, max_len=MAX_LEN)
        views, _ = build_views(task, 0, fmt, np.random.default_rng(n), n_views=args.views,
                               max_len=MAX_LEN, answer_tokens=answer_budget(task, 0, fmt))
        budget = answer_budget(task, 0, fmt)
        frames = view_frames(views, fmt)
        square = tuple((0,) * args.side for _ in range(args.side))
        engine.trainer.reset()
        learned = False
        for rounds in range(1, MAX_ROUNDS + 1):  # train on until the first view answers the family
            engine.trainer.train(data.samples, rng, cfg.ttt)
            trained = engine.new_adapter(f"fam{n}-{rounds}", engine.trainer.save(tmp / f"fam{n}-{rounds}"))
            first = engine.sampler.generate([GenRequest(views[0].prompt, trained, budget)])[0][0]
            learned = frames[0].to_key(first.ids) == square
            if learned:
                break
        print(f"{task.id}: agreeing adapter {'learned' if learned else 'did NOT learn'} the family "
              f"in {rounds} x {args.epochs} epochs", flush=True)
        noise = random_adapter(engine, tmp / f"rand{n}", seed=n, name=f"rand{n}")
        for kind, adapter in (("agreeing", trained), ("disagreeing", noise)):
            reqs = [GenRequest(v.prompt, adapter, budget) for v in views]
            measure(engine, views, reqs, None, args)  # warm-up: the adapter loaded, the batch shape run
            plain, a = measure(engine, views, reqs, None, args)
            spec, b = measure(engine, views, reqs, frames, args)
            equal &= a == b
            agree = np.mean([bool(x) and f.to_key(list(x[0])) == square for x, f in zip(a, frames)])
            rows[kind].append((task.id, np.mean([len(v.prompt) for v in views]), agree, plain, spec,
                               learned or kind == "disagreeing"))
    print(f"{len(tasks)} ARC-AGI-2 evaluation test inputs x {args.views} views, DFS p >= "
          f"{args.threshold}, <= {args.max_paths} paths; tiny model, vLLM on CPU\n")
    ok = equal
    for kind, rs in rows.items():
        print(f"{kind} adapters: today / speculative")
        print(f"{'input':<10}{'prompt':>8}{'agree':>7}" + "".join(f"{k:>24}" for k in KEYS))
        tot = {k: [0.0, 0.0] for k in KEYS}
        for tid, plen, agree, p, s, counted in rs:
            cells = []
            for k in KEYS:
                tot[k][0] += p[k] if counted else 0.0
                tot[k][1] += s[k] if counted else 0.0
                cells.append(f"{p[k]:.5g}/{s[k]:.5g} ({p[k] / max(s[k], 1e-9):.2f}x)")
            note = "" if counted else "  (adapter did not learn the family: not in the total)"
            print(f"{tid:<10}{plen:>8.0f}{agree:>7.2f}" + "".join(f"{c:>24}" for c in cells) + note)
        ratios = {k: t[0] / max(t[1], 1e-9) for k, t in tot.items()}
        n_in = sum(1 for r in rs if r[-1])
        print(f"{f'total ({n_in})':<25}" + "".join(f"{f'{ratios[k]:.2f}x':>24}" for k in KEYS) + "\n")
        if not n_in:
            ok = False
        if kind == "agreeing":
            ok &= ratios["decoded_tokens"] >= GOAL and ratios["steps"] >= GOAL
        else:
            ok &= ratios["decoded_tokens"] >= 1.0 and ratios["steps"] >= 1.0
    print("answers of both searches equal on every view:", equal)
    print(f">= {GOAL:.0f}x fewer steps and decoded tokens agreeing, no more disagreeing:",
          "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
