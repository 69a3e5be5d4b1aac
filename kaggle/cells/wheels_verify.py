# verify: install the wheelhouse offline into a FRESH environment and import the stack with CUDA
import shutil, tempfile
from wheels_driver import DRIVER, Path, os, subprocess, sys  # dropped by build_kernel.py
from wheels_download import WHEELS, chosen  # dropped by build_kernel.py

VENV = Path(tempfile.mkdtemp(prefix="wheelhouse-check-")) / "venv"
try:
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
except subprocess.CalledProcessError:  # no ensurepip on this image: bootstrap pip from the wheelhouse
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(VENV)], check=True)
    pip_wheel = sorted(WHEELS.glob("pip-*.whl"))[-1]
    subprocess.run([str(VENV / "bin" / "python"), str(pip_wheel / "pip"), "install", "--no-index",
                    "--find-links", str(WHEELS), "pip"], check=True)
python = str(VENV / "bin" / "python")
# exactly what the kernel's install cell runs: the lock, without resolving dependencies again
subprocess.run([python, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(WHEELS),
                "-r", str(WHEELS / "requirements.lock")], check=True)
PROBE = """
import torch
assert torch.cuda.is_available(), f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use the GPU"
import unsloth  # before transformers-based imports: it patches them
import vllm
print("torch", torch.__version__, "CUDA", torch.version.cuda, "on", torch.cuda.get_device_name(0),
      "| vllm", vllm.__version__, "| unsloth", unsloth.__version__)
"""
subprocess.run([python, "-c", PROBE], check=True, env=dict(os.environ, HF_HUB_OFFLINE="1",
               UNSLOTH_DISABLE_STATISTICS="1"))
shutil.rmtree(VENV.parent, ignore_errors=True)
print(f"SUCCESS: {WHEELS} installs offline into a fresh environment; torch, vllm and unsloth import "
      f"with CUDA on driver {DRIVER} (build {chosen[0]})")
