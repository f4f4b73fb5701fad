"""Prediction tables reused while what they depend on is unchanged.

``member_meta`` records what a member's table depends on (its weights, views,
threshold, images); ``cached_table`` reuses the table at a path while its
sidecar ``.json`` matches, else makes it again and writes both atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from cytokit import predictions
from cytokit.io import atomic_write_text

log = logging.getLogger(__name__)


def _names_digest(names: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(sorted(map(str, names))).encode()).hexdigest()


def cached_table(path: Path, meta: dict, make: Callable[[], pd.DataFrame],
                 force: bool = False) -> pd.DataFrame:
    """The prediction table at ``path`` when its sidecar ``.json`` matches ``meta``; else ``make()`` it.

    The sidecar records the weights (path and modification time), views, threshold
    and images, so a retrained member or a new view is predicted again. A table
    holding MORE views than asked (e.g. after tuning dropped some) is reused, cut
    to the views asked.
    """
    path = Path(path)
    side = path.with_suffix(".json")
    if not force and path.exists() and side.exists():
        try:
            old = json.loads(side.read_text())
        except json.JSONDecodeError:
            old = {}
        views = list(meta.get("views", []))
        same = ({k: v for k, v in old.items() if k != "views"}
                == {k: v for k, v in meta.items() if k != "views"})
        if same and set(views) <= set(old.get("views", [])):
            log.info("%s is up to date; reusing it", path)
            table = predictions.read(path)
            return table[table["view"].isin(views)].reset_index(drop=True) if views else table
    df = make()
    predictions.write(df, path)
    atomic_write_text(side, json.dumps(meta, indent=1) + "\n")
    return df


def member_meta(weights: Path, views: Sequence[str], conf: float, max_det: int, names: Sequence[str]) -> dict:
    """What a member's prediction table depends on (compared by ``cached_table``)."""
    weights = Path(weights).resolve()
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: member weights not found; train the member first (make "
                                "train MODEL=... FOLD=...) or set its weights path in the ensemble config")
    return {"weights": str(weights), "weights_mtime": weights.stat().st_mtime, "views": list(views),
            "conf": conf, "max_det": max_det, "images": len(names), "names_sha1": _names_digest(names)}
