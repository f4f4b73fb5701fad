"""The pretrained files a recipe's members start from: what ``make weights`` fetches for a recipe
(``pipeline.weights``) and what the pre-flights of ``make all`` and ``make train`` (``train.preflight``)
require before any training.

Each member's config is resolved as training will resolve it (``train.registry.load_config``: the
defaults of ``configs/<family>.yaml`` <- the member's overrides). ``pretrained: auto`` needs the
catalogue file of the model (``catalog.match`` of the adapter's ``pretrained_key``: ``yolov8`` with
``size=s`` needs ``yolov8s.pt``); ``pretrained: <path>`` needs that file; ``none`` needs nothing, and
neither does ``auto`` for a model the catalogue has no file for (e.g. a ``resnet10t`` classifier).

    needs(recipe.detector_list() + recipe.classifier_list())  ->  [Need(member, file, entry), ...]
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from train.weights import catalog
from train.weights.resolve import AUTO, NONE, normalise


class Need(NamedTuple):
    """One file a member starts from."""

    member: str  # the member's name (``yolov8``, or its recipe name: ``yolov8s_512``)
    file: Path  # the file it starts from (``weights/yolov8s.pt`` or the given path)
    entry: catalog.Entry | None  # its catalogue entry (``pretrained: auto``); None for a given path


def member_need(model: str, overrides: list[str] | dict = ()) -> Need | None:
    """The file ``model`` with ``overrides`` starts from, or None (scratch, or no known file)."""
    from train import registry

    cfg = registry.load_config(model, overrides)
    setting = normalise(getattr(cfg, "pretrained", NONE))
    if setting == NONE:
        return None
    if setting != AUTO:
        return Need(model, Path(setting).expanduser(), None)
    entry = catalog.match(registry.get(model)().pretrained_key(cfg))
    return Need(model, entry.path, entry) if entry else None


def needs(members: Iterable[Any]) -> list[Need]:
    """The files the ``members`` (objects with ``.name``, ``.model`` and ``.overrides``, e.g. a recipe's
    ``TrainMember``) start from, one per member that starts from a file, in member order; each ``Need``
    names its member."""
    out = []
    for m in members:
        need = member_need(m.model, m.overrides)
        if need is not None:
            out.append(need._replace(member=m.name))
    return out


def entries(found: Iterable[Need]) -> list[catalog.Entry]:
    """The distinct catalogue entries of ``found`` (what ``make weights`` downloads), in order."""
    out: dict[str, catalog.Entry] = {}
    for need in found:
        if need.entry is not None:
            out.setdefault(need.entry.name, need.entry)
    return list(out.values())
