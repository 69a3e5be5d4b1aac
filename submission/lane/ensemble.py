"""How the lane's answers join the neural path's attempts for one task record.

A lane answer exists only where a program reproduced every demo exactly. Policies:

* ``lane-first`` (the default): attempt 1 is the lane's first answer; attempt 2 is the model's
  first answer that differs from it (else the lane's second). A verified program's first answer
  was wrong for 0 of the 98 ARC-AGI-1 training tasks it answered and 1 of 53 evaluation tasks
  (README, "Program-search lane"); keeping the model's top answer as attempt 2 hedges those rare
  false positives.
* ``neural-first``: the model's attempts stay; the lane fills the slots the model left empty.

Under both, a test input the neural path gave nothing for (TTT or sampling failed, the task was
given up or skipped) gets the lane's answers instead of placeholders.
"""

from __future__ import annotations

from typing import Any
from submission.events import LANE_ONLY_ATTEMPTS

Attempts = list[list[list[int]]]  # up to two grids (as lists) for one test input


def merge_two(neural: Attempts, lane: Attempts, policy: str) -> Attempts:
    """At most two distinct attempts for one test input."""
    order = [lane[0]] + neural + lane[1:] if policy == "lane-first" and lane else neural + lane
    out: Attempts = []
    for g in order:
        if g not in out:
            out.append(g)
        if len(out) == 2:
            break
    return out


def merge_record(record: dict[str, Any], lane: dict[str, Any], policy: str,
                 all_policies: bool) -> dict[str, Any]:
    """The task record with the lane's result under "lane" and the attempts merged. `lane` is
    LaneResult.to_json() plus "answers" (per test input, lists of grids as lists). With
    `all_policies`, every test entry also lists "lane-only" and "neural-only" attempts."""
    answers = lane.get("answers") or []
    neural = record.get("attempts") or [[] for _ in answers]
    merged = [merge_two(list(n), list(answers[i]) if i < len(answers) else [], policy)
              for i, n in enumerate(neural)]
    rec = dict(record)
    rec["lane"] = {k: v for k, v in lane.items() if k != "answers"}
    rec["attempts"] = merged
    rec["fallbacks"] = dict(rec.get("fallbacks") or {})
    if lane.get("found") and any(not n for n in neural):
        rec["fallbacks"][LANE_ONLY_ATTEMPTS] = sum(1 for n in neural if not n)
    if all_policies:
        tests = {t.get("test_index"): dict(t) for t in rec.get("tests") or []}
        for i, n in enumerate(neural):
            entry = tests.setdefault(i, {"test_index": i})
            by = dict(entry.get("attempts_by_policy") or {})
            by["lane-only"] = list(answers[i]) if i < len(answers) else []
            by["neural-only"] = list(n)
            entry["attempts_by_policy"] = by
        rec["tests"] = [tests[i] for i in sorted(tests, key=lambda k: (k is None, k))]
    return rec
