"""Helpers the test modules (and benchmarks/) share: the CPU-sized config, small random tasks, a
challenges file, the CLI in this process and in a subprocess, hand-made model files, NVARC's layout
written out independently, and a random LoRA adapter. Fixtures live in conftest.py.

Import as `from tests.helpers import ...` (pytest and the benchmarks run from the repository root). A
test module imports from here, never from another test module or from conftest.py.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from submission.arc.grids import Pair, Task, as_grid
from submission.arc.tasks import tasks_to_challenges
from submission.config import Config
from submission.model.ttt_data import build_ttt_data
from submission.tools.dry_run import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]  # the repository

# What the tests change in the dry-run's CPU-sized config, each with its reason (applied after it).
SMALL_DELTAS = (
    "sampling.n_views=4",  # half the dry-run's views: the engine tests' run time is sized for 4
    "sampling.unsure_extra_views=0",  # no second sampling round: tests count views and resamples
    "selection.rescore_augmentations=2",  # fewer re-scoring passes: re-scoring has its own tests
    "selection.max_rescore=3",  # (as above) three candidates re-scored per test input
    "sampling.max_loras=4",  # the session engine's adapter slots (fixed when it is built)
    # the program-search lane is tested on its own (test_lane_*): elsewhere it would spawn a pool
    # in every run and could answer a test's toy task in the model's place
    "lane.enabled=false",
)
SMALL_OVERRIDES = (*TINY_OVERRIDES, *SMALL_DELTAS)
# CPU-sized settings every engine test shares (the engine's LoRA rank is fixed at build time).
SMALL = Config().with_overrides(SMALL_OVERRIDES)


def small_sets(*keys: str) -> list[str]:
    """The `section.field=value` strings of SMALL_OVERRIDES for `keys` (the last one of a key wins),
    in the order of `keys`: for a CLI subprocess that shares part of the tests' config."""
    found = {o.split("=")[0]: o for o in SMALL_OVERRIDES}
    return [found[k] for k in keys]


def random_task(task_id: str, seed: int, *, side: int = 2, n_train: int = 2, n_test: int = 1) -> Task:
    """A task of random `side` x `side` grids: `n_train` demos, then `n_test` test inputs."""
    rng = np.random.default_rng(seed)
    g = lambda: as_grid(rng.integers(0, 10, (side, side)))  # noqa: E731
    return Task(task_id, tuple(Pair(g(), g()) for _ in range(n_train)), tuple(g() for _ in range(n_test)))


def write_challenges(path: Path, ids: list[str], bad: str | None = None) -> Path:
    """A challenges file of `random_task(id, n)` for the n-th id; `bad`: one more task, malformed."""
    data = tasks_to_challenges({i: random_task(i, n) for n, i in enumerate(ids)})
    if bad:
        data[bad] = {"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[1]]}]}
    path.write_text(json.dumps(data))
    return path


def cli_main(capsys, *argv) -> tuple[int, str, str]:
    """`submission.cli.main` in this process: exit code, stdout, stderr."""
    from submission import cli

    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def random_adapter(engine, out_dir: str | Path, *, seed: int = 0, name: str = "random"):
    """Save the engine's LoRA with random B matrices (peft initialises B to zero, a no-op adapter)
    and return its handle; the live adapter is reset afterwards."""
    import torch

    engine.trainer.reset()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in engine.trainer.model.named_parameters():
            if "lora_B" in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    path = engine.trainer.save(out_dir)
    engine.trainer.reset()
    engine.forward.forget_loaded()
    return engine.new_adapter(name, path)


# --- the engine tests' trained adapters (conftest.py's `adapters` fixture) ---------------------

# TTT settings that make an adapter learn a zeros_task's side.
LEARN = ["ttt.learning_rate=1e-2", "ttt.epochs=4", "ttt.grad_accum=1", "ttt.max_samples=32"]


def zeros_task(task_id: str, side: int, seed: int) -> Task:
    """Synthetic family: whatever the input, the answer is the side x side background square.
    Invariant under every augmentation, so TTT data teaches exactly the task's own `side`."""
    rng = np.random.default_rng(seed)
    square = as_grid(np.zeros((side, side), dtype=np.uint8))
    pairs = tuple(Pair(as_grid(rng.integers(1, 10, (3, 3))), square) for _ in range(3))
    return Task(task_id, pairs, (as_grid(rng.integers(1, 10, (3, 3))),), (square,))


# --- tasks the program-search lane solves (flip) or cannot (noise) ------------------------------

def flip_task(tid: str, seed: int) -> Task:
    rng = np.random.default_rng(seed)
    g = lambda: as_grid(rng.integers(1, 10, (3, 4)))  # noqa: E731
    xs = [g() for _ in range(3)]
    t = g()
    return Task(tid, tuple(Pair(x, x[:, ::-1].copy()) for x in xs), (t,), (t[:, ::-1].copy(),))


def noise_task(tid: str, seed: int, side: int = 6) -> Task:
    rng = np.random.default_rng(seed)
    g = lambda: as_grid(rng.integers(0, 10, (side, side)))  # noqa: E731
    return Task(tid, tuple(Pair(g(), g()) for _ in range(3)), (g(),), (g(),))


# --- in-process runs on the session's engine ----------------------------------------------------

QUICK = SMALL.with_overrides(["ttt.max_samples=4", "sampling.n_views=2", "selection.max_rescore=2",
                              "sampling.dfs_threshold=0", "budget.calibrate=false"])
QUICK_RATES = {"train_tokens_per_s": 1e5, "sample_tokens_per_s": 1e5, "score_tokens_per_s": 1e5}


# --- published config.json shapes (the fields the memory plan reads) ----------------------------

QWEN3_4B = dict(num_hidden_layers=36, hidden_size=2560, num_attention_heads=32, num_key_value_heads=8,
                head_dim=128, intermediate_size=9728, vocab_size=151936, tie_word_embeddings=True,
                torch_dtype="bfloat16")


# --- NVARC's prompt layout, written out independently of the format classes ---------------------

# NVARC's published vocabulary, in id order (the text a piece stands for; "\n" is stored as "Ċ").
NVARC_VOCAB = [str(d) for d in range(10)] + ["\n", "user", "assistant", "<|endoftext|>",
                                             "<|im_start|>", "<|im_end|>"]


def grid_text(grid) -> str:
    return "\n".join("".join(str(int(v)) for v in row) for row in np.asarray(grid))


def nvarc_text(demos, query) -> str:
    """NVARC: a chat turn per grid, no begin token, no trailing row break."""
    text = ""
    for inp, out in demos:
        text += f"<|im_start|>user\n{grid_text(inp)}<|im_end|><|im_start|>assistant\n{grid_text(out)}<|im_end|>"
    return text + f"<|im_start|>user\n{grid_text(query)}<|im_end|><|im_start|>assistant\n"


def vocab_ids(text: str, vocab: list[str]) -> list[int]:
    """Greedy longest-piece lookup in a published vocabulary (every piece of these layouts is whole)."""
    by_len = sorted(vocab, key=len, reverse=True)
    ids, i = [], 0
    while i < len(text):
        piece = next(p for p in by_len if text.startswith(p, i))
        ids.append(vocab.index(piece))
        i += len(piece)
    return ids


def ttt_samples(fmt, n=8):
    """`n` TTT samples of a small task whose answers are all a 2 x 2 zero grid."""
    rng = np.random.default_rng(0)
    pairs = tuple(Pair(as_grid(rng.integers(1, 10, (2, 3))), as_grid([[0, 0], [0, 0]])) for _ in range(3))
    return build_ttt_data(Task("z", pairs, (pairs[0].input,)), fmt, rng, max_samples=n, max_len=4096).samples


# --- hand-made model files ----------------------------------------------------------------------

def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]],
                      fill: bytes = b"\x01") -> Path:
    """A safetensors file written by hand: {name: (dtype, shape)}, data bytes all `fill`."""
    sizes = {"F32": 4, "BF16": 2, "U8": 1, "I64": 8}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape) in tensors.items():
        n = int(np.prod(shape)) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + fill * offset)
    return path


def fake_model(d: Path, *, config: str = '{"model_type": "qwen3"}', seed: int = 1) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(config)
    write_safetensors(d / "model.safetensors",
                      {"a.weight": ("F32", [3, 4]), "b.bias": ("BF16", [5]), "c": ("U8", [0])},
                      fill=bytes([seed]))
    return d


# --- the CLI in a subprocess ---------------------------------------------------------------------

# CPU-sized settings for a `run` subprocess on the tiny model.
FAST = ["--set", "budget.workers=0", "--set", "sampling.backend=transformers",
        "--set", "ttt.backend=peft", "--set", "ttt.lora.r=8", "--set", "ttt.lora.alpha=16",
        "--set", "ttt.max_samples=4", "--set", "sampling.n_views=2",
        "--set", "selection.rescore_augmentations=2", "--set", "selection.max_rescore=2",
        "--set", "model.max_seq_len=256", "--set", "sampling.max_loras=8",
        "--set", "sampling.unsure_extra_views=0", "--set", "sampling.dfs_threshold=0",
        "--set", "sampling.base_model_fallback=false"]
FAST_RATES = {"train_tokens_per_s": 1000.0, "sample_tokens_per_s": 1000.0, "score_tokens_per_s": 5000.0}


def one_error_line(err: str, *needles: str) -> None:
    """`err` is one `error: ...` line, no traceback, holding every needle."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def cli_subprocess(*argv: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m submission *argv` from the repository's sources, in `cwd`."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "submission", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_cli(tmp: Path, challenges: Path, model: Path, *extra: str, workdir: Path | None = None,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """`run` in a subprocess with CPU-sized settings; a calibration file skips the start-up
    measurement (it lives outside tmp, so the snapshots of tmp do not see it)."""
    calibration = tmp.parent / f"{tmp.name}.calibration.json"
    calibration.write_text(json.dumps(FAST_RATES))
    return cli_subprocess("run", "--challenges", challenges, "--model", model,
                          "--out", tmp / "submission.json", "--workdir", workdir or tmp / "work",
                          "--calibration", calibration, *FAST, *extra, cwd=tmp, timeout=timeout)
