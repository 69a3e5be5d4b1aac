"""The run report's data and page, built from synthetic workdirs: finished, partial, old, corrupt."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from submission.cli import main
from submission.config import ANSWER_SECTIONS, Config
from submission.errors import InputError
from submission.tools.report import build_report, write_report
from submission.tools.report_view import PALETTE, grid_svg, render_report
from submission.tools.report_workdir import NotARunError, run_dir
from submission.arc.scoring import score_submission
from submission.answers import select as S
from submission.runtime.records import task_digest
from submission.answers.select import Candidate, rank
from submission.arc.tasks import parse_task

A = [[1, 2], [3, 4]]
B = [[5, 5], [5, 5]]
C = [[0]]
D = [[7, 8, 9]]

CHALLENGES = {
    "t_solved": {"train": [{"input": A, "output": B}], "test": [{"input": A}]},
    "t_partly": {"train": [{"input": A, "output": B}, {"input": B, "output": A}],
                 "test": [{"input": A}, {"input": B}]},
    "t_unsolved": {"train": [{"input": C, "output": D}], "test": [{"input": C}]},
}
SOLUTIONS = {"t_solved": [B], "t_partly": [A, C], "t_unsolved": [D]}
MODEL = {"path": "/models/m", "fingerprint": "f00d"}


def cand(grid, count, lps=None, from_base=False):
    return {"grid": grid, "count": count, "views": list(range(count)), "best_logprob": -0.5,
            "rescore_logprobs": lps, "from_base": from_base}


def record(attempts, tests, **extra):
    rec = {"timing": {"ttt_s": 2.0, "sample_s": 3.0, "rescore_s": 1.0, "select_s": 1.5},
           "fallbacks": {}, "plan": {"expected_s": 10.0, "ttt_s": 5.0}, "views": 8,
           "ttt": {"steps": 4, "planned_steps": 4, "samples": 8, "first_loss": 2.0,
                   "final_loss": 0.5, "seconds": 2.0, "stopped_by_deadline": False},
           "attempts": attempts, "tests": tests, "config": Config().to_json(ANSWER_SECTIONS),
           "model": MODEL}
    rec.update(extra)
    return rec


def records():
    return {
        "t_solved": record([[B, A]], [{
            "test_index": 0, "samples": 8, "unparsed": 0,
            "candidates": [cand(B, 5, [-1.0, -2.0]), cand(A, 3, [-0.1, -0.2])],
            "attempts_by_policy": {"vote": [B, A], "poe": [A, B], "count-nll": [B, A]}}]),
        "t_partly": record([[A, B], [D]], [
            {"test_index": 0, "samples": 8, "unparsed": 1, "candidates": [cand(A, 4)],
             "attempts_by_policy": {"vote": [A], "poe": [B], "count-nll": [A]}},
            {"test_index": 1, "samples": 8, "unparsed": 8, "candidates": [],
             "attempts_by_policy": {"vote": [], "poe": [], "count-nll": []}}],
            fallbacks={"attempt_placeholder": 1}),
        "t_unsolved": record([[C, A]], [{
            "test_index": 0, "samples": 4, "unparsed": 0,
            "candidates": [cand(C, 2, None, from_base=True), cand(A, 1)],
            "attempts_by_policy": {"vote": [C, A], "poe": [C, A], "count-nll": [C, A]}}],
            fallbacks={"attempt_from_base_model": 1, "ttt_failed": 1}),
    }


def make_run(root: Path, *, recs=None, with_run_json=True, layout="dry-run", run_extra=None,
             ids_in_run=None) -> Path:
    """A workdir as `dry-run` writes it (data/ + run/) or as `run` writes it (flat)."""
    recs = records() if recs is None else recs
    data = root / "data"
    data.mkdir(parents=True)
    (data / "arc-agi_evaluation_challenges.json").write_text(json.dumps(CHALLENGES))
    (data / "arc-agi_evaluation_solutions.json").write_text(json.dumps(SOLUTIONS))
    rdir = root / "run" if layout == "dry-run" else root
    (rdir / "tasks").mkdir(parents=True)
    cfg = Config().to_dict()
    (rdir / "config.json").write_text(json.dumps(cfg))
    for tid, rec in recs.items():
        (rdir / "tasks" / f"{tid}.json").write_text(json.dumps(rec))
    if with_run_json:
        ids = list(recs) if ids_in_run is None else ids_in_run
        run = {"config": cfg, "backends": {"workers": 2, "killed": [
                   {"worker": 1, "reason": "stage 'ttt' past its deadline", "tasks": ["t_partly"]}]},
               "seconds": 42.0, "time_budget_s": 100.0, "tasks": 3, "resumed": 0,
               "model": MODEL, "workdir": str(rdir),
               "fallbacks": {"bad_task": 0, "attempt_placeholder": 1, "attempt_from_base_model": 1,
                             "ttt_failed": 1, "view_demos_dropped": 2},
               "faults": [{"task": "t_unsolved", "stage": "ttt", "error": "RuntimeError('oom')"},
                          {"tasks": ["t_partly", "t_solved"], "stage": "chunk", "error": "boom"}],
               "per_task": {i: {k: v for k, v in recs[i].items() if k not in ("config", "model")}
                            for i in ids}}
        run.update(run_extra or {})
        (rdir / "run.json").write_text(json.dumps(run))
    return root


def by_id(data):
    return {t["id"]: t for t in data["tasks"]}


def test_finished_run_scores_statuses_and_summary(tmp_path):
    data = build_report(make_run(tmp_path))
    assert data["finished"] and not data["missing"] and not data["unreadable"]
    tasks = by_id(data)
    assert [t["id"] for t in data["tasks"]] == list(CHALLENGES)  # challenges order
    assert {i: t["status"] for i, t in tasks.items()} == {
        "t_solved": "solved", "t_partly": "partly", "t_unsolved": "unsolved"}
    assert data["counts"] == {"solved": 1, "partly": 1, "unsolved": 1, "unknown": 0}
    # Both scores are scoring.py's, on the recorded attempts.
    sub = {tid: [{"attempt_1": a[0], "attempt_2": a[1] if len(a) > 1 else None}
                 for a in rec["attempts"]] for tid, rec in records().items()}
    ref = score_submission(sub, {k: [np.array(g) for g in v] for k, v in SOLUTIONS.items()})
    assert data["scores"]["all"]["task_mean"] == pytest.approx(ref.score_task_mean) == (1 + 0.5) / 3
    assert data["scores"]["all"]["output_mean"] == pytest.approx(ref.score_output_mean) == 2 / 4
    # Every policy scored from attempts_by_policy: poe put A first for t_solved (still right: B 2nd).
    pol = data["scores"]["by_policy"]
    assert set(pol) == {"vote", "poe", "count-nll"}
    assert pol["poe"]["task_mean"] == pytest.approx(1 / 3)  # t_partly test 0 wrong under poe
    assert pol["vote"]["task_mean"] == pytest.approx(1.5 / 3)
    # Fallbacks by kind with the tasks they hit; run-level-only kinds keep their count.
    fb = {f["kind"]: f for f in data["fallbacks"]}
    assert fb["attempt_placeholder"]["tasks"] == ["t_partly"]
    assert fb["ttt_failed"]["tasks"] == ["t_unsolved"]
    assert fb["view_demos_dropped"] == {"kind": "view_demos_dropped", "count": 2, "tasks": []}
    assert "bad_task" not in fb  # zero counts are not fallbacks
    faults = {f["kind"]: f for f in data["faults"]}
    assert faults["ttt"]["tasks"] == ["t_unsolved"]
    assert faults["chunk"]["tasks"] == ["t_partly", "t_solved"]
    assert tasks["t_solved"]["faults"] and tasks["t_unsolved"]["faults"]
    # Time per stage: selection excludes the re-scoring it contains.
    assert dict(tasks["t_solved"]["stages"]) == {"TTT": 2.0, "sampling": 3.0, "re-scoring": 1.0,
                                                 "selection": 0.5}
    assert {s["name"]: s["seconds"] for s in data["stages"]}["sampling"] == pytest.approx(9.0)
    assert data["budget"]["planned_s"] == 30.0 and data["budget"]["tasks_s"] == pytest.approx(19.5)
    assert data["budget"]["seconds"] == 42.0 and data["budget"]["time_budget_s"] == 100.0
    assert data["workers"] == 2 and len(data["kills"]) == 1
    assert data["run_info"]["model"] == {"path": "/models/m", "fingerprint": "f00d"}
    assert data["other"] == {} and all(t["other"] == {} for t in data["tasks"])


def test_attempts_candidates_and_policies_marked(tmp_path):
    tasks = by_id(build_report(make_run(tmp_path)))
    t = tasks["t_solved"]["tests"][0]
    assert [a["right"] for a in t["attempts"]] == [True, False] and t["right"] is True
    assert t["truth"] == B and t["input"] == A
    assert {p["name"]: p["right"] for p in t["policies"]} == {"vote": True, "poe": True,
                                                              "count-nll": True}
    first = t["candidates"][0]
    assert first["right"] is True and first["picked"] == {"vote": 1, "poe": 2, "count-nll": 1}
    assert first["mean_rescore"] == pytest.approx(-1.5)
    p = tasks["t_partly"]["tests"]
    assert {x["name"]: x["right"] for x in p[0]["policies"]} == {"vote": True, "poe": False,
                                                               "count-nll": True}
    assert p[1]["right"] is False and p[1]["candidates"] == []
    assert tasks["t_partly"]["score"] == 0.5
    assert tasks["t_unsolved"]["tests"][0]["candidates"][0]["from_base"] is True
    assert tasks["t_solved"]["demos"] == [(A, B)]


def test_candidate_scores_follow_select_policies(tmp_path):
    """The poe and count-nll numbers shown rank candidates the way select.py does."""
    t = by_id(build_report(make_run(tmp_path)))["t_solved"]["tests"][0]
    cands = [Candidate(grid=np.array(c["grid"], dtype=np.uint8), count=c["count"], views=set(),
                       groups=set(), best_logprob=-0.5, first_seen=i, from_base=False,
                       rescore_logprobs=lps)
             for i, (c, lps) in enumerate(zip(t["candidates"], ([-1.0, -2.0], [-0.1, -0.2])))]
    for policy in ("poe", "count-nll"):
        shown = sorted(t["candidates"], key=lambda c: -c["scores"][policy])
        assert [c["grid"] for c in shown] == [c.grid.tolist() for c in rank(cands, policy)]
    assert t["candidates"][0]["scores"]["poe"] == pytest.approx((-1 + 3) + (-2 + 3))
    assert t["candidates"][0]["scores"]["count-nll"] == pytest.approx(5 - 1.5)


def test_candidate_scores_are_what_select_ranks_by(tmp_path):
    """Every shown policy score is select.policy_scores over the whole pool (votes: transform
    groups whose top 3 hold the grid, not the sample count), and ranks as select.rank does."""
    rng = np.random.default_rng(7)
    grids = [[[k]] for k in range(10)]
    samples = [S.Sample(view=i, group=int(rng.integers(0, 6)), grid=np.array(grids[k], np.uint8),
                        logprob=float(-rng.random()))
               for i, k in enumerate(rng.choice(10, size=60, p=np.arange(10, 0, -1) / 55))]
    cands = S.pool(samples)
    for c in cands[:6]:
        c.rescore_logprobs = [float(-rng.random() * 3) for _ in range(2)]
    expect = {c.key(): sc for c, sc in zip(cands, S.policy_scores(cands, poe_offset=1.5))}
    recs = records()
    entry = recs["t_solved"]["tests"][0]
    entry["candidates"] = S.candidate_records(cands, "vote", poe_offset=1.5)
    wd = make_run(tmp_path, recs=recs)
    cfg = json.loads((wd / "run" / "config.json").read_text())
    shown = by_id(build_report(wd))["t_solved"]["tests"][0]["candidates"]
    assert len(shown) == S.RECORDED_CANDIDATES < len(cands)  # votes need the whole pool
    assert cfg["selection"]["poe_offset"] != 1.5  # the run's stored scores, not recomputed
    for c in shown:
        want = expect[S.grid_key(np.array(c["grid"], np.uint8))]
        assert c["scores"] == pytest.approx(want), c["grid"]
    assert any(c["scores"]["vote"] != c["count"] for c in shown)  # votes are not counts
    for policy in S.POLICIES:
        order = [S.grid_key(c.grid) for c in S.rank(cands, policy, poe_offset=1.5)]
        ranked = sorted(shown, key=lambda c: order.index(S.grid_key(np.array(c["grid"], np.uint8))))
        values = [c["scores"][policy] for c in ranked]
        scored = [v for v in values if v is not None]
        assert values[:len(scored)] == scored and scored == sorted(scored, reverse=True), policy
    # A record from before scores were stored: poe and count-nll from select.py, no vote.
    for c in entry["candidates"]:
        del c["scores"]
    shown = by_id(build_report(make_run(tmp_path / "old", recs=recs)))["t_solved"]["tests"][0]
    offset = Config().selection.poe_offset
    for c in shown["candidates"]:
        cand = S.from_record({"grid": c["grid"], "count": c["count"], "rescore_logprobs":
                              next(x["rescore_logprobs"] for x in entry["candidates"]
                                   if x["grid"] == c["grid"])})
        want = S.policy_scores([cand], poe_offset=offset)[0]
        assert c["scores"]["vote"] is None
        assert c["scores"]["poe"] == pytest.approx(want["poe"])
        assert c["scores"]["count-nll"] == pytest.approx(want["count-nll"])


def test_records_of_another_run_are_listed_not_scored(tmp_path):
    """Only records of the run's identity (answer config, model, task content) are shown and
    scored; the others are listed as not from this run."""
    recs = records()
    for tid, rec in recs.items():
        rec["task_digest"] = task_digest(parse_task(tid, CHALLENGES[tid], file="c"))
    other_model = dict(recs["t_unsolved"], attempts=[[D]], model={"path": "/models/other"})
    cfg = Config().with_overrides(["selection.policy=poe"]).to_json(ANSWER_SECTIONS)
    other_config = dict(recs["t_partly"], attempts=[[A], [C]], config=cfg)
    wd = make_run(tmp_path, recs=recs, ids_in_run=["t_solved"])
    tdir = run_dir(wd) / "tasks"
    (tdir / "t_unsolved.json").write_text(json.dumps(other_model))
    (tdir / "t_partly.json").write_text(json.dumps(other_config))
    data = build_report(wd)
    assert [t["id"] for t in data["tasks"]] == ["t_solved"]
    assert data["missing"] == ["t_partly", "t_unsolved"]
    assert {f["task"]: f["differs"] for f in data["foreign"]} == {"t_partly": ["config"],
                                                                 "t_unsolved": ["model"]}
    assert data["scores"]["all"]["task_mean"] == pytest.approx(1 / 3)  # both would be right
    html = render_report(data)
    assert "Not from this run (2)" in html and html.count('<article class="task"') == 1
    # One grid cell of t_solved changes under the same id: its record is not this task's.
    changed = json.loads(json.dumps(CHALLENGES))
    changed["t_solved"]["train"][0]["input"][0][0] = 9
    (wd / "data" / "arc-agi_evaluation_challenges.json").write_text(json.dumps(changed))
    data = build_report(wd)
    assert data["tasks"] == [] and {f["task"]: f["differs"] for f in data["foreign"]} == {
        "t_solved": ["task"], "t_partly": ["config"], "t_unsolved": ["model"]}
    # A later run with another model, still going (no new run.json): its records are apart too.
    wd2 = make_run(tmp_path / "going", recs=records())
    newer = dict(records()["t_unsolved"], attempts=[[D]], model={"path": "/models/other"})
    (run_dir(wd2) / "tasks" / "t_unsolved.json").write_text(json.dumps(newer))
    old = time.time() - 100
    os.utime(run_dir(wd2) / "run.json", (old, old))
    tasks = by_id(build_report(wd2))
    assert tasks["t_unsolved"]["status"] == "unsolved"  # run.json's own record, not the newer one


def test_page_self_contained_and_complete(tmp_path):
    path = write_report(make_run(tmp_path))
    assert path == tmp_path / "report.html"
    html = path.read_text()
    assert html.count('<article class="task"') == 3
    for bad in ("http://", "https://", "src=", "<link", "@import", "url(", "//cdn"):
        assert bad not in html, bad
    for colour in ("#0074D9", "#FF4136", "#FFDC00", "#AAAAAA"):
        assert colour in html  # grids A and B use colours 1-5
    assert "&#10003; right" in html and "&#10007; wrong" in html
    for section in ('id="scores"', 'id="stages"', 'id="budget"', 'id="fallbacks"', 'id="faults"',
                    'id="config"', 'data-filter="fellback"', 'data-sort="time"'):
        assert section in html
    assert "stage &#39;ttt&#39; past its deadline" in html  # worker kill listed
    assert "/models/m" in html.replace("<wbr>", "") and 'id="run-info"' in html
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_grid_svg_palette_and_sizes():
    svg = str(grid_svg([[0, 1, 1], [9, 9, 9]]))
    assert svg.count("<path fill=") == 3  # one path per colour, equal cells merged
    assert f'fill="{PALETTE[0]}"' in svg and f'fill="{PALETTE[9]}"' in svg
    assert "M1 0h2v1h-2z" in svg and "M0 1h3v1h-3z" in svg
    big = str(grid_svg([[i % 10 for i in range(30)] for _ in range(30)]))
    assert 'width="240" height="240"' in big  # 8 px cells at 30x30
    assert 'width="24" height="24"' in str(grid_svg([[3]]))  # small grids are not blown up
    for bad in (None, [], [[1, 2], [3]], [[10]], "12", [[True]]):
        assert "no grid" in str(grid_svg(bad))


def test_partial_run_without_run_json_lists_missing_tasks(tmp_path):
    recs = records()
    del recs["t_partly"]
    wd = make_run(tmp_path, recs=recs, with_run_json=False)
    data = build_report(wd)
    assert not data["finished"] and data["missing"] == ["t_partly"]
    assert [t["id"] for t in data["tasks"]] == ["t_solved", "t_unsolved"]
    assert data["scores"]["all"]["tasks"] == 3  # the missing task scores 0 ...
    assert data["scores"]["finished"]["task_mean"] == pytest.approx(0.5)  # ... or is left out
    html = render_report(data)
    assert "partial run" in html and "t_partly" in html
    assert html.count('<article class="task"') == 2


def test_records_written_after_run_json_win(tmp_path):
    """A rerun still going: records newer than run.json replace its per_task entries."""
    wd = make_run(tmp_path, ids_in_run=["t_solved", "t_unsolved"])
    rdir = run_dir(wd)
    old = time.time() - 100
    os.utime(rdir / "run.json", (old, old))
    newer = records()["t_unsolved"]
    newer["attempts"] = [[D]]
    (rdir / "tasks" / "t_unsolved.json").write_text(json.dumps(newer))
    for tid in ("t_solved", "t_partly"):
        os.utime(rdir / "tasks" / f"{tid}.json", (old - 10, old - 10))
    tasks = by_id(build_report(wd))
    assert tasks["t_unsolved"]["status"] == "solved"
    assert "t_partly" in tasks  # only in tasks/: still shown


def test_task_id_read_from_record_not_file_name(tmp_path):
    recs = records()
    wd = make_run(tmp_path, recs={}, with_run_json=False)
    for i, (tid, rec) in enumerate(recs.items()):
        rec["task_id"] = tid
        (run_dir(wd) / "tasks" / f"h{i:04d}.json").write_text(json.dumps(rec))
    data = build_report(wd)
    assert [t["id"] for t in data["tasks"]] == list(CHALLENGES) and not data["missing"]


def test_old_run_with_missing_fields_renders(tmp_path):
    """An older run: records hold only attempts, run.json has no backends, faults or config."""
    recs = {"t_solved": {"attempts": [[B]]}, "t_partly": {"attempts": "garbage", "timing": 3,
                                                          "tests": [None, {"candidates": "x"}]},
            "t_unsolved": {}}
    wd = make_run(tmp_path, recs=recs, with_run_json=False, layout="run")
    (wd / "config.json").unlink()
    (wd / "run.json").write_text(json.dumps({"per_task": recs, "fallbacks": "?", "faults": None}))
    data = build_report(wd)
    tasks = by_id(data)
    assert tasks["t_solved"]["status"] == "solved" and tasks["t_partly"]["status"] == "unsolved"
    assert tasks["t_unsolved"]["stages"] == [] and data["config"] == {}
    html = render_report(data)
    assert html.count('<article class="task"') == 3 and "no timings" in html


def test_corrupt_record_is_listed_not_fatal(tmp_path):
    wd = make_run(tmp_path, with_run_json=False)
    tdir = run_dir(wd) / "tasks"
    (tdir / "broken.json").write_text('{"attempts": [[')
    (tdir / "listy.json").write_text("[1, 2]")
    (run_dir(wd) / "run.json").write_text("{not json")
    data = build_report(wd)
    bad = {Path(u["file"]).name for u in data["unreadable"]}
    assert bad == {"broken.json", "listy.json"}
    assert len(data["tasks"]) == 3 and any("run.json unreadable" in n for n in data["notes"])
    assert "broken.json" in render_report(data)


def test_new_run_fields_are_shown(tmp_path):
    extra = {"calibration": {"train_tokens_per_s": 1234.5}, "memory_plan": {"gpu_memory_utilization": 0.62},
             "lenient_parse": {"rows_trimmed": 3},
             "faults": [{"task": "t_solved", "kind": "hang", "stage": "sample", "error": "<script>x"}]}
    recs = records()
    recs["t_solved"]["ttt"]["losses"] = [3.0, 2.0, 1.5, 0.7]
    recs["t_solved"]["lenient_counts"] = {"rows": 2}
    data = build_report(make_run(tmp_path, recs=recs, run_extra=extra))
    assert data["calibration"] == extra["calibration"] and data["memory_plan"]
    assert data["other"] == {"lenient_parse": {"rows_trimmed": 3}}
    assert [f["kind"] for f in data["faults"]] == ["hang"]
    t = by_id(data)["t_solved"]
    assert t["losses"] == [3.0, 2.0, 1.5, 0.7] and t["other"] == {"lenient_counts": {"rows": 2}}
    html = render_report(data).replace("<wbr>", "")
    for text in ('id="calibration"', "training rate", "1,234 tokens/s", 'id="memory-plan"', "0.62",
                 "rows_trimmed", "lenient_counts", "<polyline"):
        assert text in html, text
    assert "<script>x" not in html and "&lt;script&gt;x" in html  # escaped


def test_no_solutions_means_no_marks(tmp_path):
    wd = make_run(tmp_path)
    (wd / "data" / "arc-agi_evaluation_solutions.json").unlink()
    data = build_report(wd)
    assert data["scores"] is None and data["solutions"] is None
    assert {t["status"] for t in data["tasks"]} == {"unknown"}
    assert all(a["right"] is None for t in data["tasks"] for x in t["tests"] for a in x["attempts"])
    assert "no solutions" in render_report(data)


def test_solutions_files_bad_or_explicit(tmp_path):
    wd = make_run(tmp_path)
    sol = wd / "data" / "arc-agi_evaluation_solutions.json"
    sol.write_text('{"t_solved": "nope"}')
    data = build_report(wd)  # found beside the challenges: a note, no score
    assert data["scores"] is None and any("solutions not used" in n for n in data["notes"])
    with pytest.raises(InputError, match="t_solved"):
        build_report(wd, solutions=sol)  # given explicitly: the user's error
    good = tmp_path / "sol.json"
    good.write_text(json.dumps(SOLUTIONS))
    assert build_report(wd, solutions=good)["counts"]["solved"] == 1


def test_not_a_run_directory(tmp_path, capsys):
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(NotARunError, match="run.json"):
        build_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a run directory" in err and "run.json" in err and "tasks/" in err


def test_cli_report(tmp_path, capsys):
    wd = make_run(tmp_path / "w")
    out = tmp_path / "o" / "r.html"
    assert main(["report", str(wd), "--out", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["report", str(wd)]) == 0 and (wd / "report.html").is_file()
    assert main(["report", str(wd), "--challenges", str(tmp_path / "none.json")]) == 2


def test_empty_run_just_started(tmp_path):
    wd = make_run(tmp_path, recs={}, with_run_json=False)
    data = build_report(wd)
    assert data["tasks"] == [] and data["missing"] == list(CHALLENGES)
    html = render_report(data)
    assert "No task has a record yet" in html
    assert re.search(r'<b id="shown">0</b>', html)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 12) | st.floats(allow_nan=False)
                    | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["grid", "count", "test_index", "attempts",
                                                       "candidates", "tests", "timing", "ttt",
                                                       "losses", "task", "x"]), inner, max_size=4),
                    max_leaves=12)
FIELDS = ["timing", "fallbacks", "plan", "ttt", "ttt_data", "attempts", "tests", "views", "faults",
          "task_id", "ttt_reused"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=st.dictionaries(st.sampled_from(list(CHALLENGES)), st.dictionaries(
    st.sampled_from(FIELDS), JSON, max_size=6), max_size=3),
       run_extra=st.dictionaries(st.sampled_from(["backends", "fallbacks", "faults", "calibration",
                                                   "memory_plan", "seconds", "tasks", "x"]), JSON,
                                 max_size=4))
def test_any_record_shape_renders(tmp_path_factory, recs, run_extra):
    """Whatever shape the records and run.json fields take, the report is built and rendered."""
    wd = make_run(tmp_path_factory.mktemp("fuzz"), recs=recs, run_extra=run_extra)
    data = build_report(wd)
    html = render_report(data)
    assert html.count('<article class="task"') == len(data["tasks"])


def test_lane_results_on_cards_summary_and_filter(tmp_path):
    recs = records()
    recs["t_solved"]["lane"] = {"found": True, "program": "flip_lr", "programs": ["flip_lr", "rot90"],
                                "cpu_s": 0.25, "timed_out": False, "states": 40, "error": ""}
    recs["t_unsolved"]["lane"] = {"found": False, "program": "", "programs": [], "cpu_s": 5.0,
                                  "timed_out": True, "states": 9000, "error": ""}
    lane_run = {"processes": 1, "task_cap_s": 5.0, "tasks": 3, "finished": 2, "found": 1}
    data = build_report(make_run(tmp_path, recs=recs, run_extra={"lane": lane_run}))
    tasks = by_id(data)
    assert tasks["t_solved"]["lane"] == {k: recs["t_solved"]["lane"][k] for k in
                                         ("found", "program", "programs", "cpu_s", "timed_out", "error")}
    assert tasks["t_partly"]["lane"] is None and "lane" not in tasks["t_solved"]["other"]
    assert data["lane"] == lane_run and "lane" not in data["other"]
    html = render_report(data)
    card = html.split('id="t-t_solved"')[1].split("</article>")[0]
    assert 'data-program="1"' in card and 'class="badge b-program"' in card
    assert "<code>flip_lr</code>" in card and "<code>rot90</code>" in card
    card = html.split('id="t-t_unsolved"')[1].split("</article>")[0]
    assert 'data-program="0"' in card and "stopped at its CPU cap" in card
    assert "no program" not in html.split('id="t-t_partly"')[1].split("</article>")[0]
    assert 'data-filter="program">program found (1)' in html
    assert '<div id="lane-summary">1 of 2 tasks with a verified program</div>' in html
