# driver: print it, and choose the torch / vLLM CUDA builds that run on it
import json, os, re, subprocess, sys, urllib.request
from pathlib import Path

REQUIREMENTS = []  # filled by build_kernel.py
DATASET_ID = ""  # filled by build_kernel.py
DATASET_TITLE = ""  # filled by build_kernel.py
PINS = {r.split("==")[0].strip().lower(): r.split("==")[1].strip() for r in REQUIREMENTS if "==" in r}
# (CUDA build, its CUDA version, lowest Linux driver that runs it natively, torch index; None: PyPI's
# default build). PyPI's torch 2.13.0 requires cuda-toolkit 13.0.3 and PyPI's vLLM 0.32.0 wheel
# (vllm-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl) links libcudart.so.13: both are CUDA 13.0.
# Drivers (CUDA release notes): 13.0 >= 580, 12.9 >= 575, 12.8 >= 570, 12.6 >= 560; with CUDA's
# minor-version compatibility any 12.x runs on >= 525 and 13.x on >= 580. Which +cuXXX torch builds
# PyTorch's index holds for 2.13.0 could not be checked when this was written: each candidate is
# tried in turn, and the verify cell proves that the chosen set imports with CUDA on this machine.
BUILDS = [("cu130", (13, 0), 580, None),
          ("cu129", (12, 9), 575, "https://download.pytorch.org/whl/cu129"),
          ("cu128", (12, 8), 570, "https://download.pytorch.org/whl/cu128"),
          ("cu126", (12, 6), 560, "https://download.pytorch.org/whl/cu126")]
MINOR_COMPAT = {12: 525, 13: 580}  # lowest driver per CUDA major (minor-version compatibility)
# vLLM's CUDA variants are assets of its GitHub release, and their file names have changed over
# releases (manylinux1, manylinux_2_35, manylinux_2_28): they are read from the release's asset
# list, else named after the platform tag of the wheel PyPI serves for the same version.
VLLM_RELEASE_API = "https://api.github.com/repos/vllm-project/vllm/releases/tags/v{v}"
VLLM_RELEASE = "https://github.com/vllm-project/vllm/releases/download/v{v}/"
PYPI_JSON = "https://pypi.org/pypi/{name}/{v}/json"


def fetch_json(url):
    request = urllib.request.Request(url, headers={"User-Agent": "arc-ttt-wheel-builder"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def driver_version():
    """The NVIDIA driver version (ARC_DRIVER_VERSION overrides it: tests, or building for another machine)."""
    if os.environ.get("ARC_DRIVER_VERSION"):
        return os.environ["ARC_DRIVER_VERSION"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return found.group(1) if found else None


def driver_cuda():
    """(major, minor) of the CUDA version the driver supports, from nvidia-smi's header
    ("CUDA Version: 12.8"; ARC_DRIVER_CUDA overrides it); None when it does not say."""
    text = os.environ.get("ARC_DRIVER_CUDA")
    if not text and not os.environ.get("ARC_DRIVER_VERSION"):
        try:
            out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
            found = re.search(r"CUDA Version:\s*(\d+\.\d+)", out.stdout or "")
            text = found.group(1) if found else None
        except (OSError, subprocess.SubprocessError):
            text = None
    return tuple(int(x) for x in text.split(".")[:2]) if text else None


def candidates(major, cuda=None):
    """Builds to try, best first: the newest CUDA the driver runs natively (the version nvidia-smi
    reports, else the driver's number says), then newer builds by minor-version compatibility."""
    if cuda is None:
        cuda = max((b[1] for b in BUILDS if major >= b[2]), default=(0, 0))
    runs = [b for b in BUILDS if major >= MINOR_COMPAT.get(b[1][0], 10**9)]
    return [b for b in runs if b[1] <= cuda] + [b for b in reversed(runs) if b[1] > cuda]


def vllm_wheels(version, cuda, machine="x86_64"):
    """URLs of vLLM's +cuda wheels for this machine: from the GitHub release's asset list, else
    named after the platform tag of the wheel PyPI serves for the same version."""
    prefix = f"vllm-{version}+{cuda}-"
    try:
        assets = fetch_json(VLLM_RELEASE_API.format(v=version)).get("assets", [])
        urls = sorted(a["browser_download_url"] for a in assets
                      if a.get("name", "").startswith(prefix) and a["name"].endswith(f"_{machine}.whl"))
        if urls:
            return urls
    except (OSError, ValueError, KeyError) as exc:
        print(f"vLLM {version} release assets unavailable ({exc}); naming the wheels after PyPI's")
    try:
        files = fetch_json(PYPI_JSON.format(name="vllm", v=version)).get("urls", [])
    except (OSError, ValueError) as exc:
        print(f"PyPI's file list of vLLM {version} unavailable: {exc}")
        return []
    default = f"vllm-{version}-"
    return sorted(VLLM_RELEASE.format(v=version) + prefix + f["filename"][len(default):]
                  for f in files if f.get("filename", "").startswith(default)
                  and f["filename"].endswith(f"_{machine}.whl"))


def variants(build):
    """(requirement lines, extra pip arguments) to try for one build."""
    cuda, _, _, index = build
    if index is None:
        return [(list(REQUIREMENTS), [])]
    out = []
    for url in vllm_wheels(PINS["vllm"], cuda):
        lines = []
        for r in REQUIREMENTS:
            name = r.split("==")[0].strip().lower()
            if name == "torch":
                lines.append(f"torch=={PINS['torch']}+{cuda}")
            elif name == "vllm":
                lines.append("vllm @ " + url)
            else:
                lines.append(r)
        out.append((lines, ["--extra-index-url", index]))
    return out


try:
    subprocess.run(["nvidia-smi"], check=False, timeout=60)
except (OSError, subprocess.SubprocessError) as exc:
    print(f"nvidia-smi: {exc}")
DRIVER = driver_version()
if DRIVER is None:
    raise RuntimeError("no NVIDIA driver found: run the wheel builder with the GPU on "
                       "(the kernel's accelerator)")
DRIVER_CUDA = driver_cuda()
CANDIDATES = candidates(int(DRIVER.split(".")[0]), DRIVER_CUDA)
if not CANDIDATES:
    raise RuntimeError(f"NVIDIA driver {DRIVER} is older than every CUDA build of torch {PINS['torch']} "
                       f"needs (>= {min(MINOR_COMPAT.values())})")
print(f"NVIDIA driver {DRIVER} (CUDA {'.'.join(map(str, DRIVER_CUDA)) if DRIVER_CUDA else '?'}): "
      f"builds to try, in order: {', '.join(b[0] for b in CANDIDATES)}")
