# run: full on the competition rerun (KAGGLE_IS_COMPETITION_RERUN); else gpu-check, then a smoke run
import os, shlex, subprocess, sys
from pathlib import Path

ROOT = os.path.abspath(os.environ.get("ARC_INPUT_ROOT", "/kaggle/input"))
WORKING = os.path.abspath(os.environ.get("ARC_WORKING", "/kaggle/working"))
FULL = bool(os.environ.get("KAGGLE_IS_COMPETITION_RERUN"))
EXTRA = shlex.split(os.environ.get("ARC_KAGGLE_ARGS", ""))
env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
os.makedirs(WORKING, exist_ok=True)
failures = []  # smoke run only: any entry makes this cell raise, so the commit run is red


def shared_args(args):
    """The --config/--set/--model options of the kaggle command, for gpu-check (same model, same config)."""
    out, i = [], 0
    while i < len(args):
        if args[i] in ("--config", "--set", "--model") and i + 1 < len(args):
            out += args[i:i + 2]
            i += 2
            continue
        if args[i].startswith(("--config=", "--set=", "--model=")):
            out.append(args[i])
        i += 1
    return out


def call(cmd, timeout=None):
    print("$", shlex.join(cmd), flush=True)
    try:
        return subprocess.run(cmd, env=env, cwd=WORKING, timeout=timeout).returncode
    except subprocess.TimeoutExpired:  # the child was killed; a hung check must not eat the session
        print(f"timed out after {timeout} s", flush=True)
        return 124


cmd = [sys.executable, "-m", "submission", "kaggle", "--input-root", ROOT, "--working", WORKING]
if not FULL and os.environ.get("ARC_SKIP_GPU_CHECK") != "1":
    # the machine check: versions, driver, backends, memory plan, every stage once, measured rates
    check_dir = os.path.join(WORKING, "gpu-check")
    code = call([sys.executable, "-m", "submission", "gpu-check", "--input-root", ROOT, "--out", check_dir]
                + shared_args(EXTRA) + shlex.split(os.environ.get("ARC_GPU_CHECK_ARGS", "")),
                timeout=float(os.environ.get("ARC_GPU_CHECK_TIMEOUT", "1800")))
    if code != 0:
        failures.append(f"gpu-check exited with code {code}: see {check_dir}/gpu_check.json")
    calibration = os.path.join(check_dir, "calibration.json")
    if os.path.exists(calibration):
        cmd += ["--calibration", calibration]  # this machine's rates as the planner's start values
code = call(cmd + EXTRA)
submission = Path(WORKING) / "submission.json"
if code != 0:
    # submission.json is complete from the first minute (placeholders, then every finished task):
    # keep it if it validates rather than losing the whole run to one late failure.
    print(f"run exited with code {code}; keeping {submission} if it validates", flush=True)
    if not FULL:
        failures.append(f"smoke run exited with code {code}: see the problems printed above")

challenges = sorted(p for p in Path(ROOT).rglob("arc-agi_test_challenges.json") if p.is_file())[0]
subprocess.run([sys.executable, "-m", "submission", "validate", "--submission", str(submission),
                "--challenges", str(challenges)], check=True, env=env, cwd=WORKING)
text = submission.read_text()
print(f"{submission} ({len(text)} bytes):", text[:600] + (" ..." if len(text) > 600 else ""))
if failures:  # never in the competition rerun: there a submission that validates is kept
    raise RuntimeError("SMOKE RUN FAILED (a green commit run must mean every stage worked):\n  "
                       + "\n  ".join(failures))
print("smoke run: every stage worked" if not FULL else "full run finished")
