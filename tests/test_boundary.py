"""The torch boundary: importing any module of the package loads no model library.

The supervisor (run, schedule, budget, watchdog, memory plan, records, machine probes) must stay
light and must not initialise CUDA before it forks its GPU workers; the model side imports torch,
transformers, peft, unsloth and vLLM inside its functions, so every module imports without them.
Each check runs in a fresh interpreter: this test process has torch loaded already.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "vllm", "transformers", "peft", "unsloth", "bitsandbytes", "accelerate")


def modules() -> list[str]:
    out = []
    for path in sorted((ROOT / "submission").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def _last_json_line(code: str):
    """Run `code` in a fresh interpreter (this test process has torch loaded already) and return
    the JSON its last stdout line holds."""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_module_imports_without_the_model_libraries():
    code = ("import importlib, json, sys\n"
            f"for m in {modules()!r}:\n"
            "    importlib.import_module(m)\n"
            f"print(json.dumps(sorted(h for h in {HEAVY!r} if h in sys.modules)))\n")
    assert _last_json_line(code) == []
    assert len(modules()) > 40  # the walk found the package


def test_the_cli_plans_memory_without_the_model_libraries(tmp_path):
    """A supervisor-side command end to end: the memory plan of a published model shape."""
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "qwen3", "hidden_size": 2560, "intermediate_size": 9728,
        "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True,
        "max_position_embeddings": 40960, "torch_dtype": "bfloat16"}))
    code = ("import json, sys\n"
            "from submission.cli import main\n"
            f"code = main(['memory-plan', '--model', {str(tmp_path)!r}, '--gpu-memory-gib', '22.5'])\n"
            f"print(json.dumps([code, sorted(h for h in {HEAVY!r} if h in sys.modules)]))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    code, heavy = json.loads(r.stdout.strip().splitlines()[-1])
    assert code == 0 and heavy == [], (code, heavy, r.stderr[-2000:])


SUPERVISOR = ("submission/runtime", "submission/lane", "submission/arc", "submission/events.py",
              "submission/config.py", "submission/errors.py")
MODEL_SIDE = ("submission.model", "submission.worker", "submission.tools", "submission.finetune")


def _supervisor_files() -> list[Path]:
    out = []
    for entry in SUPERVISOR:
        p = ROOT / entry
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


def test_the_supervisor_side_imports_no_model_side_module_at_the_top_of_a_file():
    """runtime/ (and the torch-free layers it stands on) reach the model and worker side only
    inside a function, never at module level (a TYPE_CHECKING block is for annotations only)."""
    found = []
    for path in _supervisor_files():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    break
                names = ([sub.module or ""] if isinstance(sub, ast.ImportFrom) else
                         [a.name for a in sub.names] if isinstance(sub, ast.Import) else [])
                found += [f"{path.relative_to(ROOT)}:{sub.lineno} {n}" for n in names
                          if n.startswith(MODEL_SIDE) or n.split(".")[0] in HEAVY]
    assert found == []
    assert len(_supervisor_files()) > 25


def test_importing_the_whole_supervisor_side_loads_no_model_side_module():
    mods = [m for m in modules() if m.startswith(("submission.runtime", "submission.lane", "submission.arc"))]
    code = ("import importlib, json, sys\n"
            f"for m in {mods!r}:\n"
            "    importlib.import_module(m)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
            f"or m.startswith({MODEL_SIDE!r}))))\n")
    assert _last_json_line(code) == []
    assert len(mods) > 20
