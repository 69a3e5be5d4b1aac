"""Build the Kaggle notebooks from the package: `python build_kernel.py [--check] [overrides]`.

Generates (never edit them by hand; rerun after any change to `submission/`, `requirements.txt`,
`kaggle/kernel.json` or `kaggle/cells/`): `notebook.ipynb` + `kernel-metadata.json`, the offline
competition kernel that embeds every `submission/**/*.py` file, installs the pinned GPU stack from a
wheelhouse dataset and runs `python -m submission kaggle`; and
`kaggle/wheelhouse/{notebook.ipynb,kernel-metadata.json}`, the one-time wheel builder (internet on).
The cells' code and text are the files in `kaggle/cells/` (filled in as described at CELLS_DIR).
Options live in `kaggle/kernel.json`; --competition, --id, --title, --wheels-dataset and
--model-source override them and are saved back (not with --check). `--check` rebuilds in memory and
exits 1 listing every stale or missing file. Output is deterministic (sorted files, no timestamps,
JSON indent=1 + newline). Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
OPTIONS_FILE = "kaggle/kernel.json"
DEFAULTS = {
    "id": "your-kaggle-user/arc-ttt-kernel",
    "title": "ARC TTT kernel",
    "competition": "arc-prize-2026-arc-agi-2",
    "wheels_dataset": "your-kaggle-user/arc-ttt-wheels",
    "model_sources": ["your-kaggle-user/arc-ttt-qwen3-4b/transformers/default/1"],
    "dataset_sources": [],
    "machine_shape": "NvidiaL4",
}
WHEEL_BUILDER_SLUG = "arc-ttt-wheel-builder"

# The cells live in kaggle/cells/, one file a cell: `.md` a Markdown cell, `.py` a code cell (real Python, which
# ruff checks). How a cell file is filled in, one convention for every cell:
# - a code line `NAME = <stand-in>  # filled by build_kernel.py` becomes `NAME = <value>`, the value a literal
#   written as JSON (strings, and lists and objects of strings, are Python literals in JSON);
# - a code line ending in `# dropped by build_kernel.py` is left out: it imports what an earlier cell of the
#   same notebook defines (the cells share one namespace), so that each file reads as Python on its own;
# - in a Markdown cell `@NAME@` is replaced by the value's text.
# A placeholder without a value is an error.
CELLS_DIR = "kaggle/cells"
KERNEL_CELLS = ["kernel_intro.md", "kernel_install.py", "kernel_unpack.py", "kernel_run.py"]
WHEELS_CELLS = ["wheels_intro.md", "wheels_driver.py", "wheels_download.py", "wheels_verify.py", "wheels_next.md"]
FILLED = re.compile(r"^([A-Za-z_]\w*) = .*  # filled by build_kernel\.py\n", re.M)
DROPPED = re.compile(r"^.*  # dropped by build_kernel\.py\n", re.M)
MARKDOWN_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


def cell(root: Path, name: str, code: dict[str, str], text: dict[str, str]) -> tuple[str, str]:
    """(cell type, source) of one cell file, filled in: `code` maps a code cell's NAME to the JSON of its
    value, `text` maps a Markdown cell's @NAME@ to its text."""
    path = root / CELLS_DIR / name
    source = path.read_text(encoding="utf-8")
    markdown = path.suffix == ".md"
    pattern, values = (MARKDOWN_PLACEHOLDER, text) if markdown else (FILLED, code)
    missing = sorted({m.group(1) for m in pattern.finditer(source)} - set(values))
    if missing:
        raise SystemExit(f"error: {CELLS_DIR}/{name}: no value for the placeholders {missing}")
    if markdown:
        return "markdown", pattern.sub(lambda m: values[m.group(1)], source)
    return "code", pattern.sub(lambda m: f"{m.group(1)} = {values[m.group(1)]}\n", DROPPED.sub("", source))


def render(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def dataset_title(dataset_id: str) -> str:
    """A dataset title Kaggle accepts (6-50 characters) from the id's slug."""
    words = dataset_id.split("/")[1].replace("-", " ").replace("_", " ").strip()
    return (words if len(words) >= 6 else f"{words} wheelhouse".strip())[:50]


def requirements(root: Path) -> list[str]:
    lines = (root / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


PACKAGE_SUFFIXES = (".py", ".j2")  # modules and the report's templates


def package_sources(root: Path) -> dict[str, str]:
    files = sorted(p for p in (root / "submission").rglob("*")
                   if p.is_file() and p.suffix in PACKAGE_SUFFIXES and "__pycache__" not in p.parts)
    return {p.relative_to(root).as_posix(): p.read_bytes().decode("utf-8") for p in files}


def sources_sha256(sources: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sources, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def notebook(cells: list[tuple[str, str]]) -> dict:
    out = []
    for i, (kind, text) in enumerate(cells):
        cell = {"cell_type": kind, "id": f"cell-{i}", "metadata": {},
                "source": [ln for ln in re.split(r"(?<=\n)", text.strip("\n")) if ln]}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        out.append(cell)
    spec = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return {"cells": out, "metadata": {"kernelspec": spec, "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def metadata(kid: str, title: str, opts: dict, *, internet: bool, competitions: list[str],
             datasets: list[str], models: list[str]) -> dict:
    return {"id": kid, "title": title, "code_file": "notebook.ipynb", "language": "python",
            "kernel_type": "notebook", "is_private": True, "enable_gpu": True,
            "enable_internet": internet, "machine_shape": opts["machine_shape"],
            "competition_sources": competitions, "dataset_sources": datasets,
            "model_sources": models, "kernel_sources": []}


def build(root: Path, opts: dict) -> dict[str, str]:
    """{relative path: text} of every generated file."""
    reqs = json.dumps(requirements(root), indent=4)
    sources = package_sources(root)
    kernel_code = {"REQUIREMENTS": reqs, "SOURCES_SHA256": json.dumps(sources_sha256(sources)),
                   "SOURCES": json.dumps(sources, indent=1, sort_keys=True, ensure_ascii=False)}
    kernel = notebook([cell(root, name, kernel_code, {}) for name in KERNEL_CELLS])
    dataset = opts["wheels_dataset"]
    builder_id = dataset.split("/")[0] + "/" + WHEEL_BUILDER_SLUG
    title = dataset_title(dataset)
    wheels_code = {"REQUIREMENTS": reqs, "DATASET_ID": json.dumps(dataset, ensure_ascii=False),
                   "DATASET_TITLE": json.dumps(title, ensure_ascii=False)}
    wheels_text = {"DATASET": dataset, "BUILDER": builder_id, "DATASET_SLUG": dataset.split("/")[1],
                   "DATASET_TITLE": title}
    builder = notebook([cell(root, name, wheels_code, wheels_text) for name in WHEELS_CELLS])
    return {
        "notebook.ipynb": render(kernel),
        "kernel-metadata.json": render(metadata(
            opts["id"], opts["title"], opts, internet=False, competitions=[opts["competition"]],
            datasets=[opts["wheels_dataset"]] + list(opts["dataset_sources"]),
            models=list(opts["model_sources"]))),
        "kaggle/wheelhouse/notebook.ipynb": render(builder),
        "kaggle/wheelhouse/kernel-metadata.json": render(metadata(
            builder_id, "ARC TTT wheel builder", opts, internet=True, competitions=[],
            datasets=[], models=[])),
    }


def load_options(root: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """(options with the command-line overrides applied, options as stored in kernel.json)."""
    path = root / OPTIONS_FILE
    stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else dict(DEFAULTS)
    unknown = sorted(set(stored) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"error: {path}: unknown keys {unknown} (known: {sorted(DEFAULTS)})")
    opts = {**DEFAULTS, **stored}
    for key in ("competition", "id", "title", "wheels_dataset", "model_sources"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    for key in ("model_sources", "dataset_sources"):
        if not isinstance(opts[key], list) or not all(isinstance(v, str) for v in opts[key]):
            raise SystemExit(f"error: {OPTIONS_FILE}: {key} must be a list of strings")
    for key in ("id", "wheels_dataset"):
        if not isinstance(opts[key], str) or opts[key].count("/") != 1:
            raise SystemExit(f"error: {OPTIONS_FILE}: {key} must be 'owner/slug', got {opts[key]!r}")
    if slug(opts["title"]) != opts["id"].split("/")[1]:
        print(f"warning: Kaggle derives the slug from the title: {opts['title']!r} -> "
              f"{slug(opts['title'])!r}, but id is {opts['id']!r}", file=sys.stderr)
    return opts, stored


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    ap.add_argument("--competition")
    ap.add_argument("--id", help="kernel id, owner/slug")
    ap.add_argument("--title")
    ap.add_argument("--wheels-dataset", help="wheelhouse dataset, owner/slug")
    ap.add_argument("--model-source", dest="model_sources", action="append",
                    help="model source owner/model/framework/variation/version (repeatable)")
    args = ap.parse_args(argv)
    opts, stored = load_options(ROOT, args)
    wanted = build(ROOT, opts)
    if not (ROOT / OPTIONS_FILE).exists() or (opts != stored and not args.check):
        wanted[OPTIONS_FILE] = render(opts)  # --check compares against the options as given
    bad = []
    for rel, text in sorted(wanted.items()):
        path = ROOT / rel
        current = path.read_bytes() if path.exists() else None
        if current == text.encode("utf-8"):
            continue
        if args.check:
            bad.append(f"{'missing' if current is None else 'stale'}: {rel}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))
            print(f"wrote {rel}")
    if bad:
        print("\n".join(bad) + "\nrebuild with: python build_kernel.py", file=sys.stderr)
        return 1
    print(f"{'in sync' if args.check else 'built'}: {len(wanted)} files "
          f"(sources sha256 {sources_sha256(package_sources(ROOT))[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
