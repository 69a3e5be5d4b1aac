"""What each command does: one `cmd_*` per command (COMMANDS names them), from the parsed arguments to
the stage's call and its printed result; the config from --config, --set, --preset and the options
that stand for config fields; every command's paths checked before anything is read or written;
stdout kept for the result alone while the pipeline runs.

Does not: parse arguments (cli_args.py) or turn errors into exit codes (cli.py). The stages are
imported inside each command, so importing this loads no model library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from submission.errors import printable


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
