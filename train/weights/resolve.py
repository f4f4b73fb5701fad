"""``pretrained: auto | none | PATH``: the file a model starts from, and a log line that says which.

``auto`` (every model's default) takes the model's file in ``weights/`` (``catalog.match``) when it
is there and trains from scratch otherwise, saying so with the ``make weights`` hint; ``none``
trains from scratch; anything else is a local file that must exist. Nothing here touches the
network.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from train.weights import catalog
from train.weights.errors import WeightsError

log = logging.getLogger("train.weights")
AUTO, NONE = "auto", "none"
RECORD = "pretrained.json"  # in a run folder: the setting and the file the run started from
_SCRATCH = ("", "none", "null", "false", "scratch")


def normalise(value: object) -> str:
    """A config value as ``auto``, ``none`` or a path string (``None``, ``""``, ``false`` -> ``none``)."""
    if value is None or value is False:
        return NONE
    text = str(value).strip()
    if text.lower() in _SCRATCH:
        return NONE
    return AUTO if text.lower() == AUTO else text


def resolve(pretrained: object, model_key: str, what: str, record: Path | None = None) -> Path | None:
    """The weights file ``what`` (e.g. ``yolov8 fold 0``) starts from, or None for random init.

    ``model_key`` is the model's ``<kind>:<architecture>`` (``yolo:yolov8n``); a given path that
    does not exist raises ``WeightsError``. ``record``: a run folder, where ``pretrained.json`` then
    says what the run started from (``make report`` shows it).
    """
    path = _resolve(normalise(pretrained), model_key, what)
    if record is not None:
        from cytocore.io import atomic_write_text

        atomic_write_text(Path(record) / RECORD, json.dumps(
            {"pretrained": normalise(pretrained), "file": str(path) if path else None}) + "\n")
    return path


def _resolve(value: str, model_key: str, what: str) -> Path | None:
    if value == NONE:
        log.info("%s: pretrained: none -> training from scratch", what)
        return None
    if value != AUTO:
        path = Path(value).expanduser()
        if not path.is_file():
            raise WeightsError(path, "weights file not found (auto, none or a local "
                                     "file; `make weights` downloads the known ones into weights/)")
        log.info("%s: pretrained: %s", what, path)
        return path
    entry = catalog.match(model_key)
    if entry is None:
        log.info("%s: pretrained: auto -> from scratch (no pretrained file is known for %s)", what,
                 model_key.partition(":")[2])
        return None
    if entry.path.is_file():
        log.info("%s: pretrained: auto -> %s (%s)", what, entry.path, entry.about)
        return entry.path
    log.warning("%s: pretrained: auto -> from scratch: %s is not there (`make weights` downloads it, "
                "or pretrained=none silences this)", what, entry.path)
    return None
