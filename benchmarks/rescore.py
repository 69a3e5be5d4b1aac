"""Re-scoring cost per test input: one pass per (augmentation, candidate) vs each prompt once.

Builds the tiny random model (CPU) with a LoRA adapter of random weights and takes the first test
input of N ARC-AGI-2 evaluation tasks spread evenly over the set, each with C candidates (the true
output and perturbed copies: a few cells changed, a row dropped, transposed), under A
augmentations. Every input is re-scored by each path:
- forward, one pass per pair: `HFSampler.score` on prompt + answer (the old path);
- forward, prefix KV: `HFSampler.score_groups`, each augmented prompt's KV computed once and every
  candidate scored against it, batched;
- vLLM, one prompt per call: `VLLMSampler.score` (the old vLLM path, no prefix-cache read);
- vLLM, batched: `VLLMSampler.score_groups`, reading each prompt from the prefix cache.
Reports per test input the tokens that went through the model and the wall time of each path, the
ratios old / new measured in this one run, and the largest score difference between the paths.
Goal at 8 augmentations x 8 candidates: at least 4x fewer tokens, scores equal within 1e-4. A
random model gives answers of hundreds of tokens scores of thousands of nats, where float32
rounding alone reaches 1e-4; so the forward paths are also compared with a float64 forward pass,
and a difference beyond 1e-4 passes only if it is within twice the old path's own float32 error.
Absolute times depend on the machine (and vLLM sets this process to one torch thread); compare
the ratios.

    python benchmarks/rescore.py [--tasks 3] [--augmentations 8] [--candidates 8] [--no-vllm]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

TOKEN_GOAL = 4.0
DIFF_GOAL = 1e-4
MAX_LEN = 8192


def candidates(truth: np.ndarray, n: int, rng: np.random.Generator) -> list:
    """`truth` and n - 1 distinct wrong answers near it."""
    from submission.arc.grids import as_grid
    from submission.answers.select import Candidate, grid_key

    grids, seen = [truth], {grid_key(as_grid(truth))}
    while len(grids) < n:
        kind = len(grids) % 3
        g = np.array(truth, dtype=np.uint8)
        if kind == 1 and g.shape[0] > 1:
            g = np.delete(g, int(rng.integers(g.shape[0])), axis=0)
        elif kind == 2:
            g = g.T.copy()
        for _ in range(int(rng.integers(1, 6))):
            g[int(rng.integers(g.shape[0])), int(rng.integers(g.shape[1]))] = int(rng.integers(10))
        if grid_key(as_grid(g)) not in seen:
            seen.add(grid_key(as_grid(g)))
            grids.append(g)
    return [Candidate(as_grid(g), n - i, set(), set(), 0.0, i, False) for i, g in enumerate(grids)]


def measure(label: str, run, counter, inputs: list, adapter, before=None) -> dict:
    """Scores of every input but the last under one path, with its tokens and seconds per input;
    the last input is a warm-up (first-call costs), not counted. `before` runs untimed before
    each input (emptying vLLM's prefix cache: no input may reuse another path's blocks)."""
    if before is not None:
        before()
    run(inputs[-1][0], adapter)
    tokens0, seconds, scores = counter(), 0.0, []
    for pairs, _ in inputs[:-1]:
        if before is not None:
            before()
        t0 = time.perf_counter()
        scores.append(run(pairs, adapter))
        seconds += time.perf_counter() - t0
    n = len(inputs) - 1
    return {"label": label, "tokens": (counter() - tokens0) / n, "seconds": seconds / n,
            "scores": [s for per in scores for s in per]}


def warm_up_task():
    """A small task: the first calls of each path (thread pools, adapter loading) run on it."""
    from submission.arc.grids import Pair, Task, as_grid

    g = as_grid(np.arange(9).reshape(3, 3) % 10)
    return Task("warm-up", (Pair(g, g), Pair(g, g)), (g,), (g,))


def float64_scores(engine, inputs: list, adapter) -> list[float]:
    """Every pair's score from one forward pass in float64 (the exact value the float32 paths
    round differently); the model is put back in its dtype after."""
    import torch

    model, fwd = engine.trainer.model, engine.forward
    dtype = model.get_input_embeddings().weight.dtype
    out = []
    model.double()
    try:
        with fwd._use(adapter), torch.no_grad():
            for pairs, _ in inputs:
                for prompt, answer in pairs:
                    full = torch.tensor([prompt + answer])
                    lp = model(input_ids=full, use_cache=False).logits[0, len(prompt) - 1:-1]
                    out.append(float(lp.log_softmax(-1).gather(1, full[0, len(prompt):, None]).sum()))
    finally:
        model.to(dtype)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--augmentations", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--no-vllm", action="store_true", help="forward-pass paths only")
    args = ap.parse_args()

    import torch

    from submission.config import Config
    from submission.model.engine import build_engine
    from submission.answers.rescore import augmented_pairs, score_pairs
    from submission.arc.tasks import load_dataset
    from submission.model.tiny import make_tiny_model
    from tests.helpers import random_adapter

    tmp = Path(tempfile.mkdtemp(prefix="rescore-bench-"))
    model = make_tiny_model(tmp / "model", "qwen-chat", seed=0, max_positions=MAX_LEN)
    cfg = Config().with_overrides([
        "ttt.lora.r=8", "ttt.lora.alpha=16", f"model.max_seq_len={MAX_LEN}", "sampling.max_loras=2",
        "sampling.backend=" + ("transformers" if args.no_vllm else "vllm")])
    engine = build_engine(model, cfg)
    adapter = random_adapter(engine, tmp / "adapter", seed=0, name="bench")
    rng = np.random.default_rng(0)
    every = list(load_dataset("arc-agi-2", "evaluation").values())
    step = max(1, len(every) // args.tasks)
    tasks = every[::step][:args.tasks] + [warm_up_task()]  # the last one is the warm-up input
    inputs = []
    for task in tasks:
        cands = candidates(task.test_outputs[0], args.candidates, rng)
        pairs, _ = augmented_pairs(task, 0, cands, engine.fmt, rng, n=args.augmentations,
                                   max_len=MAX_LEN, keep_background=True)
        inputs.append((pairs, task.id))
    fwd = engine.forward
    paths = [measure("forward, one pass per pair", lambda p, a: [fwd.score(x, y, a) for x, y in p],
                     lambda: fwd.score_tokens, inputs, adapter),
             measure("forward, prefix KV", lambda p, a: score_pairs(fwd, p, a),
                     lambda: fwd.score_tokens, inputs, adapter)]
    if engine.sampler is not fwd:
        v = engine.sampler
        cold = v.llm.reset_prefix_cache
        paths += [measure("vLLM, one prompt per call", lambda p, a: [v.score(x, y, a) for x, y in p],
                          lambda: v.score_tokens, inputs, adapter, cold),
                  measure("vLLM, batched + prefix cache", lambda p, a: score_pairs(v, p, a),
                          lambda: v.score_tokens, inputs, adapter, cold)]
    mean_prompt = np.mean([len(p) for pairs, _ in inputs[:-1] for p, _ in pairs])
    mean_answer = np.mean([len(a) for pairs, _ in inputs[:-1] for _, a in pairs])
    print(f"{len(inputs) - 1} test inputs ({', '.join(t for _, t in inputs[:-1])}), "
          f"{args.augmentations} augmentations x {args.candidates} candidates; mean prompt "
          f"{mean_prompt:.0f} tokens, mean answer {mean_answer:.0f}; tiny random model on CPU, "
          f"{torch.get_num_threads()} torch thread(s)\n")
    print(f"{'path (per test input)':<32}{'tokens':>10}{'wall s':>10}")
    for p in paths:
        print(f"{p['label']:<32}{p['tokens']:>10.0f}{p['seconds']:>10.3f}")
    exact = float64_scores(engine, inputs[:1], adapter)  # the first input's pairs: enough to see it
    err = [max(abs(a - b) for a, b in zip(p["scores"], exact)) for p in paths[:2]]
    print(f"\nforward paths vs a float64 forward pass, first input (largest |difference|): one "
          f"pass per pair {err[0]:.2g}, prefix KV {err[1]:.2g}; largest |score| "
          f"{max(map(abs, exact)):.0f}")
    ok = True
    for k, (old, new) in enumerate(zip(paths[::2], paths[1::2])):
        tok, sec = old["tokens"] / new["tokens"], old["seconds"] / new["seconds"]
        diff = max(abs(a - b) for a, b in zip(old["scores"], new["scores"]))
        print(f"{new['label']} vs {old['label']}: {tok:.2f}x fewer tokens, {sec:.2f}x less wall "
              f"time, largest score difference {diff:.2g}")
        if k == 0:  # the goal is the forward pass's
            ok &= tok >= TOKEN_GOAL and (diff <= DIFF_GOAL or diff <= 2 * err[0])
    if len(paths) == 4:
        gap = max(abs(a - b) for a, b in zip(paths[1]["scores"], paths[3]["scores"]))
        sec = paths[1]["seconds"] / paths[3]["seconds"]
        print(f"vLLM batched vs forward prefix KV: largest score difference {gap:.2g}, vLLM "
              f"{sec:.2f}x the speed (what selection.rescore_backend=auto weighs, with the order check)")
    print(f"\nforward pass, prefix KV: >= {TOKEN_GOAL:.0f}x fewer tokens, and scores within "
          f"{DIFF_GOAL:g} of the old path (or of its own float32 error):", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
