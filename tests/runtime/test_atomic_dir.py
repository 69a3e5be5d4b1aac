"""Whole-directory writes (runtime/files.replace_dir_atomic): the new directory replaces the old one
whole, a failing fill leaves the old one and no temp directory, parents are created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from submission.runtime.files import replace_dir_atomic


def _write(files: dict[str, str]):
    def fill(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
    return fill


def _tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*")) if p.is_file()}


def test_success_replaces_the_old_directory_whole(tmp_path):
    out = tmp_path / "adapter"
    assert replace_dir_atomic(out, _write({"a.txt": "1", "sub/b.txt": "2"})) == out
    assert _tree(out) == {"a.txt": "1", "sub/b.txt": "2"}
    replace_dir_atomic(out, _write({"c.txt": "3"}))
    assert _tree(out) == {"c.txt": "3"}  # nothing of the old one is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_failing_fill_leaves_the_old_directory_and_no_temp(tmp_path):
    out = tmp_path / "adapter"
    replace_dir_atomic(out, _write({"a.txt": "old"}))

    def fail(tmp: Path) -> None:
        (tmp / "a.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_dir_atomic(out, fail)
    assert _tree(out) == {"a.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_parents_are_created_and_a_stale_temp_is_replaced(tmp_path):
    out = tmp_path / "run" / "checkpoints" / "step-0000001"
    stale = out.parent / f".{out.name}.tmp{os.getpid()}"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")
    replace_dir_atomic(out, _write({"state.pt": "s"}))
    assert _tree(out) == {"state.pt": "s"} and not stale.exists()


def test_an_empty_fill_gives_an_empty_directory(tmp_path):
    out = replace_dir_atomic(tmp_path / "d", lambda tmp: None)
    assert out.is_dir() and not any(out.iterdir())
