"""Typed configuration: a dataclass per step, a YAML per model family, ``key=value`` overrides.

``load(Cls, yaml_path, overrides)`` builds a dataclass instance from (in order of
precedence) the command-line overrides, the YAML file and the defaults. Unknown
keys are an error that names the valid ones; values are parsed with YAML
(``epochs=3`` is an int, ``device=cpu`` a string, ``scales=[1.0,1.25]`` a list)
and checked against the field's type. ``save(cfg, path)`` writes the resolved
config next to the outputs.

Each default lives in ONE place. A plain step dataclass keeps its defaults in
its fields. A model config names its YAML instead (``DEFAULTS = "yolo.yaml"``
under ``configs/``) and its fields have no default: a field's default is that
file's value, the file's ``models: {<name>: {key: value}}`` section adding the
keys and values of one model of the family (``section``, e.g. ``cls_full``).
``RENAMED = {"old": "new"}`` on a class: an old key in an override is refused
with a line naming the new key; in a file (a run's saved config.yaml, a
checkpoint) it is read as the new key, with a warning.
"""
from __future__ import annotations

import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cytocore import paths
from cytocore.io import ConfigError, atomic_write_text

log = logging.getLogger(__name__)
T = TypeVar("T")
SECTIONS = "models"  # the key of a defaults file that holds the per-model sections


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["epochs=3", "device=cpu"]`` -> ``{"epochs": 3, "device": "cpu"}``. A YAML flow value split at
    its spaces (``make demo ARGS="pseudo={conf: 0.9}"`` passes ``pseudo={conf:`` and ``0.9}``) is joined
    back while its brackets are open."""
    out: dict[str, Any] = {}
    joined: list[str] = []
    for item in items:
        last = joined[-1] if joined else ""
        if "=" in last and _open_brackets(last.partition("=")[2]) > 0:
            joined[-1] = f"{last} {item}"
        else:
            joined.append(item)
    for item in joined:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        out[key] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _open_brackets(text: str) -> int:
    """How many of ``text``'s ``{`` and ``[`` are still open (quotes not considered)."""
    return sum(text.count(c) for c in "{[") - sum(text.count(c) for c in "}]")


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


def defaults_path(cls: type) -> Path | None:
    """``configs/<DEFAULTS>`` of a model config class; None for a class with its defaults in its fields."""
    name = getattr(cls, "DEFAULTS", None)
    return paths.CONFIGS / name if name else None


def file_defaults(cls: type, section: str | None = None) -> dict[str, Any]:
    """The values of ``cls``'s defaults file: its top level plus ``models: {section: ...}``.

    ``section`` defaults to the class's ``SECTION`` (None: the top level only).
    """
    path = defaults_path(cls)
    if path is None:
        return {}
    return read_values(path, section or getattr(cls, "SECTION", None))


def read_values(path: Path, section: str | None = None) -> dict[str, Any]:
    """A config file's values: its top level, plus ``models: {section: ...}`` of a family file."""
    data = read_yaml(path)
    sections = data.pop(SECTIONS, None) or {}
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise ConfigError(f"{path}: {SECTIONS} must map model names to mappings of key: value")
    return {**data, **(sections.get(section) or {})} if section else data


def required_fields(cls: type) -> list[str]:
    """The fields of ``cls`` without a default in the dataclass (their default is in its YAML)."""
    return [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def upgrade(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` with the old names of ``cls.RENAMED`` read as the new ones (a warning each)."""
    renamed = getattr(cls, "RENAMED", {})
    out = dict(values)
    for old in sorted(set(out) & set(renamed)):
        new = renamed[old]
        if new in out:
            raise ConfigError(f"{source}: both {old} and its new name {new}; keep {new} only")
        log.warning("%s: key %s is now called %s (read as %s)", source, old, new, new)
        out[new] = out.pop(old)
    return out


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config", section: str | None = None) -> T:
    """Build ``cls`` from a mapping; unknown keys raise ``ConfigError`` listing the valid ones.

    Fields missing from ``values`` take their dataclass default or, for a model config, the
    value of its defaults file (``file_defaults(cls, section)``).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    renamed = getattr(cls, "RENAMED", {})
    old = sorted(set(values) & set(renamed))
    if old:
        raise ConfigError(f"{source}: " + "; ".join(f"{k} is now called {renamed[k]}" for k in old)
                          + f" (write {renamed[old[0]]}=...)")
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(k, v, hints[k], source) for k, v in values.items()}
    missing = [k for k in required_fields(cls) if k not in kwargs]
    if missing:
        path = defaults_path(cls)
        found = file_defaults(cls, section)
        if stray := sorted(set(found) - set(fields)):
            raise ConfigError(f"{path}: unknown key(s) {', '.join(stray)}; "
                              f"valid keys: {', '.join(sorted(fields))}")
        absent = [k for k in missing if k not in found]
        if absent:
            raise ConfigError(f"{source}: no value for {', '.join(absent)}"
                              + (f" (and none in {path})" if path else ""))
        kwargs.update({k: _coerce(k, found[k], hints[k], str(path)) for k in missing})
    return cls(**kwargs)


def load(cls: type[T], yaml_path: Path | None = None, overrides: dict[str, Any] | list[str] = (),
         section: str | None = None) -> T:
    """Defaults <- YAML file <- overrides (a dict or ``key=value`` strings).

    The defaults are the dataclass's or its defaults file's (with ``section``, see ``from_dict``);
    ``yaml_path`` may be a family file too (its ``models:`` section for ``section`` applied).
    """
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(upgrade(cls, read_values(Path(yaml_path), section), str(yaml_path)))
    extra = parse_overrides(list(overrides)) if not isinstance(overrides, dict) else dict(overrides)
    source = str(yaml_path) if yaml_path else "config"
    from_dict(cls, extra, "override", section)  # name the bad override itself, if any
    return from_dict(cls, {**values, **extra}, source + (" + overrides" if extra else ""), section)


def check_defaults(cls: type, section: str | None = None) -> list[str]:
    """What disagrees between a model config class and its defaults file (empty when they agree).

    They agree when the file gives every field a value of the field's type (the top level in
    field order, then ``section``'s keys), names no other key, each key line carries a comment,
    and no field keeps a default of its own (a default lives in one place).
    """
    path = defaults_path(cls)
    if path is None:
        return [f"{cls.__name__} names no defaults file (DEFAULTS)"]
    problems = [f"{cls.__name__}.{f.name} has a default in the dataclass too"
                for f in dataclasses.fields(cls) if f.name not in required_fields(cls)]
    names = [f.name for f in dataclasses.fields(cls)]
    top = read_values(path)
    values = file_defaults(cls, section)
    if extra := sorted(set(values) - set(names)):
        problems.append(f"{path.name}: key(s) {', '.join(extra)} are not fields of {cls.__name__}")
    if absent := [k for k in names if k not in values]:
        problems.append(f"{path.name}: no value for {', '.join(absent)} ({cls.__name__})")
    if [k for k in top if k in names] != [k for k in names if k in top]:
        problems.append(f"{path.name}: keys not in the order of {cls.__name__}'s fields")
    for line in path.read_text().splitlines():
        body = line.split(" #", 1)[0].strip()
        if body and not line.lstrip().startswith("#") and ":" in body and " # " not in line:
            problems.append(f"{path.name}: no comment on {line.strip()!r}")
    if not problems:
        try:
            from_dict(cls, {}, str(path), section)
        except (ConfigError, TypeError, ValueError) as exc:
            problems.append(str(exc))
    return problems


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
