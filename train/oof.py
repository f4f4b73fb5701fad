"""Out-of-fold predictions: a fold's validation images through a Predictor, scored.

``predict_images`` runs any ``train.base.Predictor`` over images read from disk
(original size, so boxes come out in original coordinates) and returns the
prediction table (``cytokit.predictions``). ``evaluate`` scores such a table on
the fold's validation boxes with the challenge metric (``cytokit.submission.oof_score``) and
mAP50 (``cytokit.coco_eval``). ``write_oof`` stores it as
``work/preds/<model>/fold<k>/oof.parquet``. Trainers call ``evaluate`` every
epoch to keep the best checkpoint; ``python -m train`` calls all three after a
fold is trained.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from cytokit import predictions
from cytokit.images import load_rgb

log = logging.getLogger(__name__)

CHUNK = 32  # images decoded and handed to the predictor at a time


def oof_path(fold_data: Any, model: str) -> Path:
    """``<preds dir of model on the fold>/oof.parquet``."""
    return fold_data.preds_dir(model) / "oof.parquet"


def _chunks(images_dir: Path, names: list[str], size: int) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    for start in range(0, len(names), size):
        part = names[start:start + size]
        yield part, [load_rgb(Path(images_dir) / n) for n in part]


def predict_images(
    predictor: Any,
    images_dir: Path,
    names: list[str],
    model: str,
    fold: int,
    conf: float = 0.001,
    view: str = "identity",
    progress: bool = True,
) -> pd.DataFrame:
    """Predict every image of ``names`` (read from ``images_dir``) as a prediction table."""
    frames = []
    bar = tqdm(total=len(names), desc=f"predict {model} fold{fold}", unit="img", disable=not progress,
               leave=False)
    for part, images in _chunks(images_dir, list(names), CHUNK):
        for name, image, det in zip(part, images, predictor.predict(images, conf=conf)):
            h, w = image.shape[:2]
            xyxy = np.asarray(det.xyxy, dtype=np.float64).reshape(-1, 4)
            keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
            probs = None if det.probs is None else np.asarray(det.probs)[keep]
            frames.append(predictions.make(
                name, xyxy[keep], np.clip(np.asarray(det.scores)[keep], 0, 1), np.asarray(det.labels)[keep],
                w, h, model, fold, view, probs,
            ))
        bar.update(len(part))
    bar.close()
    frames = [f for f in frames if len(f)]
    if not frames:
        return predictions.empty()
    return predictions.validate(pd.concat(frames, ignore_index=True))


def predict_fold(predictor: Any, fold_data: Any, model: str, conf: float = 0.001,
                 progress: bool = True) -> pd.DataFrame:
    """The out-of-fold table: ``fold_data``'s validation images, original coordinates."""
    names = fold_data.val_images["NAME"].tolist()
    return predict_images(predictor, fold_data.images_dir, names, model, fold_data.fold, conf,
                          progress=progress)


def evaluate(preds: pd.DataFrame, fold_data: Any) -> dict[str, float]:
    """Challenge score (with its GIoU and F1 terms) and mAP50 of ``preds`` on the fold's validation boxes."""
    from cytokit.coco_eval import coco_map
    from cytokit.submission import oof_score

    result = oof_score(preds, fold_data.val_boxes, fold_data.val_images)
    maps = coco_map(fold_data.val_boxes, preds)
    return {"challenge": float(result.total), "giou_term": float(result.giou_term),
            "f1_term": float(result.f1_term), "map50": float(maps["mAP50"]),
            "agnostic_map50": float(maps["agnostic_mAP50"])}


def write_oof(preds: pd.DataFrame, fold_data: Any, model: str) -> Path:
    """Write the out-of-fold table to ``work/preds/<model>/fold<k>/oof.parquet``."""
    return predictions.write(preds, oof_path(fold_data, model))
