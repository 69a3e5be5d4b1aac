"""README.md is a map: at most 200 lines, a file tree with one line per module of the package (each
listed module exists, every tracked one is listed), docs/ links that resolve to a file and a
heading, and the test command CI runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 200
BRANCH = re.compile(r"^((?:│   |    )*)(?:├── |└── )(\S+)")


def _tree() -> list[str]:
    """The paths of the README's file tree (the ```text block under "## Layout"), relative to the
    repository root; a folder ends in "/"."""
    text = README.read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    paths: list[str] = []
    stack: list[str] = []
    for line in block.splitlines():
        m = BRANCH.match(line)
        if not m:
            assert line.strip() in ("", "."), f"not a tree line: {line!r}"
            continue
        depth = len(m.group(1)) // 4
        del stack[depth:]
        name = m.group(2)
        paths.append("".join(stack) + name)
        if name.endswith("/"):
            stack.append(name)
    return paths


def _tracked_modules() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "submission"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of tracked modules")
    return [p for p in out.splitlines() if p.endswith(".py") and (ROOT / p).is_file()]


def test_readme_is_at_most_200_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; details belong in docs/"


def test_every_path_in_the_file_map_exists():
    paths = _tree()
    assert "submission/" in paths
    missing = [p for p in paths if not any(ROOT.glob(p.rstrip("/")))]
    assert not missing, f"README's file map names paths that do not exist: {missing}"


def test_every_tracked_module_is_in_the_file_map():
    listed = set(_tree())
    missing = []
    for module in _tracked_modules():
        # a folder's line stands for its __init__.py
        entry = module[: -len("__init__.py")] if module.endswith("/__init__.py") else module
        if entry not in listed:
            missing.append(module)
    assert not missing, f"modules missing from README's file map (one line each): {missing}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-"))
    return out


def test_every_docs_link_resolves():
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", README.read_text(encoding="utf-8"))
    assert links, "README links no docs/ page"
    bad = []
    for target, anchor in links:
        page = ROOT / target
        if not page.is_file():
            bad.append(target)
        elif anchor and anchor not in _anchors(page.read_text(encoding="utf-8")):
            bad.append(f"{target}#{anchor}")
    assert not bad, f"README links that do not resolve: {bad}"


def test_readme_gives_the_test_command_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert commands[-1].startswith("make test"), commands[-1]
    setup = README.read_text(encoding="utf-8").split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^make test\b", setup, re.M), "README's set-up lost the `make test` line CI runs"
