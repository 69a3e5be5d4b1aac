"""The report of a real 3-task CPU run, loaded in headless Debian chromium: no console errors, one
card per task, filters and sorting change what is shown (by URL hash and by clicking), a screenshot.

Chromium is driven by its command line only (--dump-dom, --screenshot; console messages come on
stderr with --enable-logging), so no browser-automation package is needed. Skipped, with the
reason, when no chromium binary is found (`.ci/run` installs Debian's `chromium` package).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from submission.report import build_report, write_report
from tests.conftest import SMALL

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


@pytest.fixture(scope="module")
def run_report(tmp_path_factory, engine):
    """A dry-run's workdir (data/, run/, submission.json) on 3 public tasks with the tiny model."""
    from submission.run import run
    from submission.tasks import export_kaggle, load_dataset

    wd = tmp_path_factory.mktemp("report-run")
    tasks = dict(list(load_dataset("arc-agi-1", "evaluation").items())[:3])
    challenges, _ = export_kaggle(tasks, wd / "data", "evaluation")
    run(challenges, None, wd / "submission.json", wd / "run", SMALL.with_overrides(["budget.workers=0", "budget.calibrate=false", "ttt.max_samples=4", "sampling.n_views=2", "selection.rescore_augmentations=2", "selection.max_rescore=2", "sampling.dfs_max_paths=2"]),
        all_policies=True, engine=engine)
    return wd, write_report(wd), list(tasks)


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


def dom(tmp: Path, url: str) -> str:
    proc = chromium(tmp, "--dump-dom", url)
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
              "faulted": [t["id"] for t in data["tasks"] if t["faults"]]}
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
