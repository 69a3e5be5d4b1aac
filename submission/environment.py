"""Where the package runs, named once: Kaggle's folders and time limit, the smoke run's size, and the
offline switches set before a model library loads. Standard library only: the supervisor side,
the command line and the model side all import it. The notebook cells (kaggle/cells/) repeat the
folders as literals, since they run before the package is importable;
tests/kernel/test_kernel_cells.py checks that they match.
"""

from __future__ import annotations

from collections.abc import MutableMapping

INPUT_ROOT = "/kaggle/input"  # attached competition data, models and wheelhouses (read-only)
WORKING = "/kaggle/working"  # what Kaggle keeps after the run (capped: small files only)
KAGGLE_LIMIT_S = 12 * 3600  # a notebook's run time limit
SAFETY_MARGIN_S = 45 * 60  # start-up, wheel install and final writes inside Kaggle's 12 h
TIME_BUDGET_S = KAGGLE_LIMIT_S - SAFETY_MARGIN_S  # what a full run may spend on tasks
SMOKE_TASKS = 3  # interactive/commit runs see a placeholder file: exercise every stage quickly

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",  # no hub traffic; also skips unsloth's statistics ping
    "TRANSFORMERS_OFFLINE": "1",
    "UNSLOTH_DISABLE_STATISTICS": "1",  # presence alone disables the 8.8.8.8 probe and its socket timeout
}
# a worker process's own: the Rust tokenizer's thread pool off (it warns and turns itself off when a
# process forks after using it)
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false"}


def set_offline(environ: MutableMapping[str, str], *, force: bool) -> None:
    """Put OFFLINE_ENV into `environ` (os.environ, or a child process's environment): `force`
    overwrites what is there; otherwise a value already set (the user's choice) is kept."""
    for key, value in OFFLINE_ENV.items():
        if force:
            environ[key] = value
        else:
            environ.setdefault(key, value)
