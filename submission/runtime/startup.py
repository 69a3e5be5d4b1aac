"""What happens once per engine, before its first chunk: count what the engine fell back on at
start, measure this machine's rates (or take a calibration file), and feed them to the planner and
the stall allowance. Shared by the in-process loop (run.py) and the workers (workers.py); it runs
no task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from submission.runtime.budget import RATE_KEYS, Planner
from submission.runtime.schedule import Scheduler
from submission.events import VLLM_START_FAILED

if TYPE_CHECKING:
    from submission.model.engine import Engine


def engine_started(state: Any, engine: "Engine") -> None:
    """Count what the engine's start fell back on (vLLM that would not start), and send the
    engine's own fallback counts (re-scoring, a lost vLLM) to this run's or worker's counts."""
    engine.start_run(state.fallbacks)
    if "vllm_start_error" in engine.info:
        state.fallbacks[VLLM_START_FAILED] += 1
        state.faults.append({"stage": "engine_start", "error": engine.info["vllm_start_error"]})


def start_rates(state: Any, engine: "Engine") -> dict[str, Any] | None:
    """This machine's rates: the given calibration, or a measurement on the engine now (None when
    calibration is off). The measurement sends heartbeats like any stage."""
    if state.calibration is not None:
        return state.calibration
    if not state.cfg.budget.calibrate:
        return None
    from submission.worker.calibrate import calibrate

    return {"source": "measured", **calibrate(engine, state.cfg,
                                               beat=lambda: state.progress("calibrate", None))}


def apply_rates(planner: Planner, sched: Scheduler, cal: dict[str, Any] | None) -> None:
    """Feed a calibration into the planner, and its slowest call into the stall allowance."""
    if not cal:
        return
    planner.calibrate({key: cal.get(f"{key}_tokens_per_s") for key in RATE_KEYS})
    sched.note_gap(max(float(cal.get(k) or 0.0) for k in ("train_step_s", "generate_call_s",
                                                          "score_call_s")))


def plan_layout(model: Any, cfg: Any, gpu_gib: float, cc: tuple[int, int], *,
                vllm_installed: bool) -> tuple[Any, Any]:
    """(memory plan, config the run uses) for one GPU: plan only for what will run. With
    `sampling.backend=auto`, vLLM beside the trainer when both fit (vLLM 0.32.0 runs on compute
    capability 7.5 too, memory.py), else the transformers sampler on the trainer alone (a 15 GiB
    T4 with a 4B model: every worker of a 2 x T4 box gets its own GPU this way); the plan's notes
    say which and why. `sampling.backend=vllm`, or vLLM sizes set by hand, keep vLLM (the plan
    may then not fit). Under
    `selection.rescore_backend=auto`, a plan that re-scores in the forward pass sets it so."""
    from dataclasses import replace

    from submission.runtime.memory import plan_memory

    requested = cfg.sampling.backend
    if requested == "transformers" or (requested == "auto" and not vllm_installed):
        return plan_memory(model, cfg, gpu_gib, compute_capability=cc, sampler="transformers"), cfg
    plan = plan_memory(model, cfg, gpu_gib, compute_capability=cc)
    s = cfg.sampling
    if plan.fits or requested == "vllm" or s.gpu_memory_utilization or s.max_num_batched_tokens:
        # vLLM asked for, or sized by hand: refused with the numbers rather than replaced
        if not plan.vllm_rescore and cfg.selection.rescore_backend == "auto":
            cfg = replace(cfg, selection=replace(cfg.selection, rescore_backend="forward"))
        return plan, cfg
    alone = plan_memory(model, cfg, gpu_gib, compute_capability=cc, sampler="transformers")
    note = (f"sampling with transformers: vLLM and the trainer do not fit one {gpu_gib:.2f} GiB "
            f"GPU together ({plan.reason.split('; try')[0]})")
    return (replace(alone, notes=alone.notes + (note,)),
            replace(cfg, sampling=replace(cfg.sampling, backend="transformers")))


def plan_memory_for_run(state: Any, model: Any) -> None:
    """Before anything loads: size vLLM and the trainer for this GPU (plan_layout), stop with the
    numbers when they cannot fit, and leave the engine arguments and the plan in `state.info`
    (`state.cfg` becomes the configuration the plan chose). Without a GPU the config's values are
    used and the plan is recorded as skipped."""
    from submission.model.backends import installed
    from submission.runtime.memory import CPU_KV_CACHE_GIB, detect_gpu, unplanned_vllm_kwargs

    gpu = detect_gpu()
    if gpu is None:
        state.info["memory_plan"] = {"skipped": "no NVIDIA GPU visible"}
        state.info["engine_kwargs"] = {**unplanned_vllm_kwargs(state.cfg),
                                       "kv_cache_memory_bytes": CPU_KV_CACHE_GIB << 30}
        return
    gib, cc = gpu
    plan, state.cfg = plan_layout(model, state.cfg, gib, cc, vllm_installed=installed("vllm"))
    plan.require_fit()
    state.info["memory_plan"] = plan.to_json()
    if plan.sampler == "vllm":
        state.info["engine_kwargs"] = plan.vllm_kwargs()
        state.chunk_size = plan.max_loras
    else:
        state.info["engine_kwargs"] = unplanned_vllm_kwargs(state.cfg)


def gpu_unusable_reason(*, import_torch: bool) -> str | None:
    """Why the GPUs nvidia-smi sees cannot be used by torch (machine.unusable_gpu), or None.
    `import_torch` False (the supervisor) reads torch's CUDA build from its files; True (a worker,
    or the in-process run) asks torch.cuda.is_available() as well."""
    from submission.runtime.machine import nvidia_driver, torch_build, torch_info, unusable_gpu

    driver = nvidia_driver()
    if not driver or not driver.get("gpus"):
        return None
    if import_torch:
        t = torch_info()
        if "error" in t:
            return None  # no torch at all: building the engine says so
        return unusable_gpu(driver, t["version"], t["cuda"], t["cuda_available"])
    build = torch_build()
    return None if build is None else unusable_gpu(driver, build["version"], build["cuda"])


def stop_for_unusable_gpu(state: Any, *, import_torch: bool) -> bool:
    """True (a fault recorded) when the GPU is there but torch cannot use it: the run must not
    train and sample on the CPU for hours; its tasks keep their placeholder answers."""
    reason = gpu_unusable_reason(import_torch=import_torch)
    if reason is None:
        return False
    state.faults.append({"stage": "gpu", "error": reason})
    state.info["gpu_unusable"] = reason
    return True
