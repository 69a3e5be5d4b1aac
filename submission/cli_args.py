"""The command line's arguments: every command's options and help, the option groups several commands
share (config, preset, calibration, run options) and the dry-run's defaults.

Does not: read a config or any other file, or run anything (commands.py does; cli.py parses and
turns errors into exit codes).
"""

from __future__ import annotations

import argparse

from submission.environment import INPUT_ROOT, SMOKE_TASKS, WORKING

DEFAULT_DRY_RUN_TASKS = 3
# ARC-AGI-1's evaluation set: its first task (by the dataset's order) is one the program-search lane
# solves, so a newcomer's first dry-run shows a real right answer beside the untrained model's
# (the lane finds nothing on ARC-AGI-2's first three); `--dataset arc-agi-2` is the competition's set.
DEFAULT_DRY_RUN_DATASET = "arc-agi-1"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON or TOML config file (sections: model, ttt, sampling, "
                                    "selection, budget, lane)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field, e.g. --set ttt.lora.r=16 (repeatable)")
    p.add_argument("--time-budget", type=float, help="seconds for the whole run (budget.time_budget_s)")


def _add_preset(p: argparse.ArgumentParser) -> None:
    from submission.presets import NAMES

    p.add_argument("--preset", choices=NAMES,
                   help="start from a published recipe (submission/presets/NAME.toml) instead of "
                        "the defaults; --config and --set override it")


def _add_calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="FILE",
                   help="rates measured by gpu-check (calibration.json): the planner's start values "
                        "instead of measuring them when the engine starts")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes, one per GPU (budget.workers; 0 runs in this process)")
    p.add_argument("--keep-adapters", action="store_true",
                   help="keep every task's adapter (budget.keep_adapters; default: deleted once "
                        "the task's answers are written)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m submission",
                                 description="ARC test-time-training kernel: per-task LoRA TTT, "
                                             "multi-LoRA vLLM sampling, selection, submission.json.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="write a bundled dataset as Kaggle-style challenge/solution files")
    p.add_argument("--dataset", required=True, choices=["arc-agi-1", "arc-agi-2"])
    p.add_argument("--split", required=True, choices=["training", "evaluation"])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--limit", type=_positive_int, help="first N tasks only")

    p = sub.add_parser("score", help="score a submission.json against a solutions file")
    p.add_argument("--submission", required=True)
    p.add_argument("--solutions", required=True)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("validate", help="check a submission.json the way Kaggle would (exit 2 if bad)")
    p.add_argument("--submission", required=True)
    p.add_argument("--challenges", required=True)

    p = sub.add_parser("tiny-model", help="write a tiny random causal LM with a format's tokenizer")
    p.add_argument("out")
    p.add_argument("--format", default="qwen-chat", choices=["qwen-chat", "architects"])
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("run", help="TTT + sampling + selection on a challenges file -> submission.json")
    p.add_argument("--challenges", required=True)
    p.add_argument("--model", required=True, help="local model directory (nothing is downloaded)")
    p.add_argument("--out", required=True, help="submission.json path")
    p.add_argument("--workdir", required=True, help="adapters, per-task records, run.json")
    p.add_argument("--limit", type=_positive_int,
                   help="first N tasks only (the rest get placeholder answers)")
    p.add_argument("--selection", choices=["config", "all"], default="config",
                   help="all: also record the attempts of every selection policy")
    _add_calibration(p)
    _add_run_options(p)
    _add_config(p)
    _add_preset(p)

    p = sub.add_parser("dry-run", help="run on a public split and score it")
    p.add_argument("--dataset", default=DEFAULT_DRY_RUN_DATASET, choices=["arc-agi-1", "arc-agi-2"])
    p.add_argument("--split", default="evaluation", choices=["training", "evaluation"])
    p.add_argument("--limit", type=_positive_int, default=DEFAULT_DRY_RUN_TASKS)
    p.add_argument("--model", help="model directory; omitted: a tiny UNTRAINED model (pipeline check)")
    p.add_argument("--workdir", default="dry-run")
    p.add_argument("--selection", choices=["config", "all"], default="all",
                   help="all: score every selection policy side by side from one candidate pool")
    _add_calibration(p)
    _add_run_options(p)
    _add_config(p)
    _add_preset(p)

    p = sub.add_parser("report", help="one self-contained HTML page of a run's tasks, attempts and times")
    p.add_argument("workdir", help="a run's --workdir (or a dry-run's workdir)")
    p.add_argument("--solutions", help="solutions file (default: the one found beside the challenges)")
    p.add_argument("--challenges", help="challenges file (default: the one the run names or found)")
    p.add_argument("--out", help="HTML path (default: WORKDIR/report.html)")

    p = sub.add_parser("show-prompt", help="print the exact prompt text and token ids a model gets "
                                           "for one test input (reads only the tokenizer files)")
    p.add_argument("--model", required=True, help="model directory (tokenizer files suffice)")
    p.add_argument("--challenges", required=True)
    p.add_argument("--task", required=True, help="task id")
    p.add_argument("--test-index", type=int, default=0, help="which test input (default 0)")
    p.add_argument("--solutions", help="solutions file: also print the answer's text and ids")
    p.add_argument("--format", default="auto", choices=["auto", "qwen-chat", "architects"],
                   help="auto: detected from the tokenizer, as model.format=auto does")
    p.add_argument("--json", action="store_true",
                   help='print {"format", "prompt_ids", "prompt_text", "bos_id"} (+ answer_ids, answer_text)')

    p = sub.add_parser("shrink-vocab", help="keep only the format's tokens in a model's vocabulary")
    p.add_argument("--model", required=True)
    p.add_argument("--format", default="qwen-chat", choices=["qwen-chat", "architects"])
    p.add_argument("--out", required=True)

    p = sub.add_parser("finetune", help="initial fine-tune of a base model on ARC tasks (then merged)")
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="arc-agi-2:training",
                   help="comma-separated dataset:split items, folders of task files, .json task "
                        "files and .jsonl files (one task per line); read task by task")
    p.add_argument("--out", required=True, help="checkpoints/, model/ (merged), finetune.json")
    p.add_argument("--samples-per-task", type=_positive_int, help="finetune.samples_per_task")
    p.add_argument("--allow-eval", action="store_true", help="allow training on evaluation splits")
    p.add_argument("--drop-overlaps", action="store_true",
                   help="leave out training tasks that overlap the evaluation sets")
    p.add_argument("--pack", action="store_true",
                   help="pack each step's samples into rows of model.max_seq_len tokens")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the model over the ranks (FSDP) instead of DDP")
    p.add_argument("--dist-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="under torchrun: a collective waiting this long fails instead of hanging")
    _add_config(p)

    p = sub.add_parser("kaggle", help="the Kaggle notebook's entry: find inputs, run, write submission.json")
    p.add_argument("--input-root", default=INPUT_ROOT)
    p.add_argument("--working", default=WORKING)
    p.add_argument("--model", help="model directory (default: found under --input-root)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", default=None,
                      help="full run (default only when KAGGLE_IS_COMPETITION_RERUN is set)")
    mode.add_argument("--smoke", dest="full", action="store_false", help="short smoke run")
    p.add_argument("--smoke-tasks", type=_positive_int, default=SMOKE_TASKS)
    p.add_argument("--workers", type=_positive_int, help="worker processes (default: one per GPU)")
    p.add_argument("--allow-unanswered", action="store_true",
                   help="smoke run: a test input without any parseable answer is no failure "
                        "(untrained test models)")
    _add_calibration(p)
    _add_config(p)
    _add_preset(p)

    p = sub.add_parser("gpu-check", help="check this machine: versions, driver, GPUs, backends, memory "
                                         "plan; train/save/sample/score once; measure the rates")
    p.add_argument("--model", help="model directory (default: found under --input-root)")
    p.add_argument("--input-root", default=INPUT_ROOT,
                   help="where to look for the model when --model is not given")
    p.add_argument("--out", default="gpu-check", help="directory for gpu_check.json and calibration.json")
    p.add_argument("--steps", type=_positive_int, default=3, help="training steps per check adapter")
    p.add_argument("--grid-side", type=_positive_int, default=12,
                   help="side of the synthetic grids (12: ARC-sized; smaller for quick CPU checks)")
    _add_config(p)

    p = sub.add_parser("memory-plan", help="how vLLM and the trainer share a GPU (reads only "
                                           "config.json; exit 2 when nothing fits)")
    p.add_argument("--model", required=True, help="model directory (only config.json is read)")
    p.add_argument("--gpu-memory-gib", type=float, required=True,
                   help="total GPU memory in GiB (L4 ~22.5, T4 ~15, A100 40, H100 80)")
    p.add_argument("--compute-capability", default="8.9", help="e.g. 8.9 (L4), 7.5 (T4), 9.0 (H100)")
    p.add_argument("--no-trainer", action="store_true", help="the trainer runs on another GPU")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_config(p)
    return ap
