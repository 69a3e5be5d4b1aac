"""A temp directory of its own for each vLLM engine start, so that nothing vLLM leaves is left in /tmp.

vLLM's executor meets torch.distributed through a file store at
`file://{tempfile.gettempdir()}/vllm_dist_<uuid4 hex>` (vllm/utils/network_utils.py:153-154,
`get_file_store_init_method`, called at vllm/v1/executor/uniproc_executor.py:84 and
multiproc_executor.py:143). torch deletes that file when the store is destroyed at a clean exit, but
a start that fails after the rendezvous (e.g. the KV cache does not fit) or a SIGTERM leaves it
behind for good. So `engine_tmpdir` points `tempfile` (and TMPDIR, for engine processes) at a fresh
`arc-vllm-<pid>-*` directory while the engine starts: a failed start removes it at once, a process
that ends normally removes it at exit, and `sweep` removes those of processes that no longer exist
(the next run calls it, and a run calls it at its end for its killed workers). Torch Inductor's
cache stays where it was (TORCHINDUCTOR_CACHE_DIR is set to its default first).
"""

from __future__ import annotations

import atexit
import getpass
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = "arc-vllm-"
_NAME = re.compile(rf"{re.escape(PREFIX)}(\d+)-")


@contextmanager
def engine_tmpdir() -> Iterator[Path]:
    """Make `tempfile.gettempdir()` a fresh private directory while the block runs (an engine
    start); removed at once if the block raises, else when this process exits."""
    base = tempfile.gettempdir()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _inductor_default(base))
    d = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
    saved_dir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(d), str(d)
    try:
        yield d
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    else:
        atexit.register(shutil.rmtree, d, True)
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env


def sweep(base: str | Path | None = None) -> list[Path]:
    """Remove the `engine_tmpdir` directories under `base` (default: the temp directory) whose
    process no longer exists; returns them."""
    removed = []
    for d in Path(base or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        m = _NAME.match(d.name)
        if m and d.is_dir() and not _alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _inductor_default(base: str) -> str:
    """Torch Inductor's default cache directory for temp directory `base`
    (torch/_inductor/runtime/cache_dir_utils.py:24-34, `default_cache_dir`)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError, ModuleNotFoundError):
        user = f"uid_{os.getuid()}"
    return os.path.join(base, "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
