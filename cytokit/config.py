"""Typed configuration: a dataclass per step, a YAML per model, ``key=value`` overrides.

``load(Cls, yaml_path, overrides)`` builds a dataclass instance from (in order of
precedence) the command-line overrides, the YAML file and the dataclass
defaults. Unknown keys are an error that names the valid ones; values are
parsed with YAML (``epochs=3`` is an int, ``device=cpu`` a string,
``scales=[1.0,1.25]`` a list) and checked against the field's type.
``save(cfg, path)`` writes the resolved config next to the outputs.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cytokit.io import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override the kit cannot use; the message says which key and why."""


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["epochs=3", "device=cpu"]`` -> ``{"epochs": 3, "device": "cpu"}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        out[key] = yaml.safe_load(raw) if raw.strip() else None
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (an empty file is an empty mapping)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def _coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    """Check (and gently convert) ``value`` against the field's type hint."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: {name}: bad value {value!r}")
    if hint is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        items = [_coerce(name, v, inner, source) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {name} must be a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if hint is Path and isinstance(value, (str, Path)):
        return Path(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{source}: {name} must be {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{source}: {name} must be int, got {value!r}")
    return value


def _renamed(cls: type, values: dict[str, Any], source: str, strict: bool) -> dict[str, Any]:
    """Keys a config class renamed (its ``RENAMED`` mapping, old -> new): an error naming the new key
    when ``strict`` (a command-line override), else read under the new name (a config file or a
    run folder written before the rename)."""
    renamed = {old: new for old, new in getattr(cls, "RENAMED", {}).items() if old in values}
    if not renamed:
        return values
    if strict:
        old, new = next(iter(renamed.items()))
        raise ConfigError(f"{source}: {old}= is now {new}= (see its comment in the model's configs/*.yaml)")
    out = dict(values)
    for old, new in renamed.items():
        out.setdefault(new, out.pop(old))
    return out


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config",
              strict_renames: bool = False) -> T:
    """Build ``cls`` from a mapping; unknown keys raise ``ConfigError`` listing the valid ones."""
    values = _renamed(cls, values, source, strict_renames)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(k, v, hints[k], source) for k, v in values.items()}
    return cls(**kwargs)


def load(cls: type[T], yaml_path: Path | None = None, overrides: dict[str, Any] | list[str] = ()) -> T:
    """Dataclass defaults <- YAML file <- overrides (a dict or ``key=value`` strings)."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(read_yaml(Path(yaml_path)))
    extra = parse_overrides(list(overrides)) if not isinstance(overrides, dict) else dict(overrides)
    source = str(yaml_path) if yaml_path else "config"
    from_dict(cls, extra, "override", strict_renames=True)  # name the bad override itself, if any
    return from_dict(cls, {**values, **extra}, source + (" + overrides" if extra else ""))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A YAML-friendly dict of a config dataclass (paths as strings, tuples as lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def save(cfg: Any, path: Path) -> Path:
    """Write the resolved config as YAML (atomically) and return the path."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return Path(path)
