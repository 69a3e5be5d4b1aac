"""Start-up calibration: this machine's training, sampling and scoring rates in tokens per second.

A few optimizer steps, one batched generate call and one scoring call on a synthetic ARC-sized task
(3 demos of 12x12 and a 12x12 query, random colours, built from an explicit numpy Generator) give
the budget planner measured rates before the first real task finishes; the config priors are only
the fallback. Tokens are counted as the planner counts them (budget.py): training = tokens of the
samples trained on; sampling = prompt + generated tokens of every view; scoring = prompt + answer
tokens of the call. Speculative search adds two rates: sequential decode steps per second of the
generate call, and `verify_tokens_per_s`, prompt + draft tokens per second of one verification
call on prompts the generate call did not see (as a later view's first check meets them; the
planner prices verified answers at this rate).
The adapter is reset afterwards, so nothing leaks into the first real task.
This module neither plans nor writes anything but the calibration file it is asked to write.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from submission.config import Config
from submission.errors import InputError
from submission.arc.grids import Pair, Task, as_grid
from submission.answers.sampling import GenRequest, VerifyRequest, build_views
from submission.runtime.budget import RATE_KEYS as PLANNER_RATES
from submission.runtime.files import write_json_atomic
from submission.model.ttt_data import build_ttt_data

PLANNER_KEYS = {key: f"{key}_tokens_per_s" for key in PLANNER_RATES}  # Planner key -> calibration's
RATE_KEYS = tuple(PLANNER_KEYS[k] for k in ("train", "sample", "score"))  # every calibration has
# these; `verify_tokens_per_s` only where the sampler can verify
SIDE = 12  # ARC-AGI-2 grids are mostly 10-20 cells a side
DEMOS = 3
MAX_VIEWS = 8  # one generate call with this many views (or max_num_seqs if smaller)


def synthetic_task(rng: np.random.Generator, *, side: int = SIDE, demos: int = DEMOS,
                   rule: str = "fliplr", task_id: str = "calibration") -> Task:
    """A task of random-colour `side` x `side` grids whose output is the input under `rule`
    (fliplr, flipud or transpose), so that an adapter trained on it has something to learn."""
    ops = {"fliplr": np.fliplr, "flipud": np.flipud, "transpose": np.transpose}
    op = ops[rule]
    grids = [as_grid(rng.integers(0, 10, (side, side))) for _ in range(demos + 1)]
    pairs = tuple(Pair(g, as_grid(op(g))) for g in grids[:demos])
    return Task(task_id, pairs, (grids[demos],), (as_grid(op(grids[demos])),))


class _StepClock:
    """The trainer's `on_step` hook: records when each optimizer step ends, then beats."""

    def __init__(self, beat: Callable[[], None] | None) -> None:
        self.times: list[float] = []
        self.beat = beat

    def __call__(self, done: int) -> None:
        self.times.append(time.perf_counter())
        if self.beat is not None:
            self.beat()


def calibrate(engine: Any, cfg: Config, *, seed: int = 0, steps: int = 3,
              beat: Callable[[], None] | None = None, side: int = SIDE) -> dict[str, Any]:
    """Measure the three rates on `engine` (see the module docstring); `beat` is called after every
    training step and every generate or score call. The trainer's adapter is reset at the end.
    `side` shrinks the synthetic grids for quick CPU checks (rates then mean less)."""
    start = time.perf_counter()
    rng = np.random.default_rng([seed, 0xCA11])
    task = synthetic_task(rng, side=side)
    out: dict[str, Any] = {"seed": seed, "task": {"side": side, "demos": DEMOS},
                           "device": _device_name(engine), "steps": 0}
    for key in ("trainer_backend", "sampler_backend", "dtype"):
        if key in engine.info:
            out[key] = engine.info[key]
    out.update(_train(engine, cfg, task, rng, steps, beat))
    out.update(_sample(engine, cfg, task, rng, beat, side, seed))
    out.update(_score(engine, cfg, task, beat))
    out["seconds"] = time.perf_counter() - start
    return out


def _train(engine: Any, cfg: Config, task: Task, rng: np.random.Generator, steps: int,
           beat: Callable[[], None] | None) -> dict[str, Any]:
    per_step = cfg.ttt.batch_size * cfg.ttt.grad_accum
    data = build_ttt_data(task, engine.fmt, rng, max_samples=max(1, steps) * per_step,
                          max_len=cfg.model.max_seq_len, keep_background=cfg.ttt.keep_background)
    if not data.samples:
        raise ValueError(f"calibration: no training sample fits model.max_seq_len={cfg.model.max_seq_len}")
    epochs = max(cfg.ttt.epochs, math.ceil(max(1, steps) * per_step / len(data.samples)))
    section = replace(cfg.ttt, max_steps=max(1, steps), epochs=epochs)
    clock = _StepClock(beat)
    engine.trainer.reset()
    t0 = time.perf_counter()
    try:
        result = engine.trainer.train(data.samples, rng, section, on_step=clock)
    finally:
        engine.trainer.reset()  # the first real task starts from the initial adapter
        forget = getattr(engine.forward, "forget_loaded", None)
        if forget is not None:
            forget()
    done = len(clock.times)
    first = (clock.times[0] - t0) if done else result.seconds
    if done >= 2:  # steady state: the first step carries one-off warm-up (kernels, allocations)
        step_s = (clock.times[-1] - clock.times[0]) / (done - 1)
        tokens = result.tokens * (done - 1) / done
        seconds = clock.times[-1] - clock.times[0]
    else:
        step_s, tokens, seconds = first, result.tokens, first
    return {"steps": result.steps, "train_tokens": result.tokens, "train_first_step_s": first,
            "train_step_s": step_s, "train_tokens_per_s": _rate(tokens, seconds),
            "train_loss": result.final_loss}


def _sample(engine: Any, cfg: Config, task: Task, rng: np.random.Generator,
            beat: Callable[[], None] | None, side: int, seed: int) -> dict[str, Any]:
    fmt = engine.fmt
    n = max(1, min(MAX_VIEWS, cfg.sampling.max_num_seqs))
    answer = fmt.max_answer_tokens(side, side)
    views, _ = build_views(task, 0, fmt, rng, n_views=n, max_len=cfg.model.max_seq_len,
                           answer_tokens=answer, keep_background=cfg.sampling.keep_background)
    # adapter=None for every prompt: never mixed with adapter prompts in one call (vLLM bug)
    requests = [GenRequest(v.prompt, None, max(1, min(answer, cfg.model.max_seq_len - len(v.prompt))))
                for v in views]
    t0 = time.perf_counter()
    gens = engine.sampler.generate(requests)
    seconds = time.perf_counter() - t0
    if beat is not None:
        beat()
    prompt_tokens = sum(len(r.prompt) for r in requests)
    generated = sum(len(g.ids) for per in gens for g in per)
    steps = max((len(g.ids) for per in gens for g in per), default=0)
    return {"views": len(requests), "prompt_tokens": prompt_tokens / len(requests),
            "generated_tokens": generated, "expected_answer_tokens": answer,
            "generate_call_s": seconds, "sample_tokens_per_s": _rate(prompt_tokens + generated, seconds),
            "decode_steps_per_s": _rate(steps, seconds),
            **_verify(engine, cfg, task, gens, beat, seed)}


def _verify(engine: Any, cfg: Config, task: Task, gens: list, beat: Callable[[], None] | None,
            seed: int) -> dict[str, Any]:
    """The prefill-verify rate of speculative search: the generated answers checked as drafts
    in one `verify` call (top-k at every answer position) under views of their own (another
    stream: prompts the generate call did not compute), in prompt + draft tokens per second."""
    verify = getattr(engine.sampler, "verify", None)
    answers = [per[0].ids for per in gens if per and per[0].ids]
    if verify is None or not answers:
        return {}
    views, _ = build_views(task, 0, engine.fmt, np.random.default_rng([seed, 0x7E51]),
                           n_views=len(answers), max_len=cfg.model.max_seq_len,
                           answer_tokens=max(len(a) for a in answers), extra=True,
                           keep_background=cfg.sampling.keep_background)
    k = math.ceil(1.0 / max(cfg.sampling.dfs_threshold, 0.05))
    drafts = [VerifyRequest(v.prompt, tuple(a[:max(1, cfg.model.max_seq_len - len(v.prompt))]), None, k)
              for v, a in zip(views, answers)]
    t0 = time.perf_counter()
    verify(drafts)
    seconds = time.perf_counter() - t0
    if beat is not None:
        beat()
    prompts, answers_n = sum(len(d.prompt) for d in drafts), sum(len(d.answer) for d in drafts)
    return {"verify_prompt_tokens": prompts, "verify_tokens": answers_n, "verify_call_s": seconds,
            "verify_tokens_per_s": _rate(prompts + answers_n, seconds)}


def _score(engine: Any, cfg: Config, task: Task, beat: Callable[[], None] | None) -> dict[str, Any]:
    fmt = engine.fmt
    # demos reversed: a prompt the generate call did not see, so no prefix-cache hit on all of it
    prompt = fmt.encode_prompt(list(task.train)[::-1], task.test_inputs[0])
    answer = fmt.encode_answer(task.test_outputs[0])
    tokens = len(prompt) + len(answer)
    out: dict[str, Any] = {"score_tokens": tokens}
    scorers = [("", engine.sampler)]
    if engine.forward is not engine.sampler:
        scorers.append(("forward_", engine.forward))
    for prefix, scorer in scorers:
        t0 = time.perf_counter()
        logprob = scorer.score(prompt, answer, None)
        seconds = time.perf_counter() - t0
        if beat is not None:
            beat()
        out[f"score_{prefix}call_s"] = seconds
        out[f"score_{prefix}tokens_per_s"] = _rate(tokens, seconds)
        out[f"score_{prefix}logprob"] = logprob
    return out


def _rate(tokens: float, seconds: float) -> float:
    return float(tokens) / max(seconds, 1e-6)


def _device_name(engine: Any) -> str:
    device = getattr(engine.trainer, "device", None)
    if device is None or getattr(device, "type", "cpu") != "cuda":
        return "cpu"
    import torch  # here: tools/gpu_check.py and commands.py, supervisor side, import this module

    return torch.cuda.get_device_name(device)


def planner_rates(data: dict[str, Any]) -> dict[str, float]:
    """The calibration's rates under the planner's keys (train, sample, score; verify where
    measured)."""
    return {key: float(data[name]) for key, name in PLANNER_KEYS.items() if name in data}


def check_calibration(data: Any, where: str) -> dict[str, Any]:
    """`data` if it is an object with the three rates positive and finite (InputError otherwise)."""
    if not isinstance(data, dict):
        raise InputError("calibration must be a JSON object", file=where)
    for key in RATE_KEYS:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise InputError(f"expected a positive finite number of tokens per second, got {value!r}",
                             file=where, field=key)
    return data


def load_calibration(path: str | Path) -> dict[str, Any]:
    """A calibration file written by `write_calibration` (gpu-check), checked."""
    from submission.runtime.paths import regular_input

    p = Path(path)
    regular_input(p, "--calibration")  # a FIFO would block the read
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read the calibration file: {exc.strerror or exc}", file=str(p)) from exc
    except (ValueError, RecursionError) as exc:
        raise InputError(f"not a JSON calibration file: {exc}", file=str(p)) from exc
    return check_calibration(data, str(p))


def write_calibration(path: str | Path, data: dict[str, Any]) -> Path:
    """Write a calibration atomically (checked first, so a bad one is never written)."""
    check_calibration(data, str(path))
    write_json_atomic(path, json_safe(data))
    return Path(path)


def json_safe(obj: Any) -> Any:
    """`obj` as JSON can hold it: non-finite floats (a diverged loss) become None, other values
    that are not JSON types (paths, dtypes) their str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj if obj is None or isinstance(obj, (str, int, bool)) else str(obj)
