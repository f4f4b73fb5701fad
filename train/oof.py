"""Out-of-fold predictions: a fold's validation images through a Predictor, scored.

``predict_images`` runs any ``train.base.Predictor`` over images read from disk
(original size, so boxes come out in original coordinates) and returns the
prediction table (``cytocore.predictions``) made by ``cytocore.rows``, the same
conversion inference uses. ``evaluate`` scores such a table on
the fold's validation boxes with the challenge metric (``cytocore.submission.oof_score``) and
mAP50 (``cytocore.coco_eval``). ``write_oof`` stores it as
``work/preds/<model>/fold<k>/oof.parquet``. Trainers call ``evaluate`` every
epoch to keep the best checkpoint; ``python -m train`` calls all three after a
fold is trained.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from cytocore import predictions, rows
from cytocore.images import load_rgb

log = logging.getLogger(__name__)

CHUNK = 32  # images decoded and handed to the predictor at a time


def oof_path(fold_data: Any, model: str) -> Path:
    """``<preds dir of model on the fold>/oof.parquet``."""
    return fold_data.preds_dir(model) / predictions.OOF_FILE


def predict_images(
    predictor: Any,
    images_dir: Path,
    names: list[str],
    model: str,
    fold: int,
    conf: float = 0.001,
    max_det: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Predict every image of ``names`` (read from ``images_dir``) as a prediction table: the rows of
    ``cytocore.rows`` (boxes clipped to the image, at most ``max_det`` per image, 0 = all)."""
    names = list(names)
    bar = tqdm(names, desc=f"predict {model} fold{fold}", unit="img", disable=not progress, leave=False,
               mininterval=2)
    pairs = ((n, load_rgb(Path(images_dir) / n)) for n in bar)
    return rows.predict_table(predictor, pairs, (rows.IDENTITY,), model, fold, conf, max_det, CHUNK)


def predict_fold(predictor: Any, fold_data: Any, model: str, conf: float = 0.001,
                 progress: bool = True, max_det: int = 0) -> pd.DataFrame:
    """The out-of-fold table: ``fold_data``'s validation images, original coordinates."""
    names = fold_data.val_images["NAME"].tolist()
    return predict_images(predictor, fold_data.images_dir, names, model, fold_data.fold, conf, max_det,
                          progress)


def evaluate(preds: pd.DataFrame, fold_data: Any) -> dict[str, float]:
    """Challenge score (with its GIoU and F1 terms) and mAP50 of ``preds`` on the fold's validation boxes."""
    from cytocore.coco_eval import coco_map
    from cytocore.submission import oof_score

    result = oof_score(preds, fold_data.val_boxes, fold_data.val_images)
    maps = coco_map(fold_data.val_boxes, preds)
    return {"challenge": float(result.total), "giou_term": float(result.giou_term),
            "f1_term": float(result.f1_term), "map50": float(maps["mAP50"]),
            "agnostic_map50": float(maps["agnostic_mAP50"])}


def write_oof(preds: pd.DataFrame, fold_data: Any, model: str) -> Path:
    """Write the out-of-fold table to ``work/preds/<model>/fold<k>/oof.parquet``."""
    return predictions.write(preds, oof_path(fold_data, model))
