"""The classifier's out-of-fold table: its ``val_detector``'s out-of-fold boxes with the classifier's classes.

What ``python -m train --model cls`` writes as the fold's ``oof.parquet``, so
that ``make score`` prints the classifier on the same footing as the
detectors: the same boxes as the detector's ``oof.parquet`` of the fold, each
image's top-n boxes by score (n = its GT count: the rows a submission keeps)
with the class probabilities of the classifier -- crops in ``crop`` mode, the
whole image of single-cell images in ``full`` mode -- and the other rows with
the detector's. This is ``infer.blend`` at blend weight 1 (full-image share 1),
classified by ``infer.oof_cls.CropClassifier`` (the one owner of that step).
Without a ``val_detector`` (or its table) there are no boxes to classify:
``oof_table`` returns None and training falls back to whole images.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from cytocore import classes, predictions

log = logging.getLogger(__name__)
CHUNK = 32  # images classified at a time


def detector_table(cfg: Any, fold_data: Any) -> pd.DataFrame | None:
    """The ``val_detector``'s out-of-fold table of the fold (one view), or None when unavailable."""
    from cytocore.submission import one_view

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
    from train.cls.classify import CropClassifier

    n_cells = fold_data.val_boxes.groupby("NAME").size().to_dict()
    found = [(model, fold_data.fold, predictor)]  # a loaded predictor: its run is still being written
    probs = CropClassifier(fold_data.images_dir, found, disk=False).probs(det, bool(predictor.cfg.tta),
                                                                           n_cells)
    if predictions.has_probs(det):
        det_p = np.array(det[list(classes.PROB_COLUMNS)].to_numpy(dtype=np.float64))  # a writable copy
    else:
        det_p = np.eye(classes.NUM_CLASSES)[det["class"].map(classes.CLASS_TO_ID).to_numpy(dtype=np.int64)]
    p = probs.crop if probs.full is None else np.where(np.isnan(probs.full), probs.crop, probs.full)
    done = ~np.isnan(p).any(axis=1)
    det_p[done] = p[done]  # classified rows: the classifier's; the others: the detector's
    out = det.drop(columns=[c for c in classes.PROB_COLUMNS if c in det.columns])
    out[list(classes.PROB_COLUMNS)] = det_p
    out["class"] = np.asarray(classes.CLASSES, dtype=object)[det_p.argmax(axis=1)] if len(out) else []
    rows = int(done.sum())
    out["model"] = model
    log.info("%s fold %s: %d %s boxes classified (out-of-fold table)", model, fold_data.fold, rows,
             cfg.val_detector)
    return predictions.validate(out)
