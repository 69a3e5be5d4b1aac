"""Rendering of the run report (report.py builds the data): the jinja2 environment and the
helpers the page template calls: grids and loss curves as inline SVG, numbers and durations,
nested values as wrapped key/value rows, and the calibration figures labelled in words.

Everything returned is escaped HTML (`Markup`); nothing here reads files but the template.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from jinja2 import ChainableUndefined, Environment, FileSystemLoader, Undefined, select_autoescape
from markupsafe import Markup, escape

from submission.errors import SubmissionError

PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
TEMPLATE = "report.html.j2"
OPEN_MAX = 8  # nested groups of at most this many entries start unfolded; longer ones folded
BREAK_AFTER = "/_.,-=:"  # a long name or path may wrap after these characters
LONG_WORD = 16  # characters: a shorter word never wraps inside
# calibrate.py's figures: key -> (words, unit); a key not listed is shown by its name
CALIBRATION_LABELS = {
    "train_tokens_per_s": ("training rate", "tokens/s"),
    "sample_tokens_per_s": ("sampling rate", "tokens/s"),
    "score_tokens_per_s": ("re-scoring rate, sampler", "tokens/s"),
    "score_forward_tokens_per_s": ("re-scoring rate, forward pass", "tokens/s"),
    "train_step_s": ("one training step, after warm-up", "s"),
    "train_first_step_s": ("first training step, with warm-up", "s"),
    "steps": ("training steps measured", "steps"),
    "train_tokens": ("tokens trained on", "tokens"),
    "train_loss": ("training loss after them", ""),
    "views": ("views in the generate call", "views"),
    "prompt_tokens": ("prompt length, mean", "tokens"),
    "generated_tokens": ("tokens generated", "tokens"),
    "expected_answer_tokens": ("answer length allowed", "tokens"),
    "generate_call_s": ("generate call", "s"),
    "score_tokens": ("tokens per scoring call", "tokens"),
    "score_call_s": ("scoring call, sampler", "s"),
    "score_logprob": ("answer log-probability, sampler", "nats"),
    "score_forward_call_s": ("scoring call, forward pass", "s"),
    "score_forward_logprob": ("answer log-probability, forward pass", "nats"),
    "seconds": ("whole calibration", "s"),
    "device": ("device", ""), "dtype": ("weights dtype", ""),
    "trainer_backend": ("trainer", ""), "sampler_backend": ("sampler", ""),
    "seed": ("seed", ""), "source": ("measured by", ""), "model": ("model", ""),
}
CALIBRATION_GROUPS = (("Rates", ("train_tokens_per_s", "sample_tokens_per_s", "score_tokens_per_s",
                                 "score_forward_tokens_per_s")),
                      ("Training", ("train_step_s", "train_first_step_s", "steps", "train_tokens",
                                    "train_loss")),
                      ("Sampling", ("views", "prompt_tokens", "generated_tokens",
                                    "expected_answer_tokens", "generate_call_s")),
                      ("Re-scoring", ("score_tokens", "score_call_s", "score_logprob",
                                      "score_forward_call_s", "score_forward_logprob")))


class ReportTemplateMissing(SubmissionError):
    """The page template is not installed beside this module."""


def finite(x: Any) -> float | None:
    """x as a float if it is a finite JSON number (not a bool), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def is_grid(g: Any) -> bool:
    """A non-empty rectangular list of lists of ints 0-9."""
    return (isinstance(g, list) and bool(g) and all(isinstance(r, list) and r for r in g)
            and len({len(r) for r in g}) == 1
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 9
                    for r in g for v in r))


def render_report(data: dict[str, Any]) -> str:
    """The HTML page of `report.build_report`'s data."""
    tdir = Path(__file__).parent / "templates"
    if not (tdir / TEMPLATE).is_file():
        raise ReportTemplateMissing(f"report template missing: {tdir / TEMPLATE}")
    env = Environment(loader=FileSystemLoader(str(tdir)), autoescape=select_autoescape(["j2", "html"]),
                      undefined=ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(grid=grid_svg, loss=loss_svg, secs=secs, num=fmt, rows=kv_rows,
                       calibration=calibration_rows, basename=lambda x: Path(str(x)).name,
                       pretty=lambda x: json.dumps(x, indent=1, sort_keys=True, default=str))
    return env.get_template(TEMPLATE).render(r=data)


# ---- nested values -----------------------------------------------------------------------------

def breakable(text: Any) -> Markup:
    """Escaped text whose words longer than `LONG_WORD` may wrap after `BREAK_AFTER` characters
    (a path, a dotted or snake_case name), so a long value wraps at its joints; short words
    (`v_proj`) stay whole."""
    out = []
    for word in re.split(r"(\s+)", str(text)):
        for ch in word:
            out.append(str(escape(ch)))
            if ch in BREAK_AFTER and len(word) > LONG_WORD:
                out.append("<wbr>")
    return Markup("".join(out))


def _nested(v: Any) -> bool:
    return (isinstance(v, dict) and bool(v)) or (
        isinstance(v, list) and any(isinstance(x, (dict, list)) and x for x in v))


def value_text(v: Any) -> Markup:
    """A scalar or a list of scalars as one wrapped line: lists joined with commas."""
    if isinstance(v, Undefined):
        v = None
    if isinstance(v, (list, tuple)):
        return Markup(", ").join(value_text(x) for x in v) if v else Markup('<span class="mut">none</span>')
    if isinstance(v, dict):
        return Markup('<span class="mut">none</span>')  # an empty one: _nested shows the others
    if isinstance(v, str):
        return breakable(v)
    return Markup(escape(fmt(v)))


def kv_rows(obj: Any, *, ordered: bool = False) -> Markup:
    """A JSON-like value as key/value rows: a dict's scalars and lists of scalars as one row each
    (key, then the value wrapping in the rest of the width); nested dicts and lists of them as
    groups under their key, unfolded up to `OPEN_MAX` entries, folded (<details>) beyond."""
    if isinstance(obj, list) and _nested(obj):
        obj, ordered = {f"[{i}]": x for i, x in enumerate(obj)}, True
    if not isinstance(obj, dict):
        return value_text(obj)
    if not obj:
        return Markup('<span class="mut">none</span>')
    keys = list(obj) if ordered else sorted(obj, key=str)
    parts = []
    for k in keys:
        v = obj[k]
        if _nested(v):
            n = len(v)
            opened = " open" if n <= OPEN_MAX else ""
            parts.append(f'<details class="kvg"{opened}><summary>{breakable(k)} '
                         f'<span class="mut">({n})</span></summary>{kv_rows(v)}</details>')
        else:
            parts.append(f'<div class="k">{breakable(k)}</div><div class="v">{value_text(v)}</div>')
    return Markup('<div class="kv">' + "".join(parts) + "</div>")


# ---- calibration -------------------------------------------------------------------------------

def _with_unit(v: Any, unit: str) -> Markup:
    x = finite(v)
    if x is None or not unit:
        return value_text(v)
    if unit == "s":
        return Markup(escape(secs(x) if x >= 10 else f"{x:.3g} s"))
    if unit == "tokens/s":
        return Markup(escape(f"{x:,.0f} tokens/s" if x >= 100 else f"{x:.3g} tokens/s"))
    return Markup(escape(f"{fmt(x)} {unit}"))


def _calibration_one(cal: dict[str, Any]) -> str:
    rows, seen = [], set()

    def row(label: str, value: Markup, key: str) -> str:
        return f'<div class="k" title="{escape(key)}">{escape(label)}</div><div class="v">{value}</div>'

    head = [k for k in ("source", "device", "dtype", "trainer_backend", "sampler_backend", "model",
                        "seconds", "seed") if k in cal]
    for k in head:
        rows.append(row(CALIBRATION_LABELS[k][0], _with_unit(cal[k], CALIBRATION_LABELS[k][1]), k))
        seen.add(k)
    task = cal.get("task")
    if isinstance(task, dict) and {"side", "demos"} <= set(task):
        rows.append(row("synthetic task", Markup(escape(
            f"{fmt(task['demos'])} demonstrations, {fmt(task['side'])} x {fmt(task['side'])} grids")), "task"))
        seen.add("task")
    for title, keys in CALIBRATION_GROUPS:
        mine = [k for k in keys if k in cal]
        if mine:
            rows.append(f'<div class="kh">{escape(title)}</div>')
            rows += [row(*CALIBRATION_LABELS[k][:1], _with_unit(cal[k], CALIBRATION_LABELS[k][1]), k)
                     for k in mine]
            seen.update(mine)
    rest = {k: v for k, v in cal.items() if k not in seen}
    out = '<div class="kv">' + "".join(rows) + "</div>"
    if rest:
        out += f'<details class="kvg"><summary>other figures <span class="mut">({len(rest)})</span>' \
               f'</summary>{kv_rows(rest)}</details>'
    return out


def calibration_rows(cal: Any) -> Markup:
    """The start-up calibration (calibrate.py) in words with units: one block, or one per worker
    when `cal` maps worker ids to calibrations."""
    if not isinstance(cal, dict):
        return kv_rows(cal)
    if cal and all(isinstance(v, dict) for v in cal.values()) and not set(cal) & set(CALIBRATION_LABELS):
        return Markup("".join(f'<h3>worker {escape(w)}</h3>{_calibration_one(c)}'
                              for w, c in sorted(cal.items(), key=lambda kv: str(kv[0]))))
    return Markup(_calibration_one(cal))


# ---- grids, curves, numbers --------------------------------------------------------------------
def grid_svg(g: Any, max_px: int = 240) -> Markup:
    """A grid as inline SVG: one path per colour (runs of equal cells merged) plus 1-px cell lines;
    cells of 8 to 24 px, so a 30x30 grid stays readable."""
    if not is_grid(g):
        return Markup('<span class="nogrid">no grid</span>')
    h, w = len(g), len(g[0])
    cell = max(8, min(24, max_px // max(h, w)))
    runs: dict[int, list[str]] = defaultdict(list)
    for y, row in enumerate(g):
        x = 0
        while x < w:
            n = 1
            while x + n < w and row[x + n] == row[x]:
                n += 1
            runs[row[x]].append(f"M{x} {y}h{n}v1h-{n}z")
            x += n
    paths = "".join(f'<path fill="{PALETTE[c]}" d="{"".join(d)}"/>' for c, d in sorted(runs.items()))
    lines = "".join([f"M0 {y}H{w}" for y in range(1, h)] + [f"M{x} 0V{h}" for x in range(1, w)])
    grid = f'<path class="gl" d="{lines}"/>' if lines else ""
    return Markup(f'<svg class="grid" width="{w * cell}" height="{h * cell}" viewBox="0 0 {w} {h}" '
                  f'shape-rendering="crispEdges"><title>{h}x{w}</title>{paths}{grid}</svg>')


def loss_svg(losses: list[float]) -> Markup:
    """A TTT loss curve (one point per logged step) as a small inline SVG."""
    if len(losses) < 2:
        return Markup("")
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0
    pts = " ".join(f"{i * 200 / (len(losses) - 1):.1f},{4 + 52 * (hi - v) / span:.1f}"
                   for i, v in enumerate(losses))
    return Markup(f'<svg class="loss" width="240" height="72" viewBox="-4 0 208 60">'
                  f'<title>TTT loss per step: {hi:.3g} max, {lo:.3g} min</title>'
                  f'<polyline points="{pts}"/></svg>')


def secs(x: Any) -> str:
    """A duration: "12.3 s", "4.5 min", "2.0 h"; "–" when not a number."""
    x = finite(x)
    if x is None:
        return "–"
    if x < 120:
        return f"{x:.1f} s"
    return f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.1f} h"


def fmt(x: Any, digits: int = 3) -> str:
    """A number in few digits (integers whole), true/false, "–" for none, else the text."""
    if isinstance(x, Undefined):
        x = None
    if isinstance(x, bool) or x is None:
        return "–" if x is None else str(x).lower()
    v = finite(x)
    if v is None:
        return str(x)
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.1f}" if 100 <= abs(v) < 1e15 else f"{v:.{digits}g}"


