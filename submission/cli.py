"""Command line: `python -m submission <command>`. Thin: parses arguments, calls the stages, and turns
every SubmissionError into a one-line message and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from submission.errors import Interrupted, SubmissionError, printable

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
                   help="override one config field, e.g. --set ttt.r=16 (repeatable)")
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


def _calibration(args: argparse.Namespace):
    from submission.worker.calibrate import load_calibration

    return load_calibration(args.calibration) if args.calibration else None


def _config(args: argparse.Namespace):
    from submission.config import load_config

    sets = list(args.set)
    if getattr(args, "time_budget", None) is not None:
        sets.append(f"budget.time_budget_s={args.time_budget}")
    if getattr(args, "workers", None) is not None:
        sets.append(f"budget.workers={args.workers}")
    if getattr(args, "keep_adapters", False):
        sets.append("budget.keep_adapters=true")
    preset = getattr(args, "preset", None)
    if preset is not None:
        from submission.presets import read_preset

        for note in read_preset(preset)[1]:
            print(f"preset {preset}: not reproduced: {note}", file=sys.stderr)
    return load_config(args.config, sets, preset=preset)


def _explicit_keys(args: argparse.Namespace) -> frozenset[str]:
    from submission.config import explicit_keys

    return explicit_keys(args.config, args.set, preset=getattr(args, "preset", None))


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
    p.add_argument("--input-root", default="/kaggle/input")
    p.add_argument("--working", default="/kaggle/working")
    p.add_argument("--model", help="model directory (default: found under --input-root)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", default=None,
                      help="full run (default only when KAGGLE_IS_COMPETITION_RERUN is set)")
    mode.add_argument("--smoke", dest="full", action="store_false", help="short smoke run")
    p.add_argument("--smoke-tasks", type=_positive_int, default=3)
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
    p.add_argument("--input-root", default="/kaggle/input",
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # vLLM logs to stdout by default (vllm/envs.py:854); stdout is each command's result alone
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        return COMMANDS[args.command](args)
    except Interrupted as exc:  # Ctrl-C in a run: what finished is written
        _error(str(exc))
        return 130
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except SubmissionError as exc:
        _error(str(exc))
        return 2
    except RecursionError:  # a JSON input nested too deeply, read outside the checked loaders
        _error("an input file is nested too deeply")
        return 2
    except OSError as exc:  # unreadable or unwritable paths given by the user
        _error(f"{exc.filename or ''}: {exc.strerror or exc}")
        return 2


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """While the pipeline runs, file descriptor 1 is stderr: whatever libraries print to stdout
    (vLLM's log, unsloth's banner, C code, worker processes) goes there, and stdout holds only
    the command's JSON result."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _error(message: str) -> None:
    """One line on stderr, whatever task ids or paths the message holds."""
    print(f"error: {printable(message)}", file=sys.stderr)


def _check(inputs: list, outputs: list) -> None:
    """Every command's paths, before anything is read or written (paths.check_paths)."""
    from submission.runtime.paths import Spot, check_paths

    check_paths([Spot(*x) for x in inputs], [Spot(*x) for x in outputs])


def cmd_export(args) -> int:
    from submission.arc.tasks import export_kaggle, load_dataset

    _check([], [("--out", args.out, "root")])
    tasks = load_dataset(args.dataset, args.split)
    if args.limit:
        tasks = dict(list(tasks.items())[:args.limit])
    ch, sol = export_kaggle(tasks, args.out, args.split)
    print(f"wrote {len(tasks)} tasks: {ch}" + (f", {sol}" if sol else ""))
    return 0


def cmd_score(args) -> int:
    from submission.arc.scoring import load_solutions, load_submission, score_submission

    _check([("--submission", args.submission), ("--solutions", args.solutions)], [])
    report = score_submission(load_submission(args.submission), load_solutions(args.solutions))
    for task_id in report.missing:
        print(printable(f"warning: task {task_id} missing from {args.submission}; scored 0"),
              file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(f"tasks {report.tasks}  test outputs {report.test_outputs}  "
              f"score (task mean, official) {report.score_task_mean:.4f}  "
              f"score (output mean) {report.score_output_mean:.4f}")
    return 0


def cmd_validate(args) -> int:
    from submission.arc.scoring import load_submission
    from submission.arc.submit import challenge_counts, validate_submission
    from submission.arc.tasks import load_challenges

    _check([("--submission", args.submission), ("--challenges", args.challenges)], [])
    problems = validate_submission(load_submission(args.submission),
                                   challenge_counts(load_challenges(args.challenges, solutions=None)))
    for p in problems:
        print(printable(p), file=sys.stderr)
    print(f"{args.submission}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 0 if not problems else 2


def cmd_tiny_model(args) -> int:
    from submission.model.tiny import make_tiny_model

    _check([], [("OUT", args.out, "root")])
    path = make_tiny_model(args.out, args.format, seed=args.seed)
    print(f"wrote a tiny RANDOM model ({args.format}) to {path}: untrained, for pipeline checks only")
    return 0


def cmd_run(args) -> int:
    from submission.runtime.paths import check_run_paths
    from submission.runtime.run import run

    cfg = _config(args)
    calibration = _calibration(args)
    check_run_paths(args.challenges, args.model, args.out, args.workdir, config=args.config,
                    calibration=args.calibration)
    with _quiet_stdout():
        report = run(args.challenges, args.model, args.out, args.workdir, cfg, limit=args.limit,
                     all_policies=args.selection == "all", calibration=calibration)
    print(json.dumps({"submission": str(args.out), "tasks": report["tasks"],
                      "fallbacks": report["fallbacks"], "seconds": round(report["seconds"], 1)}))
    return 0


def cmd_dry_run(args) -> int:
    from submission.tools.dry_run import dry_run
    from submission.answers.select import POLICIES

    work = Path(args.workdir)
    _check([("--model", args.model, "dir"), ("--config", args.config),
            ("--calibration", args.calibration)],
           [("--workdir", work, "root"), ("--workdir", work / "data", "dir", "data/ in"),
            ("--workdir", work / "run", "dir", "run/ in"),
            ("--workdir", None if args.model else work / "tiny-model", "dir", "tiny-model/ in")]
           + [("--workdir", work / name, "file", f"{name} in") for name in
              ("submission.json", "score.json", *(f"submission.{p}.json" for p in POLICIES))])
    cfg = _config(args)
    with _quiet_stdout():
        result = dry_run(args.dataset, args.split, args.limit, args.model, Path(args.workdir), cfg,
                         all_policies=args.selection == "all",
                         log=lambda m: print(m, file=sys.stderr),
                         calibration=_calibration(args), explicit=_explicit_keys(args))
    print(json.dumps(result))
    return 0


def cmd_show_prompt(args) -> int:
    from submission.tools.show_prompt import format_text, show_prompt

    _check([("--model", args.model, "dir"), ("--challenges", args.challenges),
            ("--solutions", args.solutions)], [])
    result, warnings = show_prompt(args.model, args.challenges, args.task,
                                   test_index=args.test_index, solutions=args.solutions,
                                   format_name=args.format)
    for w in warnings:
        print(f"warning: {printable(w)}", file=sys.stderr)
    print(json.dumps(result) if args.json else
          format_text(result, model_dir=args.model, task_id=args.task, test_index=args.test_index))
    return 0


def cmd_shrink_vocab(args) -> int:
    from submission.model.vocab import shrink_vocab

    _check([("--model", args.model, "dir")], [("--out", args.out, "dir")])
    report = shrink_vocab(args.model, args.format, args.out)
    print(json.dumps(report))
    return 0


def cmd_finetune(args) -> int:
    from submission.finetune.run import finetune
    from submission.runtime.paths import check_finetune_paths

    check_finetune_paths(args.model, args.out, config=args.config, data=args.data)
    if args.samples_per_task:
        args.set.append(f"finetune.samples_per_task={args.samples_per_task}")
    report = finetune(args.model, args.data, args.out, _config(args), allow_eval=args.allow_eval,
                      drop_overlaps=args.drop_overlaps, pack=args.pack, fsdp=args.fsdp,
                      dist_timeout_s=args.dist_timeout, log=lambda m: print(m, file=sys.stderr))
    if report.get("model") is not None:  # rank 0 (or the only process) reports
        print(json.dumps(report))
    return 0


def cmd_kaggle(args) -> int:
    from submission.tools.kaggle import kaggle_config, resolve, smoke_verdict
    from submission.runtime.paths import check_run_paths
    from submission.runtime.run import run

    setup = resolve(input_root=args.input_root, working=args.working, model=args.model,
                    full=args.full, smoke_tasks=args.smoke_tasks, workers=args.workers)
    check_run_paths(setup.challenges, setup.model, setup.out, setup.workdir, setup.scratch,
                    config=args.config, calibration=args.calibration)
    cfg = kaggle_config(_config(args), setup, budget_s=args.time_budget, explicit=_explicit_keys(args))
    calibration = _calibration(args)
    print(f"{'FULL' if setup.full else 'SMOKE'} run: {setup.challenges} with {setup.model}, "
          f"{cfg.budget.workers} worker(s), budget {cfg.budget.time_budget_s:.0f} s", file=sys.stderr)
    with _quiet_stdout():
        report = run(setup.challenges, setup.model, setup.out, setup.workdir, cfg,
                     limit=setup.limit, scratch=setup.scratch, calibration=calibration,
                     strict_load=not setup.full)
    print(json.dumps({"submission": str(setup.out), "full": setup.full, "tasks": report["tasks"],
                      "fallbacks": report["fallbacks"], "seconds": round(report["seconds"], 1)}))
    if setup.full:
        return 0  # the competition rerun never fails on a submission that validates
    problems = smoke_verdict(report, require_answers=not args.allow_unanswered)
    if problems:
        print(f"SMOKE RUN FAILED: {len(problems)} problem(s) in {setup.workdir / 'run.json'}:",
              file=sys.stderr)
        for p in problems:
            print(f"  {printable(p)}", file=sys.stderr)
        return 1
    print("smoke run: every stage worked", file=sys.stderr)
    return 0


def cmd_gpu_check(args) -> int:
    from submission.errors import InputError
    from submission.tools.gpu_check import gpu_check
    from submission.tools.kaggle import find_model

    out = Path(args.out)
    _check([("--model", args.model, "dir"), ("--config", args.config)],
           [("--out", out, "root"), ("--out", out / "gpu_check.json", "file", "gpu_check.json in"),
            ("--out", out / "calibration.json", "file", "calibration.json in")])
    model = args.model or find_model(args.input_root)
    if model is None:
        raise InputError(f"no model directory (config.json + *.safetensors + tokenizer.json) under "
                         f"{args.input_root}; pass --model")
    report = gpu_check(model, _config(args), out_dir=args.out, steps=args.steps, side=args.grid_side,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({"ok": report["ok"], "failed": report["failed"], "warnings": report["warnings"],
                      "report": str(Path(args.out) / "gpu_check.json"),
                      "calibration": str(Path(args.out) / "calibration.json")
                      if (Path(args.out) / "calibration.json").exists() else None}))
    return 0 if report["ok"] else 1


def cmd_report(args) -> int:
    from submission.tools.report import write_report

    path = write_report(args.workdir, solutions=args.solutions, out=args.out,
                        challenges=args.challenges)
    print(f"wrote {path}")
    return 0


def cmd_memory_plan(args) -> int:
    from submission.errors import InputError
    from submission.runtime.memory import format_plan, plan_memory

    _check([("--model", args.model, "dir"), ("--config", args.config)], [])
    major, _, minor = args.compute_capability.partition(".")
    if not (major.isdigit() and (minor.isdigit() or not minor)):
        raise InputError(f"expected MAJOR.MINOR such as 8.9, got {args.compute_capability!r}",
                         field="--compute-capability")
    cc = (int(major), int(minor or 0))
    if args.no_trainer:
        plan = plan_memory(args.model, _config(args), args.gpu_memory_gib, compute_capability=cc,
                           trainer_on_same_gpu=False)
    else:  # the layout `run` would choose on that card, with vLLM installed there
        from submission.runtime.startup import plan_layout

        plan, _ = plan_layout(args.model, _config(args), args.gpu_memory_gib, cc, vllm_installed=True)
    print(json.dumps(plan.to_json()) if args.json else format_plan(plan))
    if not plan.fits:
        print(f"error: {plan.reason}", file=sys.stderr)
    return 0 if plan.fits else 2


COMMANDS = {"export": cmd_export, "score": cmd_score, "validate": cmd_validate,
            "tiny-model": cmd_tiny_model, "run": cmd_run, "dry-run": cmd_dry_run,
            "kaggle": cmd_kaggle, "shrink-vocab": cmd_shrink_vocab,
            "show-prompt": cmd_show_prompt, "finetune": cmd_finetune,
            "report": cmd_report, "memory-plan": cmd_memory_plan, "gpu-check": cmd_gpu_check}


def entry() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
