# download: the requirements (with the chosen torch / vLLM build) and their dependencies
import json, shutil, tempfile
from wheels_driver import CANDIDATES, DATASET_ID, DATASET_TITLE, DRIVER, PINS  # dropped by build_kernel.py
from wheels_driver import REQUIREMENTS, Path, os, subprocess, sys, variants  # dropped by build_kernel.py

WHEELS = Path(os.environ.get("ARC_WHEELS_DIR", "/kaggle/working/wheels"))
chosen, tried = None, []
for build in CANDIDATES:
    for lines, extra in variants(build):
        shutil.rmtree(WHEELS, ignore_errors=True)
        WHEELS.mkdir(parents=True)
        with tempfile.NamedTemporaryFile("w", suffix="-requirements.txt", delete=False) as req:
            req.write("\n".join(lines) + "\n")
        print(f"--- {build[0]}: pip download", *extra, flush=True)
        if subprocess.run([sys.executable, "-m", "pip", "download", "-d", str(WHEELS), "-r", req.name,
                           *extra]).returncode == 0:
            chosen = (build[0], lines)
            break
        tried.append(f"{build[0]}: " + " ".join(r for r in lines if r.lower().startswith(("torch", "vllm"))))
    if chosen:
        break
if chosen is None:
    raise RuntimeError(f"no torch/vLLM build for driver {DRIVER} could be downloaded; tried: "
                       + "; ".join(tried))
# pip itself: the verify cell bootstraps a fresh environment from this folder if the image lacks ensurepip
subprocess.run([sys.executable, "-m", "pip", "download", "-d", str(WHEELS), "pip"], check=True)
for sdist in sorted(p for p in WHEELS.iterdir() if p.name.endswith((".tar.gz", ".zip"))):
    # source-only packages: build the wheel here, where build dependencies can still be downloaded
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(WHEELS), str(sdist)],
                   check=True)
    sdist.unlink()


def wheel_name_version(wheel):
    """(name, version) from a wheel's file name (PEP 427: name-version-...)."""
    name, version = wheel.name.split("-")[:2]
    return name, version


def xformers_fits(wheel, torch_version):
    """Whether an xformers wheel's C++ ops can load beside this torch: its cpp_lib.json names the
    torch it was built for, and xformers/_cpp_lib.py:129-134 loads _C.so only against that one
    (else xFormersInvalidLibException; unsloth/models/_utils.py:4069-4119 then uses PyTorch
    attention). xformers 0.0.35 on PyPI is built for torch 2.10.0+cu128."""
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        built = json.loads(z.read("xformers/cpp_lib.json"))["version"]["torch"]
    return built.split("+")[0] == torch_version.split("+")[0], built


torch_wheel = next((w for w in WHEELS.glob("torch-*.whl")), None)
torch_version = wheel_name_version(torch_wheel)[1] if torch_wheel else PINS["torch"]
dropped = []
for wheel in sorted(WHEELS.glob("xformers-*.whl")):
    fits, built = xformers_fits(wheel, torch_version)
    if not fits:
        wheel.unlink()
        dropped.append(f"{wheel.name} (built for torch {built}, not {torch_version})")
        print(f"dropped {dropped[-1]}: it cannot load beside this torch")
# the exact set the kernel installs, with --no-deps (a dropped wheel stays out); pip is only for
# bootstrapping the verify cell's environment
LOCK = sorted(f"{n}=={v}" for n, v in map(wheel_name_version, WHEELS.glob("*.whl")) if n != "pip")
(WHEELS / "requirements.lock").write_text("\n".join(LOCK) + "\n")
wheels = sorted(WHEELS.glob("*.whl"))
(WHEELS / "README.md").write_text(
    "# ARC TTT wheelhouse\n\nWheels for the ARC TTT kernel, downloaded on Kaggle by its wheel builder "
    f"for NVIDIA driver {DRIVER} (CUDA build {chosen[0]}).\n"
    "Offline install: `pip install --no-index --no-deps --find-links <this dir> -r requirements.lock`; "
    "the lock is the resolved set of:\n\n"
    + "".join(f"    {r}\n" for r in REQUIREMENTS) + f"\n{len(wheels)} wheels, Python {sys.version.split()[0]}."
    + "".join(f"\nLeft out: {d}." for d in dropped) + "\n")
# the upload's metadata: a real title (the CLI rejects the default INSERT_TITLE_HERE) and the id
(WHEELS / "dataset-metadata.json").write_text(json.dumps(
    {"title": DATASET_TITLE, "id": DATASET_ID, "licenses": [{"name": "other"}]}, indent=1) + "\n")
print("\n".join(w.name for w in wheels))
print(f"{len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 2**30:.2f} GB in {WHEELS} "
      f"(CUDA build {chosen[0]})")
