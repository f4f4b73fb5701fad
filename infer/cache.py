"""Prediction tables reused while what they depend on is unchanged.

``member_meta`` records what a member's table depends on: its weights (path,
size, mtime), views, threshold and the images themselves (a digest of every
image's name and content, ``cytokit.images.content_digest``), so a changed image
or another data folder with the same names is predicted again. ``cached_table``
reuses the table at a path while its sidecar ``.json`` matches, else makes it
again and writes both atomically.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from cytokit import images, predictions
from cytokit.io import atomic_write_text

log = logging.getLogger(__name__)


def cached_table(path: Path, meta: dict, make: Callable[[], pd.DataFrame],
                 force: bool = False) -> pd.DataFrame:
    """The prediction table at ``path`` when its sidecar ``.json`` matches ``meta``; else ``make()`` it.

    The sidecar records the weights (path, size and modification time), views,
    threshold and the images' contents, so a retrained member, a new view or a
    changed image is predicted again. A table holding MORE views than asked (e.g.
    after tuning dropped some) is reused, cut to the views asked.
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


def member_meta(weights: Path, views: Sequence[str], conf: float, max_det: int, names: Sequence[str],
                images_dir: Path) -> dict:
    """What a member's prediction table of the images ``names`` in ``images_dir`` depends on
    (compared by ``cached_table``). Raises ``FileNotFoundError`` (one line) for missing weights
    or images."""
    weights = Path(weights).resolve()
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: member weights not found; train the member first (make "
                                "train MODEL=... FOLD=...) or set its weights path in the ensemble config")
    st = weights.stat()
    return {"weights": str(weights), "weights_bytes": st.st_size, "weights_mtime_ns": st.st_mtime_ns,
            "views": list(views), "conf": conf, "max_det": max_det, "images": len(names),
            "images_sha256": images.content_digest(images_dir, names)}
