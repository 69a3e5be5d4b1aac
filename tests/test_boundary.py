"""The torch boundary is a folder boundary: the supervisor side loads no model library.

The supervisor (run, schedule, budget, watchdog, memory plan, records, machine probes, the CLI and
its tools) must stay light and must not initialise CUDA before it forks its GPU workers: it imports
the model side (model/, worker/, finetune/) only inside functions, and the model-side modules it
does import at the top of a file (show_prompt's tokenizer, gpu_check's calibration) import their
model libraries inside functions. The model side imports torch, transformers and peft at the
top of its files; unsloth and vLLM only inside their backends' functions, so no module loads them.
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
LAZY = ("vllm", "unsloth")  # imported inside their backends' functions, on the model side too
# The supervisor side: these folders and files (the tools that run in the supervisor included).
SUPERVISOR = ("submission/runtime", "submission/lane", "submission/arc", "submission/answers",
              "submission/__init__.py", "submission/events.py", "submission/config",
              "submission/errors.py", "submission/environment.py", "submission/cli.py",
              "submission/cli_args.py", "submission/commands.py", "submission/tools/__init__.py",
              "submission/tools/kaggle.py", "submission/tools/report.py", "submission/tools/report_view.py",
              "submission/tools/report_workdir.py", "submission/tools/dry_run.py",
              "submission/tools/show_prompt.py", "submission/tools/gpu_check.py")
MODEL_LIBS = ("submission.model", "submission.worker", "submission.finetune")  # the model side
MODEL_SIDE = MODEL_LIBS + ("submission.tools",)  # what the supervisor outside tools/ imports in functions only
# model-side modules that two supervisor tools import at the top of their file: torch-free at import
TOP_LEVEL_MODEL_SIDE = {"submission/tools/show_prompt.py": {"submission.model.tokenizer"},
                        "submission/tools/gpu_check.py": {"submission.worker.calibrate"}}
TORCH_FREE_MODEL_SIDE = {"submission.model", "submission.model.tokenizer", "submission.worker",
                         "submission.worker.calibrate", "submission.model.ttt_data"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> list[str]:
    return [_module(p) for p in sorted((ROOT / "submission").rglob("*.py")) if p.name != "__main__.py"]


def _supervisor_files() -> list[Path]:
    out = []
    for entry in SUPERVISOR:
        p = ROOT / entry
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


def supervisor_modules() -> list[str]:
    return [_module(p) for p in _supervisor_files()]


def _last_json_line(code: str):
    """Run `code` in a fresh interpreter (this test process has torch loaded already) and return
    the JSON its last stdout line holds."""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_module_imports_without_unsloth_or_vllm():
    """The model side too: unsloth (GPU only) and vLLM stay inside their backends' functions."""
    code = ("import importlib, json, sys\n"
            f"for m in {modules()!r}:\n"
            "    importlib.import_module(m)\n"
            f"print(json.dumps(sorted(h for h in {LAZY!r} if h in sys.modules)))\n")
    assert _last_json_line(code) == []
    assert len(modules()) > 40  # the walk found the package


def test_every_supervisor_module_imports_without_the_model_libraries():
    mods = supervisor_modules()
    code = ("import importlib, json, sys\n"
            f"for m in {mods!r}:\n"
            "    importlib.import_module(m)\n"
            f"print(json.dumps([sorted(h for h in {HEAVY!r} if h in sys.modules), "
            f"sorted(m for m in sys.modules if m.startswith({MODEL_LIBS!r}))]))\n")
    heavy, model_side = _last_json_line(code)
    assert heavy == []  # torch and vLLM above all
    assert set(model_side) <= TORCH_FREE_MODEL_SIDE, sorted(set(model_side) - TORCH_FREE_MODEL_SIDE)
    assert len(mods) > 50 and {"submission.cli", "submission.commands", "submission.tools.kaggle",
                               "submission.tools.gpu_check", "submission.answers.search"} <= set(mods)


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


def test_the_supervisor_side_imports_no_model_side_module_at_the_top_of_a_file():
    """The supervisor side reaches the model and worker side only inside a function, never at
    module level (a TYPE_CHECKING block is for annotations only); outside tools/ it reaches no
    tool at module level either. Two tools import one torch-free model-side module each."""
    found = []
    for path in _supervisor_files():
        rel = str(path.relative_to(ROOT))
        banned = MODEL_LIBS if rel.startswith("submission/tools/") else MODEL_SIDE
        allowed = TOP_LEVEL_MODEL_SIDE.get(rel, set())
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    break
                names = ([sub.module or ""] if isinstance(sub, ast.ImportFrom) else
                         [a.name for a in sub.names] if isinstance(sub, ast.Import) else [])
                found += [f"{rel}:{sub.lineno} {n}" for n in names if n not in allowed
                          and (n.startswith(banned) or n.split(".")[0] in HEAVY)]
    assert found == []
    assert len(_supervisor_files()) > 50


def test_importing_the_whole_supervisor_side_loads_no_model_side_module():
    """Outside tools/: no model-side module and no tool at all."""
    mods = [m for m in supervisor_modules() if not m.startswith("submission.tools")]
    code = ("import importlib, json, sys\n"
            f"for m in {mods!r}:\n"
            "    importlib.import_module(m)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
            f"or m.startswith({MODEL_SIDE!r}))))\n")
    assert _last_json_line(code) == []
    assert len(mods) > 40
