"""Prediction tables reused while what they depend on is unchanged.

``member_meta`` records what a member's table depends on: its weights (path,
size, mtime), views, threshold and the images themselves (a digest of every
image's name and content, ``cytocore.images.content_digest``), so a changed image
or another data folder with the same names is predicted again. ``cached_table``
reuses the table at a path while its sidecar ``.json`` matches, else makes it
again and writes both atomically.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from cytocore import images, paths, predictions
from cytocore.io import atomic_write_text

log = logging.getLogger(__name__)


def is_fresh(path: Path, meta: dict) -> bool:
    """Whether the table at ``path`` may be reused for ``meta``: its sidecar ``.json`` records the same
    inputs (views: the same or more than asked)."""
    path = Path(path)
    side = path.with_suffix(".json")
    if not (path.exists() and side.exists()):
        return False
    try:
        old = json.loads(side.read_text())
    except json.JSONDecodeError:
        return False
    same = ({k: v for k, v in old.items() if k != "views"} == {k: v for k, v in meta.items() if k != "views"})
    return same and set(meta.get("views", [])) <= set(old.get("views", []))


def cached_table(path: Path, meta: dict, make: Callable[[], pd.DataFrame],
                 force: bool = False) -> pd.DataFrame:
    """The prediction table at ``path`` when its sidecar ``.json`` matches ``meta``; else ``make()`` it.

    The sidecar records the weights (path, size and modification time), views,
    threshold and the images' contents, so a retrained member, a new view or a
    changed image is predicted again. A table holding MORE views than asked (e.g.
    after tuning dropped some) is reused, cut to the views asked.
    """
    path = Path(path)
    if not force and is_fresh(path, meta):
        log.info("%s is up to date; reusing it", paths.shown(path))
        views = list(meta.get("views", []))
        table = predictions.read(path)
        return table[table["view"].isin(views)].reset_index(drop=True) if views else table
    df = make()
    predictions.write(df, path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")
    return df


class StreamedTable:
    """A prediction table written chunk by chunk (``add``), made visible at ``close`` with its sidecar
    (as ``cached_table`` writes them): nothing of it stays in memory between chunks."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = Path(path), meta
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.part")
        self.writer = None
        self.rows = 0

    def add(self, df: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not len(df):
            return
        df = predictions.validate(df, str(self.path))
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pandas(df, preserve_index=False)
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        else:
            table = pa.Table.from_pandas(df, schema=self.writer.schema, preserve_index=False)
        self.writer.write_table(table)
        self.rows += len(df)

    def close(self) -> None:
        if self.writer is None:
            predictions.write(predictions.empty(), self.path)
        else:
            self.writer.close()
            os.replace(self.tmp, self.path)
        atomic_write_text(self.path.with_suffix(".json"), json.dumps(self.meta, indent=1) + "\n")

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


def member_meta(weights: Path, views: Sequence[str], conf: float, max_det: int, names: Sequence[str],
                images_dir: Path, backend: dict | None = None) -> dict:
    """What a member's prediction table of the images ``names`` in ``images_dir`` depends on
    (compared by ``cached_table``): its weights, views, threshold, the images' contents and the
    backend its network runs with (``infer.predict.member_backend``: an export's file included).
    Raises ``FileNotFoundError`` (one line) for missing weights or images."""
    weights = Path(weights).resolve()
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: member weights not found; train the member first (make "
                                "train MODEL=... FOLD=...) or set its weights path in the ensemble config")
    st = weights.stat()
    return {"weights": str(weights), "weights_bytes": st.st_size, "weights_mtime_ns": st.st_mtime_ns,
            "views": list(views), "conf": conf, "max_det": max_det, "images": len(names),
            "images_sha256": images.content_digest(images_dir, names), **(backend or {"backend": "torch"})}
