"""Report: one self-contained HTML page of a run: summary, every task, attempt, candidate and second.

Does: from what report_workdir.py reads of a run's workdir (run.json, config.json, tasks/*.json and,
when found, the challenges and solutions files; only the records of the run's identity count, the
others are listed), build plain JSON-like data (`build_report`), render that with the jinja2
template in templates/ (`report_view.render_report`) and write the page (`write_report`). Works on
a partial run (no run.json yet, some tasks missing) and on an older run's workdir: a missing or
malformed field is shown as absent, never an error. The page loads nothing from anywhere (no URLs,
no external files).
Does not: run, re-score or re-select anything; scores come from scoring.py, policy scores from
select.py.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from submission.arc.submit import ATTEMPT_KEYS
from submission.events import TTT_ADAPTER_REUSED
from submission.errors import InputError
from submission.runtime.files import write_text_atomic
from submission.runtime.run_report import migrate_run
from submission.runtime.schema import SCHEMA_KEY, SchemaError
from submission.tools.report_view import PALETTE, is_grid, render_report
from submission.tools.report_view import finite as _num
from submission.tools.report_workdir import (
    _d,
    _digests,
    _find_challenges,
    _find_solutions,
    _l,
    _load_challenges,
    _read,
    load_records,
    run_dir,
    run_identity,
)
from submission.arc.scoring import load_solutions, score_submission
from submission.answers.select import POLICIES, from_record, policy_scores
from submission.arc.tasks import read_json_object

STAGES = {"ttt_s": "TTT", "sample_s": "sampling", "rescore_s": "re-scoring", "select_s": "selection"}
RUN_INFO_KEYS = ("model", "workdir", "scratch", "engine_kwargs")
SHOWN_RUN_KEYS = {"config", "backends", "seconds", "tasks", "resumed", "fallbacks", "faults",
                  "per_task", "calibration", "memory_plan", "challenges", "solutions",
                  "time_budget_s", "lane", SCHEMA_KEY, *RUN_INFO_KEYS}
SHOWN_TASK_KEYS = {"timing", "fallbacks", "plan", "ttt", "ttt_data", "attempts", "tests", "views",
                   "config", "faults", "task_id", "id", "ttt_reused", "model", "task_digest", "lane",
                   SCHEMA_KEY}
# what a card shows of the program-search lane's result (lane/search.py LaneResult.to_json)
LANE_KEYS = ("found", "program", "programs", "cpu_s", "timed_out", "error")


def _same(a: Any, b: Any) -> bool:
    return is_grid(a) and is_grid(b) and a == b


# ---- building --------------------------------------------------------------------------------

def _stage_times(timing: dict) -> list[tuple[str, float]]:
    """(label, seconds) per stage; selection excludes the re-scoring it contains."""
    t = {k: v for k, v in ((k, _num(v)) for k, v in timing.items()) if v is not None}
    if "select_s" in t and "rescore_s" in t:
        t["select_s"] = max(0.0, t["select_s"] - t["rescore_s"])
    known = [(STAGES[k], t[k]) for k in STAGES if k in t]
    other = [(k[:-2] if k.endswith("_s") else k, v) for k, v in t.items() if k not in STAGES]
    return known + other


def _candidate_scores(entry: dict, poe_offset: float) -> list[dict[str, float | None]]:
    """Per recorded candidate of one test input, its score under every policy: as recorded when
    the run wrote them (select.candidate_records, over the whole pool), else computed by
    select.policy_scores from the recorded candidates, without "vote" (its transform groups were
    not recorded)."""
    cands = [c for c in _l(entry.get("candidates")) if isinstance(c, dict)]
    if cands and all(isinstance(c.get("scores"), dict) for c in cands):
        return [{p: _num(c["scores"].get(p)) for p in POLICIES} for c in cands]
    parsed = [from_record(c, i) for i, c in enumerate(cands)]
    ok = [c for c in parsed if c is not None]
    computed = iter(policy_scores(ok, poe_offset=poe_offset))
    return [{p: None if p == "vote" or s is None else _num(s[p]) for p in POLICIES}
            for s in (next(computed) if c is not None else None for c in parsed)]


def _by_index(tests: Any) -> dict[int, dict]:
    """A record's per-test entries by their `test_index` (list position when absent or odd)."""
    out = {}
    for i, t in enumerate(_l(tests)):
        if isinstance(t, dict):
            k = t.get("test_index", i)
            out[k if isinstance(k, int) and not isinstance(k, bool) else i] = t
    return out


def _fault_tasks(f: dict) -> list[str]:
    ids = [f["task"]] if isinstance(f.get("task"), str) else []
    return ids + [t for t in _l(f.get("tasks")) if isinstance(t, str)]


def _fault_kind(f: dict) -> str:
    return str(f.get("kind") or f.get("stage") or "unknown")


def build_task(tid: str, rec: dict, challenge: dict, truths: list | None, faults: list[dict],
               poe_offset: float, policy: str | None) -> dict[str, Any]:
    """Everything one task card shows."""
    attempts = _l(rec.get("attempts"))
    tests_by_index = _by_index(rec.get("tests"))
    inputs = [t.get("input") for t in _l(challenge.get("test")) if isinstance(t, dict)]
    n = max(len(attempts), len(inputs), len(tests_by_index), len(truths or []))
    tests, right = [], 0
    for i in range(n):
        entry = _d(tests_by_index.get(i))
        truth = truths[i] if truths is not None and i < len(truths) else None
        mine = [g for g in _l(attempts[i])][:2] if i < len(attempts) else []
        marks = [{"grid": g, "right": _same(g, truth) if truth is not None else None} for g in mine]
        ok = any(m["right"] for m in marks)
        right += ok
        by_policy = {p: _l(a)[:2] for p, a in _d(entry.get("attempts_by_policy")).items()}
        cands = []
        scores = _candidate_scores(entry, poe_offset)
        for c, sc in zip((x for x in _l(entry.get("candidates")) if isinstance(x, dict)), scores):
            g = c.get("grid")
            picked = {p: k + 1 for p, a in by_policy.items() for k, x in enumerate(a) if _same(x, g)}
            lps = [_num(x) for x in _l(c.get("rescore_logprobs"))]
            cands.append({"grid": g, "count": c.get("count"), "views": len(_l(c.get("views"))),
                          "best_logprob": _num(c.get("best_logprob")),
                          "mean_rescore": (sum(x for x in lps if x is not None) / len(lps)
                                           if lps and None not in lps else None),
                          "from_base": bool(c.get("from_base")),
                          "scores": sc, "picked": picked,
                          "right": _same(g, truth) if truth is not None else None})
        policies = [{"name": p, "right": any(_same(g, truth) for g in a) if truth is not None
                     else None} for p, a in by_policy.items()]
        tests.append({"index": i, "input": inputs[i] if i < len(inputs) else None, "truth": truth,
                      "attempts": marks, "right": ok if truth is not None else None,
                      "candidates": cands, "policies": policies,
                      "samples": entry.get("samples"), "unparsed": entry.get("unparsed")})
    score = right / len(truths) if truths else None
    status = ("unknown" if score is None else "solved" if score == 1 else
              "partly" if score > 0 else "unsolved")
    fallbacks = {k: v for k, v in _d(rec.get("fallbacks")).items() if _num(v)}
    if rec.get("ttt_reused"):
        fallbacks.setdefault(TTT_ADAPTER_REUSED, 1)
    my_faults = [f for f in faults if tid in _fault_tasks(f)] + [
        f for f in _l(rec.get("faults")) if isinstance(f, dict)]
    stages = _stage_times(_d(rec.get("timing")))
    ttt = _d(rec.get("ttt"))
    losses = [x for x in (_num(v) for v in _l(ttt.get("losses"))) if x is not None]
    lane = _d(rec.get("lane"))
    return {"id": tid, "status": status, "score": score, "tests": tests,
            "demos": [(p.get("input"), p.get("output")) for p in _l(challenge.get("train"))
                      if isinstance(p, dict)],
            "stages": stages, "seconds": sum(s for _, s in stages),
            "plan": _d(rec.get("plan")), "views": rec.get("views"), "policy": policy,
            "ttt": {k: v for k, v in ttt.items() if k != "losses"}, "losses": losses,
            "ttt_data": _d(rec.get("ttt_data")), "fallbacks": fallbacks, "faults": my_faults,
            "lane": {k: lane[k] for k in LANE_KEYS if k in lane} if lane else None,
            "other": {k: v for k, v in rec.items() if k not in SHOWN_TASK_KEYS}}


def _scores(records: dict[str, dict], solutions: dict[str, list]) -> dict[str, Any]:
    """Both scores of the chosen attempts and, where recorded, of every policy's attempts."""
    def sub(get) -> dict[str, list]:
        out = {}
        for tid, rec in records.items():
            per = [get(rec, i) for i in range(len(solutions.get(tid, [])))]
            out[tid] = [{key: a[k] if k < len(a) else None for k, key in enumerate(ATTEMPT_KEYS)}
                        for a in per]
        return out

    def chosen(rec, i):
        a = _l(rec.get("attempts"))
        return _l(a[i]) if i < len(a) else []

    def summary(report) -> dict[str, Any]:
        return {"task_mean": report.score_task_mean, "output_mean": report.score_output_mean,
                "tasks": report.tasks, "outputs": report.test_outputs}

    sols = {k: v for k, v in solutions.items() if v}
    done = {k: v for k, v in sols.items() if k in records}
    result = {"all": summary(score_submission(sub(chosen), sols)),
              "finished": summary(score_submission(sub(chosen), done)) if done else None,
              "by_policy": {}}
    policies = sorted({p for rec in records.values() for t in _l(rec.get("tests"))
                       for p in _d(_d(t).get("attempts_by_policy"))})
    for p in policies:
        def get(rec, i, p=p):
            return _l(_d(_d(_by_index(rec.get("tests")).get(i)).get("attempts_by_policy")).get(p))
        result["by_policy"][p] = summary(score_submission(sub(get), done)) if done else None
    return result


def build_report(workdir: str | Path, *, solutions: str | Path | None = None,
                 challenges: str | Path | None = None) -> dict[str, Any]:
    """The report's data. `solutions`/`challenges` default to the files the run names or the
    Kaggle-style files found beside it; an explicitly given file that is bad raises InputError."""
    workdir = Path(workdir)
    rdir = run_dir(workdir)
    notes: list[str] = []
    run, err = _read(rdir / "run.json") if (rdir / "run.json").exists() else ({}, None)
    if err is not None or not isinstance(run, dict):
        notes.append(f"run.json unreadable: {err or 'not a JSON object'}")
        run = {}
    finished = bool(run)
    try:  # an older run.json is read in today's shape (one "backends" shape)
        run = migrate_run(run) if run else run
    except SchemaError as exc:
        notes.append(f"run.json: {exc}; read as it is")
    if not finished:
        notes.append("no run.json: the run is still going or was killed; showing the finished tasks")
    config = _d(run.get("config")) or _d(_read(rdir / "config.json")[0])
    ch_path = Path(challenges) if challenges else _find_challenges(workdir, rdir, run)
    if challenges and not ch_path.is_file():
        raise InputError("file not found", file=str(ch_path))
    if challenges:  # an explicitly given file that is bad: InputError naming it
        chal = {k: v for k, v in read_json_object(ch_path).items() if isinstance(v, dict)}
    else:
        chal = _load_challenges(ch_path, notes)
    want = run_identity(run, config)
    records, unreadable, foreign = load_records(rdir, run, want, _digests(chal, ch_path))
    if "model" not in want:
        notes.append("the run's model is not recorded here: records are matched to the run by "
                     "config and task content only")
    sol_path = Path(solutions) if solutions else _find_solutions(ch_path, run)
    sols: dict[str, list] = {}
    if sol_path is not None:
        try:
            sols = {k: [g.tolist() for g in v] for k, v in load_solutions(sol_path).items()}
        except InputError as exc:
            if solutions:
                raise
            notes.append(f"solutions not used: {exc}")
    sel = _d(config.get("selection"))
    poe_offset = _num(sel.get("poe_offset"))
    faults = [f for f in _l(run.get("faults")) if isinstance(f, dict)]
    order = list(chal) + sorted(t for t in records if t not in chal)
    tasks = [build_task(t, records[t], _d(chal.get(t)), sols.get(t), faults,
                        3.0 if poe_offset is None else poe_offset, sel.get("policy"))
             for t in order if t in records]
    counts = {s: sum(t["status"] == s for t in tasks) for s in ("solved", "partly", "unsolved", "unknown")}
    by_fb: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        for k in t["fallbacks"]:
            by_fb[k].append(t["id"])
    fb_counts = {k: v for k, v in _d(run.get("fallbacks")).items() if _num(v)}
    for k, ids in by_fb.items():
        fb_counts.setdefault(k, len(ids))
    by_fault: dict[str, list[dict]] = defaultdict(list)
    for f in faults + [f for t in tasks for f in _l(records[t["id"]].get("faults")) if isinstance(f, dict)]:
        by_fault[_fault_kind(f)].append(f)
    stage_tot: dict[str, float] = defaultdict(float)
    for t in tasks:
        for name, s in t["stages"]:
            stage_tot[name] += s
    longest = max(stage_tot.values(), default=0.0)
    slowest = max((t["seconds"] for t in tasks), default=0.0)
    for t in tasks:
        t["time_share"] = t["seconds"] / slowest if slowest else 0.0
    backends = _d(run.get("backends"))
    budget = _d(config.get("budget"))
    planned = [_num(t["plan"].get("expected_s")) for t in tasks]
    return {
        "workdir": str(workdir), "run_dir": str(rdir), "finished": finished, "notes": notes,
        "challenges": str(ch_path) if ch_path else None, "solutions": str(sol_path) if sols else None,
        "tasks_total": len(chal) or _num(run.get("tasks")) or len(records), "tasks": tasks,
        "missing": [t for t in chal if t not in records], "unreadable": unreadable,
        "lane": _d(run.get("lane")) or None,
        "lane_tasks": sum(t["lane"] is not None for t in tasks),
        "programs_found": sum(bool(t["lane"] and t["lane"].get("found")) for t in tasks),
        "foreign": foreign,
        "resumed": run.get("resumed"),
        "scores": _scores(records, sols) if sols else None, "counts": counts,
        "fallbacks": [{"kind": k, "count": v, "tasks": by_fb.get(k, [])}
                      for k, v in sorted(fb_counts.items())],
        "faults": [{"kind": k, "entries": v, "tasks": sorted({i for f in v for i in _fault_tasks(f)})}
                   for k, v in sorted(by_fault.items())],
        "stages": [{"name": k, "seconds": v, "share": v / longest if longest else 0.0}
                   for k, v in stage_tot.items()],
        "budget": {"time_budget_s": _num(run.get("time_budget_s", budget.get("time_budget_s"))),
                   "seconds": _num(run.get("seconds")),
                   "planned_s": sum(p for p in planned if p is not None) if any(
                       p is not None for p in planned) else None,
                   "tasks_s": sum(t["seconds"] for t in tasks)},
        "workers": backends.get("workers"), "kills": [k for k in _l(backends.get("killed"))],
        "calibration": next((x for x in (run.get("calibration"), backends.get("calibrations"),
                                          backends.get("calibration")) if x), None),
        "memory_plan": run.get("memory_plan", backends.get("memory_plan")),
        "backends": {k: v for k, v in backends.items()
                     if k not in ("killed", "calibration", "calibrations", "memory_plan")},
        "run_info": {k: run[k] for k in RUN_INFO_KEYS if k in run},
        "card_ids": {t["id"] for t in tasks},
        "config": config, "policy": sel.get("policy"),
        "other": {k: v for k, v in run.items() if k not in SHOWN_RUN_KEYS},
        "palette": PALETTE,
    }


def check_report_paths(data: dict[str, Any], out: Path, solutions: str | Path | None) -> None:
    """InputError before writing if --out is a file the report reads or the run wrote (run.json,
    config.json, a task record, the submission, the challenges or solutions file)."""
    from submission.runtime.paths import Spot, check_paths

    rdir = Path(data["run_dir"])
    named = _d(_read(rdir / "run.json")[0]) if (rdir / "run.json").is_file() else {}
    ins = [Spot("WORKDIR", rdir / "run.json", part="run.json in"),
           Spot("WORKDIR", rdir / "config.json", part="config.json in"),
           Spot("WORKDIR", rdir / "tasks", "dir", "tasks/ in"),
           Spot("--challenges", data["challenges"]), Spot("--solutions", solutions or data["solutions"]),
           Spot("the run's --out", named.get("submission") if isinstance(named.get("submission"), str)
                else None)]
    check_paths(ins, [Spot("--out", out)])


def write_report(workdir: str | Path, *, solutions: str | Path | None = None,
                 out: str | Path | None = None, challenges: str | Path | None = None) -> Path:
    """Build and write the report (default `workdir/report.html`, atomically); returns its path."""
    data = build_report(workdir, solutions=solutions, challenges=challenges)
    out = Path(out) if out else Path(workdir) / "report.html"
    check_report_paths(data, out, solutions)
    html = render_report(data)
    write_text_atomic(out, html)
    return out
