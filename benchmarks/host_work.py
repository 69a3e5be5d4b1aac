"""Host-side (CPU, non-model) work per task on the 120 ARC-AGI-2 evaluation tasks.

Per task and test input, with the qwen-chat reduced tokenizer:
  (a) views:   format + tokenize 16 augmented prompts (`sample.build_views`, max_len 8192, answer
               budget from `sample.answer_budget`);
  (b) answers: parse and invert 64 'generated' answers (per view: the true output encoded under the
               view's transform, one with a changed cell, one cut short, one random-token string) with
               `sample.collect_samples`, then merge them with `select.pool`.
The model-side time (prefill, decoding) is not included. Goal: < 50 ms of host work per task (mean).

Because absolute milliseconds depend on the machine, the script also times a reference operation in
the same process (json.dumps of the task's challenge object) and reports host time / reference time.

Usage: python benchmarks/host_work.py [--tasks N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from submission.arc.formats import build_tokenizer, get_format  # noqa: E402
from submission.arc.grids import grids_equal  # noqa: E402
from submission.answers.sampling import answer_budget, build_views, collect_samples  # noqa: E402
from submission.answers.select import pool  # noqa: E402
from submission.arc.tasks import load_dataset, tasks_to_challenges  # noqa: E402

N_VIEWS, MAX_LEN, PER_VIEW, GOAL_MS, REF_REPEAT = 16, 8192, 4, 50.0, 5


def fake_generations(fmt, view, truth, rng):
    """PER_VIEW (ids, logprob) answers for one view: exact, one wrong cell, cut short, random."""
    g = view.transform.apply_grid(truth)
    wrong = g.copy()
    r, c = int(rng.integers(g.shape[0])), int(rng.integers(g.shape[1]))
    wrong[r, c] = (int(wrong[r, c]) + 1 + int(rng.integers(9))) % 10
    exact = fmt.encode_answer(g)
    cut = exact[: max(1, len(exact) // 2)]
    noise = rng.integers(0, len(fmt.piece_of), size=len(exact)).tolist()
    return [(exact, -0.5), (fmt.encode_answer(wrong), -3.0), (cut, -6.0), (noise, -40.0)]


def run_task(task, fmt, rng):
    """(ms views, ms answers, top candidate is the truth for every test input)."""
    t_views = t_answers = 0.0
    ok = True
    for i in range(task.n_test):
        t0 = time.perf_counter()
        views, _ = build_views(task, i, fmt, rng, n_views=N_VIEWS, max_len=MAX_LEN,
                               answer_tokens=answer_budget(task, i, fmt))
        t_views += time.perf_counter() - t0
        gens = [fake_generations(fmt, v, task.test_outputs[i], rng) for v in views]  # untimed
        t0 = time.perf_counter()
        samples = [s for v, g in zip(views, gens) for s in collect_samples(v, g, fmt)]
        cands = pool(samples)
        t_answers += time.perf_counter() - t0
        ok &= len(samples) == N_VIEWS * PER_VIEW and grids_equal(cands[0].grid, task.test_outputs[i])
    return 1e3 * t_views, 1e3 * t_answers, ok


def reference_ms(challenge: dict) -> float:
    """Median time of json.dumps of the task's challenge object."""
    times = []
    for _ in range(REF_REPEAT):
        t0 = time.perf_counter()
        json.dumps(challenge)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def p90(xs):
    return float(np.percentile(xs, 90))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=120, help="first N evaluation tasks (default 120)")
    args = ap.parse_args(argv)
    if args.tasks < 1:
        ap.error("--tasks must be >= 1")

    fmt = get_format("qwen-chat", build_tokenizer("qwen-chat"))
    tasks = list(load_dataset("arc-agi-2", "evaluation").values())[: args.tasks]
    challenges = tasks_to_challenges({t.id: t for t in tasks})
    rng = np.random.default_rng(0)
    run_task(tasks[0], fmt, rng)  # warm-up (imports, caches, numpy dispatch)
    reference_ms(challenges[tasks[0].id])

    views, answers, refs, bad = [], [], [], []
    for task in tasks:
        a, b, ok = run_task(task, fmt, rng)
        views.append(a)
        answers.append(b)
        refs.append(reference_ms(challenges[task.id]))
        if not ok:
            bad.append(task.id)
    totals = [a + b for a, b in zip(views, answers)]
    n_inputs = sum(t.n_test for t in tasks)
    mean_total = statistics.fmean(totals)

    print(f"host work per task: {len(tasks)} ARC-AGI-2 evaluation tasks, {n_inputs} test inputs, "
          f"qwen-chat reduced tokenizer")
    print(f"per test input: {N_VIEWS} views (max_len {MAX_LEN}), "
          f"{N_VIEWS * PER_VIEW} generated answers parsed + inverted + pooled\n")
    print(f"{'stage':<44}{'mean ms':>9}{'p90 ms':>9}{'max ms':>9}{'share':>8}")
    rows = [("(a) views: format + tokenize", views),
            ("(b) answers: parse + invert + pool", answers), ("total host work", totals)]
    for label, xs in rows:
        share = statistics.fmean(xs) / mean_total if mean_total else 0.0
        print(f"{label:<44}{statistics.fmean(xs):>9.2f}{p90(xs):>9.2f}{max(xs):>9.2f}"
              f"{share:>8.0%}")
    print(f"{'reference: json.dumps(task challenge object)':<44}{statistics.fmean(refs):>9.3f}"
          f"{p90(refs):>9.3f}{max(refs):>9.3f}")
    ratio = mean_total / statistics.fmean(refs)
    per_task_ratio = statistics.median(t / r for t, r in zip(totals, refs))
    print(f"\nratio host / reference (same process): {ratio:.1f}x of the mean, "
          f"{per_task_ratio:.1f}x median per task")
    print("  (absolute ms vary with the machine; compare this ratio across machines instead)")
    if bad:
        print(f"sanity: the true answer was NOT the top candidate in {len(bad)} task(s): "
              f"{', '.join(bad[:5])}")
    else:
        print("sanity: the true answer is the top pooled candidate for every test input")
    verdict = "PASS" if mean_total < GOAL_MS else "FAIL"
    print(f"goal: mean host work < {GOAL_MS:.0f} ms per task: {verdict} "
          f"(mean {mean_total:.2f} ms, p90 {p90(totals):.2f} ms, max {max(totals):.2f} ms; "
          f"{sum(t >= GOAL_MS for t in totals)} task(s) over {GOAL_MS:.0f} ms)")
    return 0 if verdict == "PASS" and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
