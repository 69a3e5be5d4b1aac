"""Helpers the test modules (and benchmarks/) share: the CPU-sized config, small random tasks, a
challenges file, the CLI in this process and a random LoRA adapter. Fixtures live in conftest.py.

Import as `from tests.helpers import ...` (pytest and the benchmarks run from the repository root).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from submission.arc.grids import Pair, Task, as_grid
from submission.arc.tasks import tasks_to_challenges
from submission.config import Config
from submission.tools.dry_run import TINY_OVERRIDES

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
