"""The prediction contract: the ONE table every model writes and every later step reads.

One row per detected box:

==========  =======  =====================================================
column      dtype    meaning
==========  =======  =====================================================
NAME        str      image file name (as in train.csv / test.csv)
x1 y1 x2 y2 float64  absolute xyxy pixels in the ORIGINAL image
score       float64  detection confidence in [0, 1]
class       str      one of the 23 codes (``cytocore.classes.CLASSES``)
width       int64    original image width (px)
height      int64    original image height (px)
model       str      registry name of the member (``yolov8``, ``fasterrcnn``...)
fold        int64    fold whose model made it (-1: a model trained on all data,
                     or a fused ensemble)
view        str      TTA view name (``identity``, ``hflip``...; ``fused``)
p_<CODE>    float64  optional, all 23 or none: per-class probabilities
==========  =======  =====================================================

Ensembling, scoring and submission read only this table; model-specific
parsing stays in each model's adapter. Files are parquet, written atomically:
``work/preds/<model>/fold<k>/oof.parquet`` (the fold's validation images) and
``.../test.parquet`` (the test images).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import boxes, classes
from cytocore.io import atomic_write_df
from cytocore.tables import COORDS

COLUMNS: dict[str, str] = {
    "NAME": "str",
    "x1": "float64",
    "y1": "float64",
    "x2": "float64",
    "y2": "float64",
    "score": "float64",
    "class": "str",
    "width": "int64",
    "height": "int64",
    "model": "str",
    "fold": "int64",
    "view": "str",
}
PROB_COLUMNS = classes.PROB_COLUMNS
# The prediction tables of a model's fold, in its preds folder (Dataset.preds_dir):
OOF_FILE = "oof.parquet"  # training's out-of-fold table (train.oof): a finished run has it
OOF_TTA_FILE = "oof_tta.parquet"  # make infer's out-of-fold table, every TTA view
TEST_FILE = "test.parquet"  # make infer's test table, every TTA view
OOF_FILES = (OOF_TTA_FILE, OOF_FILE)  # the out-of-fold tables, preferred first


def empty(with_probs: bool = False) -> pd.DataFrame:
    """An empty prediction table with the contract's columns and dtypes."""
    cols = list(COLUMNS) + (list(PROB_COLUMNS) if with_probs else [])
    df = pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in cols})
    return df


def _dtype(col: str) -> str:
    if col in PROB_COLUMNS:
        return "float64"
    return "object" if COLUMNS[col] == "str" else COLUMNS[col]


def has_probs(df: pd.DataFrame) -> bool:
    return all(c in df.columns for c in PROB_COLUMNS)


def make(
    name: str,
    xyxy: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    width: int,
    height: int,
    model: str,
    fold: int,
    view: str = "identity",
    probs: np.ndarray | None = None,
) -> pd.DataFrame:
    """Rows for one image from arrays: ``labels`` are class ids, ``probs`` (N, 23) or None."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    n = len(xyxy)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    data = {
        "NAME": [name] * n,
        "x1": xyxy[:, 0], "y1": xyxy[:, 1], "x2": xyxy[:, 2], "y2": xyxy[:, 3],
        "score": np.asarray(scores, dtype=np.float64).reshape(-1),
        "class": np.asarray(classes.CLASSES, dtype=object)[labels] if n else np.array([], dtype=object),
        "width": np.full(n, int(width), dtype=np.int64),
        "height": np.full(n, int(height), dtype=np.int64),
        "model": [model] * n,
        "fold": np.full(n, int(fold), dtype=np.int64),
        "view": [view] * n,
    }
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64).reshape(n, classes.NUM_CLASSES)
        for j, col in enumerate(PROB_COLUMNS):
            data[col] = probs[:, j]
    if n == 0:
        return empty(with_probs=probs is not None)
    return pd.DataFrame(data)


def validate(df: pd.DataFrame, what: str = "predictions") -> pd.DataFrame:
    """Check the contract; return the table with canonical dtypes or raise ``ValueError``."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}")
    probs = [c for c in df.columns if c.startswith("p_")]
    if probs and set(probs) != set(PROB_COLUMNS):
        raise ValueError(f"{what}: per-class score columns must be all of p_<CODE> for the 23 codes or none")
    extra = [c for c in df.columns if c not in COLUMNS and c not in PROB_COLUMNS]
    if extra:
        raise ValueError(f"{what}: unexpected column(s) {', '.join(extra)}")
    out = df[list(COLUMNS) + (list(PROB_COLUMNS) if probs else [])].copy()
    for col, kind in COLUMNS.items():
        if kind != "str":
            out[col] = out[col].astype(kind)
        else:
            out[col] = out[col].astype(object)
    if len(out):
        boxes.validate(out[COORDS].to_numpy(), what)
        bad = ~out["class"].isin(classes.CLASSES)
        if bad.any():
            raise ValueError(f"{what}: unknown class {out['class'][bad].iloc[0]!r} ({int(bad.sum())} rows)")
        score = out["score"].to_numpy()
        if not np.isfinite(score).all() or (score < 0).any() or (score > 1).any():
            raise ValueError(f"{what}: scores must be finite and in [0, 1]")
        if (out["width"] <= 0).any() or (out["height"] <= 0).any():
            raise ValueError(f"{what}: width and height must be positive")
    return out.reset_index(drop=True)


def write(df: pd.DataFrame, path: Path) -> Path:
    """Validate and write a prediction table as parquet, atomically."""
    return atomic_write_df(validate(df, str(path)), Path(path))


def read(path: Path) -> pd.DataFrame:
    """Read and validate a prediction parquet."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: prediction file not found")
    return validate(pd.read_parquet(path), str(path))
