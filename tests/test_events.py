"""The fallback registry (events.py): each name once, every registered name produced by some module,
every produced name registered, and the counters refuse a name that is not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from submission import events
from submission.events import REGISTRY, SMOKE_FAILURES, Counts, UnknownFallback

PACKAGE = Path(__file__).resolve().parents[1] / "submission"
SOURCES = {p: p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "events.py"}


def constants() -> dict[str, str]:
    """events.py's module constants that hold a registered name: identifier -> name."""
    return {k: v for k, v in vars(events).items() if k.isupper() and isinstance(v, str) and v in REGISTRY}


def test_every_registered_name_has_one_constant_and_a_meaning():
    by_name = {}
    for ident, name in constants().items():
        assert name not in by_name, (name, ident, by_name.get(name))
        by_name[name] = ident
    assert set(by_name) == set(REGISTRY)
    assert all(f.meaning.strip() for f in REGISTRY.values())
    assert SMOKE_FAILURES == {n: f.meaning for n, f in REGISTRY.items() if f.fails_smoke}


def _used_identifiers() -> set[str]:
    used = set()
    for text in SOURCES.values():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.alias):
                used.add(node.name)
    return used


def test_every_registered_name_is_produced_somewhere():
    used = _used_identifiers()
    unused = sorted(ident for ident in constants() if ident not in used)
    assert unused == [], f"registered in events.py but counted by no module: {unused}"


def _is_fallbacks(node: ast.AST) -> bool:
    """`x.fallbacks` or `rec["fallbacks"]`."""
    if isinstance(node, ast.Attribute):
        return node.attr == "fallbacks"
    return (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
            and node.slice.value == "fallbacks")


def test_no_module_counts_a_name_written_out_as_a_string():
    """Every counting site indexes the counters with a registered constant, never a literal, and
    no literal anywhere in the package spells a registered name outside events.py (a name once)."""
    literal_keys, spelled = [], []
    for path, text in SOURCES.items():
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Subscript) and _is_fallbacks(node.value)
                    and isinstance(node.slice, ast.Constant)):
                literal_keys.append(f"{path.name}:{node.lineno}: {node.slice.value!r}")
            if isinstance(node, ast.Constant) and node.value in REGISTRY and path.suffix == ".py":
                spelled.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert literal_keys == []
    # engine info keys and record fields may share a word with a counter; only exact names count
    assert [s for s in spelled if "gpu_unusable" not in s] == []


def test_the_counters_refuse_an_unregistered_name():
    c = Counts()
    c[events.TTT_FAILED] += 2
    c.update({events.BAD_TASK: 1})
    assert c == {"ttt_failed": 2, "bad_task": 1}
    with pytest.raises(UnknownFallback, match="ttt_faild"):
        c["ttt_faild"] += 1
    with pytest.raises(UnknownFallback):
        c.update({"nope": 1})
    with pytest.raises(UnknownFallback):
        Counts(nope=1)
    assert c == {"ttt_failed": 2, "bad_task": 1}  # nothing half-counted
