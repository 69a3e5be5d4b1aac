"""torch settings that `import unsloth` changes process-wide, and their reset around vLLM's start
(vLLM compiles its model in the trainer's process)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch._dynamo.config
import torch._inductor.config

# What `import unsloth` sets process-wide (unsloth_zoo/patching_utils.py:250-299, patch_torch_compile,
# called at unsloth/models/_utils.py:4169) before vLLM compiles its model in the same process. vLLM
# 0.32.0 patches only a few Inductor keys per compile (compilation/compiler_interface.py:636,
# `config_patches`); every other global stays in effect, e.g. dynamo `suppress_errors` would turn a
# failed vLLM compile into silent eager execution, and Inductor `memory_planning` / `memory_pool`
# change the buffers of every graph vLLM compiles. So vLLM starts with these keys as they were
# before unsloth came in, and the trainer gets unsloth's values back afterwards.
# (inline_inbuilt_nn_modules, also set by unsloth, is deprecated and always True in torch 2.13.)
UNSLOTH_TORCH_SETTINGS = {
    "inductor": ("debug", "dce", "memory_planning", "memory_pool", "efficient_conv_bn_eval_fx_passes",
                 "dynamic_scale_rblock", "max_autotune", "max_autotune_pointwise", "max_autotune_gemm",
                 "max_autotune_gemm_backends", "autotune_fallback_to_aten", "autotune_multi_device",
                 "coordinate_descent_tuning", "aggressive_fusion", "freezing", "cuda.enable_cuda_lto",
                 "cuda.use_fast_math", "cuda.compile_opt_level"),
    "dynamo": ("accumulated_cache_size_limit", "suppress_errors", "do_not_emit_runtime_asserts",
               "numpy_default_float", "compiled_autograd", "recompile_limit", "cache_size_limit",
               "allow_unspec_int_on_nn_module", "optimize_ddp", "capture_scalar_outputs",
               "capture_dynamic_output_shape_ops"),
}
# unsloth_zoo/__init__.py:319-332 sets PYTORCH_ALLOC_CONF=expandable_segments:True. Recorded, left
# alone: the caching allocator read it when the trainer first allocated (vLLM shares that allocator),
# and vLLM 0.32.0 objects to it only beside KV connectors (config/vllm.py:1217-1234) or in sleep
# mode's cumem pool, neither used here. unsloth's is_big_gpu patch (models/_utils.py:4167) matters
# only to max_autotune GEMM selection, which vLLM leaves off.
ALLOC_ENV = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
_MISSING = object()


def _torch_config_modules() -> dict[str, Any]:
    return {"inductor": torch._inductor.config, "dynamo": torch._dynamo.config}


def _get(module: Any, key: str) -> Any:
    for part in key.split("."):
        module = getattr(module, part, _MISSING)
        if module is _MISSING:
            break
    return module


def _set(module: Any, key: str, value: Any) -> None:
    *path, last = key.split(".")
    for part in path:
        module = getattr(module, part)
    setattr(module, last, value)


def torch_settings(modules: dict[str, Any] | None = None) -> dict[str, Any]:
    """The current values of UNSLOTH_TORCH_SETTINGS ("section.key": value; absent keys skipped)."""
    modules = modules or _torch_config_modules()
    out = {}
    for section, keys in UNSLOTH_TORCH_SETTINGS.items():
        for key in keys:
            value = _get(modules[section], key)
            if value is not _MISSING:
                out[f"{section}.{key}"] = value
    return out


@contextmanager
def vllm_torch_settings(before: dict[str, Any], info: dict[str, Any],
                        modules: dict[str, Any] | None = None) -> Iterator[None]:
    """Around vLLM's start: the settings the trainer's import changed go back to `before` (their
    values before it), then return to the trainer's values, except any vLLM set itself meanwhile.
    `info["torch_settings"]` records what was changed, reset and kept, and the allocator env."""
    modules = modules or _torch_config_modules()
    now = torch_settings(modules)
    changed = {k: v for k, v in now.items() if k in before and before[k] != v}
    info["torch_settings"] = {
        "changed_by_trainer": {k: [_jsonable(before[k]), _jsonable(v)] for k, v in changed.items()},
        "reset_for_vllm_start": sorted(changed), "kept_from_vllm": [],
        "alloc_env": {k: os.environ[k] for k in ALLOC_ENV if k in os.environ}}
    for name, value in changed.items():
        section, key = name.split(".", 1)
        _set(modules[section], key, before[name])
    try:
        yield
    finally:
        during = torch_settings(modules)
        for name, value in changed.items():
            if during.get(name) != before[name]:  # vLLM chose its own value: keep it
                info["torch_settings"]["kept_from_vllm"].append(name)
                continue
            section, key = name.split(".", 1)
            _set(modules[section], key, value)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)
