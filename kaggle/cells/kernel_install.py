# install: the pinned GPU stack from the wheelhouse dataset (offline, --no-index)
import os, subprocess, sys, tempfile
from pathlib import Path

INPUT_ROOT = os.environ.get("ARC_INPUT_ROOT", "/kaggle/input")
REQUIREMENTS = []  # filled by build_kernel.py


def find_wheelhouse(root):
    """The directory under root holding the most *.whl files (first in sorted order on ties)."""
    counts = {}
    if Path(root).is_dir():
        for wheel in Path(root).rglob("*.whl"):
            counts[wheel.parent] = counts.get(wheel.parent, 0) + 1
    return max(sorted(counts), key=counts.get) if counts else None


if os.environ.get("ARC_SKIP_INSTALL") == "1":
    print("ARC_SKIP_INSTALL=1: not installing; using the installed packages")
elif (wheelhouse := find_wheelhouse(INPUT_ROOT)) is None:
    print(f"no wheelhouse attached (no *.whl under {INPUT_ROOT}): using the installed packages")
else:
    lock = wheelhouse / "requirements.lock"  # the builder's resolved set, wheels left out on purpose
    if lock.is_file():
        print(f"installing the locked set of {wheelhouse}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                        "--find-links", str(wheelhouse), "-r", str(lock)], check=True)
    else:
        with tempfile.NamedTemporaryFile("w", suffix="-requirements.txt", delete=False) as req:
            req.write("\n".join(REQUIREMENTS) + "\n")
        print(f"installing {len(REQUIREMENTS)} requirements from {wheelhouse}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
                        str(wheelhouse), "-r", req.name], check=True)
