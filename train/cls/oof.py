"""The classifier's out-of-fold table: its ``val_detector``'s out-of-fold boxes with the classifier's classes.

What ``python -m train --model cls`` writes as the fold's ``oof.parquet``, so
that ``make score`` prints the classifier on the same footing as the
detectors: the same boxes as the detector's ``oof.parquet`` of the fold, each
image's top-n boxes by score (n = its GT count: the rows a submission keeps)
with the class probabilities of the classifier -- crops in ``crop`` mode, the
whole image of single-cell images in ``full`` mode -- and the other rows with
the detector's. This is ``infer.blend`` at blend weight 1 (full-image share 1).
Without a ``val_detector`` (or its table) there are no boxes to classify:
``oof_table`` returns None and training falls back to whole images.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytokit import classes, images, predictions
from cytokit.tables import COORDS

log = logging.getLogger(__name__)
CHUNK = 32  # images classified at a time


def detector_table(cfg: Any, fold_data: Any) -> pd.DataFrame | None:
    """The ``val_detector``'s out-of-fold table of the fold (one view), or None when unavailable."""
    from cytokit.submission import one_view

    if not cfg.val_detector:
        return None
    path = fold_data.preds_dir(cfg.val_detector) / predictions.OOF_FILE
    if not path.exists():
        log.warning("%s not found: no %s boxes to classify out of fold", path, cfg.val_detector)
        return None
    table = one_view(predictions.read(path))
    return table[table["NAME"].isin(fold_data.val_images["NAME"])].reset_index(drop=True)


def oof_table(predictor: Any, cfg: Any, fold_data: Any, model: str) -> pd.DataFrame | None:
    """The detector's boxes of the fold with the classifier's classes (see the module docstring)."""
    det = detector_table(cfg, fold_data)
    if det is None:
        log.warning("%s fold %s: no val_detector boxes; its out-of-fold table classifies whole images "
                    "and is not comparable with the detectors' (set val_detector=<detector>)",
                    model, fold_data.fold)
        return None
    n_cells = fold_data.val_boxes.groupby("NAME").size()
    need = det["NAME"].map(n_cells).fillna(0).to_numpy()
    rank = det.sort_values("score", ascending=False, kind="stable").groupby("NAME").cumcount().sort_index()
    todo = rank.to_numpy() < need
    if predictor.cfg.mode == "full":
        todo &= need == 1
    if predictions.has_probs(det):
        probs = np.array(det[list(classes.PROB_COLUMNS)].to_numpy(dtype=np.float64))  # a writable copy
    else:
        probs = np.eye(classes.NUM_CLASSES)[det["class"].map(classes.CLASS_TO_ID).to_numpy(dtype=np.int64)]
    groups = det[todo].groupby("NAME", sort=False).indices
    names = list(groups)
    xyxy = det.loc[todo, COORDS].to_numpy(dtype=np.float64)
    rows = np.flatnonzero(todo)
    for start in range(0, len(names), CHUNK):
        batch = names[start:start + CHUNK]
        imgs = [images.load_rgb(Path(fold_data.images_dir) / n) for n in batch]
        if predictor.cfg.mode == "full":  # one row per image: its whole image's probabilities
            p = predictor.classify_images(imgs)
        else:
            p = predictor.classify_boxes(imgs, [xyxy[groups[n]] for n in batch])
        for i, n in enumerate(batch):
            probs[rows[groups[n]]] = p[i]
    out = det.drop(columns=[c for c in classes.PROB_COLUMNS if c in det.columns])
    out[list(classes.PROB_COLUMNS)] = probs
    out["class"] = np.asarray(classes.CLASSES, dtype=object)[probs.argmax(axis=1)] if len(out) else []
    out["model"] = model
    log.info("%s fold %s: %d %s boxes on %d images classified (out-of-fold table)", model, fold_data.fold,
             len(rows), cfg.val_detector, len(names))
    return predictions.validate(out)
