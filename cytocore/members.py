"""A member's name: the one key of its files, weights and table rows.

A recipe or ensemble member is a registry ``model`` (which picks the adapter and
its family) and an optional ``name`` (default: the model). The name keys the run
folder (``work/runs/<dataset id>/<name>/fold<k>/``), the prediction tables, the
fusion weight, the tuned config, the comparison table's rows and the logs, so two
variants of one model coexist::

    detectors:
      - {name: yolov8s_512, model: yolov8, overrides: [size=s, imgsz=512]}
      - {name: yolov8m_640, model: yolov8, overrides: [size=m, imgsz=640]}

A member without a name keeps the paths it always had. Every module takes the key
from ``member_name`` (through the members' ``name`` attribute), never re-derives it.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from cytocore.config import ConfigError

NAME_CHARS = re.compile(r"[a-z0-9_-]+")  # a folder name on every file system: lowercase, digits, _ and -


def member_name(name: str | None, model: str, where: str = "member") -> str:
    """The key of a member: ``name``, else its registry ``model``; a key that is not a safe folder name
    (lowercase letters, digits, ``_``, ``-``) is refused in one line naming ``where``."""
    key = str(name or model)
    if not NAME_CHARS.fullmatch(key):
        raise ConfigError(f"{where}: name {key!r} is not a safe folder name; use lowercase letters, digits, "
                          "_ and - (e.g. yolov8s_512)")
    return key


def duplicates(names: Iterable[str]) -> list[str]:
    """The names listed more than once, sorted."""
    names = list(names)
    return sorted({n for n in names if names.count(n) > 1})


def train_vars(name: str, model: str) -> str:
    """The make variables that train a member: ``MODEL=yolov8``, or ``MODEL=yolov8 NAME=yolov8s_512``."""
    return f"MODEL={model}" + ("" if name == model else f" NAME={name}")
