"""Recipes of the published anchors as config presets (plain TOML beside this file, each value
with its source): `--preset NAME` starts from one instead of the defaults; `--config` and `--set`
still override it. A `[preset]` table names what this kernel cannot reproduce of the recipe."""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

from submission.errors import ConfigError

NAMES = ("nvarc-2025", "architects-2024", "mit-2024")


def read_preset(name: str) -> tuple[dict[str, Any], list[str]]:
    """(config sections, notes on what is not reproduced) of preset `name`."""
    if name not in NAMES:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(NAMES)}")
    data = tomllib.loads(resources.files(__package__).joinpath(f"{name}.toml").read_text())
    meta = data.pop("preset", {})
    return data, list(meta.get("not_reproduced", []))
