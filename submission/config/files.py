"""A config from a preset, a JSON or TOML file over it, then `--set` overrides; and which keys a
user set. Reading only: the sections and their checks are in `sections.py`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from submission.config.fields import flatten
from submission.config.sections import Config
from submission.errors import ConfigError


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                preset: str | None = None) -> Config:
    """Config from a preset (None: defaults), a JSON or TOML file over it, then `--set` overrides."""
    data: dict[str, Any] = {}
    if preset is not None:
        from submission.presets import read_preset

        data = read_preset(preset)[0]
    if path is not None:
        data = _merge(data, read_config_file(path))
    return Config.from_dict(data).with_overrides(overrides)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, tables merged key by key (a file's [ttt.lora] keeps a preset's r)."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw nested dict of a JSON or TOML config file (ConfigError if unreadable)."""
    from submission.runtime.paths import regular_input
    from submission.arc.tasks import _DuplicateKey, _no_duplicates

    p = Path(path)
    regular_input(p, "--config")
    try:
        text = p.read_text()
        # a repeated key is refused as in challenge files (TOML refuses it itself)
        data = (tomllib.loads(text) if p.suffix == ".toml"
                else json.loads(text, object_pairs_hook=_no_duplicates))
    except _DuplicateKey as exc:
        raise ConfigError(f"config file {p}: duplicate key {exc.args[0]!r}") from exc
    except (OSError, ValueError) as exc:  # ValueError: bad JSON/TOML, an integer over the digit limit
        raise ConfigError(f"config file {p}: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"config file {p}: nested too deeply") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be an object")
    return data


def explicit_keys(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                  preset: str | None = None) -> frozenset[str]:
    """The dotted keys a user set (`ttt.lora.r`), in a preset, the config file or as overrides."""
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    if preset is not None:
        from submission.presets import read_preset

        keys |= set(flatten(read_preset(preset)[0]))
    if path is not None:
        keys |= {k for k in flatten(read_config_file(path)) if "." in k}
    return frozenset(keys)
