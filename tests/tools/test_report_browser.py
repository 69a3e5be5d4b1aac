"""The report of a real 3-task CPU run, loaded in headless Debian chromium: no console errors, one
card per task, filters and sorting change what is shown (by URL hash and by clicking), a screenshot.

Chromium is driven by its command line only (--dump-dom, --screenshot; console messages come on
stderr with --enable-logging), so no browser-automation package is needed. Skipped, with the
reason, when no chromium binary is found (`.ci/run` installs Debian's `chromium` package).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from submission.tools.report import build_report, write_report
from tests.helpers import SMALL

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not found: install Debian's `chromium` "
                                                "package (apt-get install chromium) to run this test"),
]

CARD = re.compile(r'<article class="task"[^>]*>')

CLICKS = """<script>
(function () {
  var out = [];
  function shown() { return document.getElementById("shown").textContent + ":" +
    Array.prototype.filter.call(document.querySelectorAll("article.task"),
      function (c) { return !c.hidden; }).map(function (c) { return c.id.slice(2); }).join(","); }
  [["filter", "solved"], ["filter", "fellback"], ["filter", "unsolved"], ["filter", "all"],
   ["sort", "time"]].forEach(function (k) {
    document.querySelector("[data-" + k[0] + "='" + k[1] + "']").click();
    out.push(k[1] + "=" + shown());
  });
  var p = document.createElement("pre");
  p.id = "probe";
  p.textContent = out.join("\\n") + "\\nhash=" + location.hash;
  document.body.appendChild(p);
})();
</script>
</body>"""


# Opens every <details>, then measures each summary panel at the window's width: how far its
# content overflows (scrollWidth - clientWidth), its widest text node, how far any text reaches
# past the panel's edges, and the fewest characters per line of any text node of 12 or more characters
# (a squeezed column wraps one character per line).
LAYOUT = """<script>
(function () {
  Array.prototype.forEach.call(document.querySelectorAll("details"), function (d) { d.open = true; });
  var out = [];
  Array.prototype.forEach.call(document.querySelectorAll("#summary > .panel"), function (p) {
    var box = p.getBoundingClientRect(), widest = 0, worst = "", past = -1e9, texts = 0;
    var perLine = 1e9, squeezed = "";
    var walk = document.createTreeWalker(p, NodeFilter.SHOW_TEXT, null);
    for (var n = walk.nextNode(); n; n = walk.nextNode()) {
      var text = n.textContent.trim();
      if (!text) continue;
      var r = document.createRange();
      r.selectNodeContents(n);
      var tops = {};
      Array.prototype.forEach.call(r.getClientRects(), function (q) {
        texts += 1;
        tops[Math.round(q.top)] = 1;
        if (q.width > widest) { widest = q.width; worst = text.slice(0, 40); }
        past = Math.max(past, q.right - box.right, box.left - q.left);
      });
      var lines = Object.keys(tops).length;
      if (text.length >= 12 && lines && text.length / lines < perLine) {
        perLine = text.length / lines; squeezed = text.slice(0, 40);
      }
    }
    out.push([p.id, p.scrollWidth - p.clientWidth, Math.round(widest), p.clientWidth,
              Math.ceil(past), perLine.toFixed(1), texts, JSON.stringify(worst), JSON.stringify(squeezed)].join("\\t"));
  });
  var pre = document.createElement("pre");
  pre.id = "layout";
  pre.textContent = out.join("\\n");
  document.body.appendChild(pre);
})();
</script>
</body>"""


@pytest.fixture(scope="module")
def run_report(tmp_path_factory, engine):
    """A dry-run's workdir (data/, run/, submission.json) on 3 public tasks with the tiny model."""
    from submission.runtime.run import run
    from submission.arc.tasks import export_kaggle, load_dataset

    wd = tmp_path_factory.mktemp("report-run")
    tasks = dict(list(load_dataset("arc-agi-1", "evaluation").items())[:3])
    challenges, _ = export_kaggle(tasks, wd / "data", "evaluation")
    cfg = SMALL.with_overrides([
        "budget.workers=0", "budget.calibrate=false", "ttt.max_samples=4", "sampling.n_views=2",
        "selection.rescore_augmentations=2", "selection.max_rescore=2", "sampling.dfs_max_paths=2",
        "lane.enabled=true", "lane.processes=1"])
    run(challenges, None, wd / "submission.json", wd / "run", cfg, all_policies=True, engine=engine)
    return wd, write_report(wd), list(tasks)


@pytest.fixture(scope="module")
def panels_page(run_report, engine, tiny_model, tmp_path_factory):
    """The same run's report with the Run, Backends and Calibration panels a dry-run fills: a
    calibration measured on the engine (calibrate.py), the engine arguments and memory plan that
    `plan_memory_for_run` records on this machine, and the backends nested as the worker path
    records them (workers.py: per-worker engine info and calibrations)."""
    from types import SimpleNamespace

    from submission.worker.calibrate import calibrate
    from submission.runtime.startup import plan_memory_for_run

    wd = tmp_path_factory.mktemp("panels") / "w"
    shutil.copytree(run_report[0], wd)
    cal = {"source": "measured", **calibrate(engine, SMALL, steps=2, side=4)}
    state = SimpleNamespace(cfg=SMALL, info={}, chunk_size=SMALL.sampling.max_loras)
    plan_memory_for_run(state, tiny_model)
    assert "lora_target_modules" in state.info["engine_kwargs"]
    run_json = wd / "run" / "run.json"
    run = json.loads(run_json.read_text())
    run.update(state.info, calibration=cal, backends={
        "workers": 1, "worker_info": {"0": run["backends"], "ready": True}, "killed": [],
        "calibrations": {"0": cal}})
    run_json.write_text(json.dumps(run))
    return wd, write_report(wd), cal


def slowest(data: dict) -> list[str]:
    """Task ids slowest first as the page sorts them: by time to the millisecond it carries
    (data-time), ties in task order."""
    order = sorted(enumerate(data["tasks"]), key=lambda it: (-round(it[1]["seconds"], 3), it[0]))
    return [t["id"] for _, t in order]


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--no-first-run", "--no-default-browser-check",
           f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def console(proc: subprocess.CompletedProcess) -> list[str]:
    """The page's console messages (chromium logs them as CONSOLE lines on stderr)."""
    return [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]


def dom(tmp: Path, url: str, *args: str) -> str:
    proc = chromium(tmp, *args, "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console(proc) == []
    assert re.search(r"<html[^>]*data-errors", proc.stdout) is None  # window.onerror's record
    return proc.stdout


def visible_cards(html: str) -> list[str]:
    return [re.search(r'id="t-([^"]+)"', c).group(1) for c in CARD.findall(html) if "hidden" not in c]


def test_page_loads_with_one_card_per_task(run_report, tmp_path):
    wd, page, ids = run_report
    html = dom(tmp_path, page.as_uri())
    assert len(CARD.findall(html)) == len(ids) == 3
    assert visible_cards(html) == ids  # challenge order, none hidden
    assert 'data-view="all order"' in html and '<b id="shown">3</b>' in html
    # The page really has content of every kind: grids, attempts marked, timings.
    assert html.count("<svg class=\"grid\"") >= 3 * 3 and "&#10007; wrong" in page.read_text()
    assert "re-scoring" in html and "Every selection policy" in html


def test_filters_and_sorting_by_url_hash(run_report, tmp_path):
    wd, page, ids = run_report
    data = build_report(wd)
    expect = {"solved": [t["id"] for t in data["tasks"] if t["status"] == "solved"],
              "unsolved": [t["id"] for t in data["tasks"] if t["status"] == "unsolved"],
              "fellback": [t["id"] for t in data["tasks"] if t["fallbacks"]],
              "faulted": [t["id"] for t in data["tasks"] if t["faults"]],
              "program": [t["id"] for t in data["tasks"] if t["lane"] and t["lane"]["found"]]}
    assert expect["program"] == ["00576224"]  # the lane's verified program on ARC-AGI-1's first task
    seen = {}
    for name, want in expect.items():
        html = dom(tmp_path, f"{page.as_uri()}#filter={name}")
        assert f'data-view="{name} order"' in html
        seen[name] = visible_cards(html)
        assert seen[name] == want, name
        assert f'<b id="shown">{len(want)}</b>' in html
    assert any(len(v) != len(ids) for v in seen.values())  # a filter hides something
    html = dom(tmp_path, f"{page.as_uri()}#sort=time")
    slowest_first = slowest(data)
    assert visible_cards(html) == slowest_first


def test_clicking_filter_and_sort_buttons(run_report, tmp_path):
    wd, page, ids = run_report
    probe = tmp_path / "clicks.html"
    probe.write_text(page.read_text().replace("</body>", CLICKS))
    html = dom(tmp_path, probe.as_uri())
    lines = dict(ln.split("=", 1) for ln in re.search(r'<pre id="probe">(.*?)</pre>', html, re.S)
                 .group(1).splitlines())
    data = build_report(wd)
    fell = [t["id"] for t in data["tasks"] if t["fallbacks"]]
    unsolved = [t["id"] for t in data["tasks"] if t["status"] == "unsolved"]
    solved = [t["id"] for t in data["tasks"] if t["status"] == "solved"]
    assert lines["solved"] == f"{len(solved)}:{','.join(solved)}"
    assert lines["fellback"] == f"{len(fell)}:{','.join(fell)}"
    assert lines["unsolved"] == f"{len(unsolved)}:{','.join(unsolved)}"
    assert lines["all"] == f"3:{','.join(ids)}"
    slowest_first = slowest(data)
    assert lines["time"] == f"3:{','.join(slowest_first)}"
    assert lines["hash"] == "#filter=all&amp;sort=time"


def test_screenshot(run_report, tmp_path):
    wd, page, ids = run_report
    shot = tmp_path / "report.png"
    proc = chromium(tmp_path, "--hide-scrollbars", "--window-size=1400,2400",
                    f"--screenshot={shot}", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console(proc) == []
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_summary_panels_fit_their_width_at_1400px(panels_page, tmp_path):
    """Nested run and backend values wrap inside their panel: no panel needs a horizontal
    scrollbar, no text node is wider than its panel or reaches past it, none is squeezed to a
    few characters per line; the calibration figures are labelled in words with units."""
    wd, page, cal = panels_page
    probe = tmp_path / "layout.html"
    probe.write_text(page.read_text().replace("</body>", LAYOUT))
    html = dom(tmp_path, probe.as_uri(), "--window-size=1400,3000")
    rows = [ln.split("\t") for ln in re.search(r'<pre id="layout">(.*?)</pre>', html, re.S)
            .group(1).splitlines()]
    panels = {r[0]: r[1:] for r in rows}
    assert {"run-info", "backends", "calibration", "memory-plan", "config"} <= set(panels)
    for pid, (overflow, widest, width, past, per_line, texts, worst, squeezed) in panels.items():
        assert int(texts) > 0, pid
        assert int(overflow) <= 0, (pid, overflow)  # no horizontal scrollbar
        assert int(widest) <= int(width) and int(past) <= 0, (pid, widest, width, past, worst)
        assert float(per_line) >= 5, (pid, per_line, squeezed)
    text = re.sub(r"<[^>]+>", "", re.search(r'<div class="panel" id="calibration">(.*?)</div>\s*'
                                             r'<div class="panel"', page.read_text(), re.S).group(1))
    for words in ("training rate", "sampling rate", "generate call", "tokens/s"):
        assert words in text, words
    assert "generate_call_s" not in text and "score_forward_logprob" not in text
    assert {"generate_call_s", "train_tokens_per_s"} <= set(cal)  # the figures were there
    shot = tmp_path / "panels.png"
    proc = chromium(tmp_path, "--hide-scrollbars", "--window-size=1400,2400",
                    f"--screenshot={shot}", page.as_uri())
    assert proc.returncode == 0 and shot.stat().st_size > 20_000
