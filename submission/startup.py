"""What happens once per engine, before its first chunk: count what the engine fell back on at
start, measure this machine's rates (or take a calibration file), and feed them to the planner and
the stall allowance. Shared by the in-process loop (run.py) and the workers (workers.py); it runs
no task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .budget import Planner
from .schedule import Scheduler

if TYPE_CHECKING:
    from .engine import Engine


def engine_started(state: Any, engine: "Engine") -> None:
    """Count what the engine's start fell back on (vLLM that would not start), and send the
    engine's own fallback counts (re-scoring, a lost vLLM) to this run's or worker's counts."""
    engine.fallbacks = state.fallbacks
    if "vllm_start_error" in engine.info:
        state.fallbacks["vllm_start_failed"] += 1
        state.faults.append({"stage": "engine_start", "error": engine.info["vllm_start_error"]})


def start_rates(state: Any, engine: "Engine") -> dict[str, Any] | None:
    """This machine's rates: the given calibration, or a measurement on the engine now (None when
    calibration is off). The measurement sends heartbeats like any stage."""
    if state.calibration is not None:
        return state.calibration
    if not state.cfg.budget.calibrate:
        return None
    from .calibrate import calibrate

    return {"source": "measured", **calibrate(engine, state.cfg,
                                               beat=lambda: state.progress("calibrate", None))}


def apply_rates(planner: Planner, sched: Scheduler, cal: dict[str, Any] | None) -> None:
    """Feed a calibration into the planner, and its slowest call into the stall allowance."""
    if not cal:
        return
    planner.calibrate({"train": cal.get("train_tokens_per_s"), "sample": cal.get("sample_tokens_per_s"),
                       "score": cal.get("score_tokens_per_s")})
    sched.note_gap(max(float(cal.get(k) or 0.0) for k in ("train_step_s", "generate_call_s",
                                                          "score_call_s")))


def plan_memory_for_run(state: Any, model: Any) -> None:
    """Before anything loads: size vLLM and the trainer for this GPU (memory.py), stop with the
    numbers when they cannot fit, and leave the engine arguments and the plan in `state.info`.
    Without a GPU (or vLLM) the config's values are used and the plan is recorded as skipped."""
    from .backends import installed
    from .memory import detect_gpu, plan_memory, unplanned_vllm_kwargs

    cfg = state.cfg
    gpu = detect_gpu()
    if gpu is None or cfg.sampling.backend == "transformers" or not installed("vllm"):
        why = "no NVIDIA GPU visible" if gpu is None else "vLLM not used"
        state.info["memory_plan"] = {"skipped": why}
        state.info["engine_kwargs"] = unplanned_vllm_kwargs(cfg)
        return
    gib, cc = gpu
    plan = plan_memory(model, cfg, gib, compute_capability=cc).require_fit()
    state.info["memory_plan"] = plan.to_json()
    state.info["engine_kwargs"] = plan.vllm_kwargs()
    state.chunk_size = plan.max_loras
