"""Typed fields of frozen config dataclasses: build a section tree from nested dicts, parse `--set`
values, and the per-field checks every section runs (finite floats, `Literal` choices, ranges).

Nothing here knows a section by name; `sections.py` describes them and `files.py` reads files.
Every error is one `ConfigError` line naming the key (`config ttt.lora.r=0: ...`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import reprlib
import typing
from typing import Any, Literal, Mapping

from submission.errors import ConfigError


@functools.cache
def hints(cls: Any) -> dict[str, Any]:
    """A dataclass's field types, with string annotations resolved (Literal aliases included)."""
    return typing.get_type_hints(cls)


def is_section(tp: Any) -> bool:
    """Whether a field type is a nested section (a dataclass) rather than a value."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def choices(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a `Literal[...]` type, else None."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def short(value: Any) -> str:
    """A bounded repr for error messages (values may be huge or deeply nested)."""
    try:
        return reprlib.repr(value)
    except (RecursionError, ValueError):
        return f"a {type(value).__name__}"


def renamed_error(key: str, new: str) -> ConfigError:
    return ConfigError(f"config {key}: renamed to {new}")


def build(cls: Any, data: Any, where: str, base: Any, renamed: Mapping[str, str]) -> Any:
    """`base` (an instance of `cls`) with the values of `data` set, nested sections recursively.
    Unknown keys raise ConfigError; a key in `renamed` (old dotted key: new) names its new key."""
    if not isinstance(data, dict):
        raise ConfigError(f"config {where or 'top level'}: expected an object, got {type(data).__name__}")
    types = hints(cls)
    for name in data:
        if (old := f"{where}.{name}" if where else name) in renamed:
            raise renamed_error(old, renamed[old])
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ConfigError(f"config {where or 'top level'}: unknown keys {unknown}; known: {sorted(types)}")
    kwargs = {}
    for name, value in data.items():
        tp, key = types[name], f"{where}.{name}" if where else name
        kwargs[name] = (build(tp, value, key, getattr(base, name), renamed) if is_section(tp)
                        else coerce(value, tp, key))
    return dataclasses.replace(base, **kwargs)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """A file's value as the field's type (an int is a float; a list of strings a tuple)."""
    allowed = choices(tp)
    if allowed is not None:
        if not isinstance(value, str) or value not in allowed:
            raise ConfigError(f"config {key}={short(value)}: choose one of {', '.join(allowed)}")
        return value
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config {key}: expected a list of strings, got {short(value)}")
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"config {key}: expected {tp.__name__}, got {short(value)}")
    return value


def parse_value(raw: str, tp: Any, key: str) -> Any:
    """A `--set` string as the field's type (checked again, with the file rules, by `build`)."""
    try:
        if tp is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
        if typing.get_origin(tp) is tuple:
            return [s.strip() for s in raw.split(",") if s.strip()]
        return raw
    except ValueError as exc:
        raise ConfigError(f"--set {key}={reprlib.repr(raw)}: not a valid "
                          f"{getattr(tp, '__name__', tp)}") from exc


def check_fields(section: Any, where: str) -> None:
    """The checks every field of a section gets: floats are finite, choices are allowed values."""
    cls: Any = type(section)
    for name, tp in hints(cls).items():
        value = getattr(section, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config {where}.{name}={value}: must be finite")
        allowed = choices(tp)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"config {where}.{name}={short(value)}: choose one of "
                              f"{', '.join(allowed)}")


def positive(section: Any, where: str, *names: str) -> None:
    for name in names:
        if not getattr(section, name) > 0:  # also rejects NaN
            raise ConfigError(f"config {where}.{name} must be positive")


def within(section: Any, where: str, name: str, lo: float, hi: float = math.inf) -> None:
    """`lo <= value <= hi`, inclusive; the message names the span."""
    value = getattr(section, name)
    if not lo <= value <= hi:
        span = f">= {lo:g}" if math.isinf(hi) else f"in {lo:g}..{hi:g}"
        raise ConfigError(f"config {where}.{name}={short(value)}: must be {span}")


def flatten(data: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """{"ttt.lora.r": 8, ...}: every value of a nested dict under its dotted key."""
    out: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        out.update(flatten(value, key) if isinstance(value, Mapping) else {key: value})
    return out
