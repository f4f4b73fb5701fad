"""Second stage: classify the fused boxes' crops and blend with the detectors' class probabilities.

``apply_classifier(preds, images_dir, members, weight, ...)`` takes a fused
prediction table (cytocore.predictions contract, with or without p_ columns) and
returns the same rows with

    p = weight * classifier + (1 - weight) * detector,     class = argmax(p)

where ``classifier`` is the mean over flip views of the softmax of each box's
crop (box + margin), averaged over each crop member's folds, then over the crop
members with their relative ``shares`` (``member_mean``; equal shares without),
and ``detector`` is the table's p_ columns (a one-hot of ``class`` when it has
none). For single-cell images
(``n_cells[NAME] == 1``, i.e. one test.csv row) full-image members are mixed in
first: ``classifier = (1 - full_weight) * crop + full_weight * full``. Scores
and boxes are unchanged, so the submission's top-N choice is too; weight 0
leaves the table as it is (the detectors' classes).

Pure pieces: ``blend_probs``, ``blend_table`` and ``member_mean``. The classification itself
(test images by every fold, out-of-fold images by the fold that did not see
them, cached per crop in memory and under work/cache/cls) is ``infer.oof_cls``.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytocore import classes, predictions
from infer.oof_cls import (  # noqa: F401 (re-exported)
    ClassifierProbs,
    CropClassifier,
    load_members,
    member_mean,
    top_rows,
)

log = logging.getLogger(__name__)
WEIGHT_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))  # 0, 0.05, ..., 1


def det_probs(preds: pd.DataFrame) -> np.ndarray:
    """The detector's ``(N, 23)`` class probabilities: the p_ columns, else a one-hot of ``class``."""
    if predictions.has_probs(preds):
        return preds[list(classes.PROB_COLUMNS)].to_numpy(dtype=np.float64)
    ids = preds["class"].map(classes.CLASS_TO_ID)
    if ids.isna().any():
        raise ValueError(f"unknown class {preds['class'][ids.isna()].iloc[0]!r} in the prediction table")
    return np.eye(classes.NUM_CLASSES)[ids.to_numpy(dtype=np.int64)]


def blend_probs(det: np.ndarray, cls: np.ndarray, weight: float, full: np.ndarray | None = None,
                full_weight: float = 0.0, single: np.ndarray | None = None) -> np.ndarray:
    """``weight * c + (1 - weight) * det`` with ``c = cls``, except on rows where ``single`` is
    True and ``full`` is given: ``c = (1 - full_weight) * cls + full_weight * full``. Pure."""
    det, cls = np.asarray(det, dtype=np.float64), np.asarray(cls, dtype=np.float64)
    if det.shape != cls.shape or det.ndim != 2:
        raise ValueError(f"det and cls must be (N, C) of one shape, got {det.shape} and {cls.shape}")
    if not 0.0 <= weight <= 1.0 or not 0.0 <= full_weight <= 1.0:
        raise ValueError(f"weight ({weight}) and full_weight ({full_weight}) must lie in [0, 1]")
    if not (np.isfinite(det).all() and np.isfinite(cls).all()):
        raise ValueError("det and cls probabilities must be finite")
    c = cls
    if full is not None:
        full = np.asarray(full, dtype=np.float64)
        mask = np.ones(len(cls), bool) if single is None else np.asarray(single, bool)
        if full.shape != cls.shape or mask.shape != (len(cls),):
            raise ValueError(f"full {full.shape} / single {mask.shape} do not fit cls {cls.shape}")
        c = cls.copy()
        c[mask] = (1 - full_weight) * cls[mask] + full_weight * full[mask]
    return weight * c + (1 - weight) * det


def found_for_test(weights: Sequence[Any], names: Sequence[str] | None = None) -> list[tuple[str, int, Any]]:
    """``CropClassifier``'s ``found`` for test images (every checkpoint classifies every image): each
    weights (a path or a loaded predictor) under its member's name (``names``; None: each its own
    member), numbered within it (the number only tells a member's folds apart)."""
    if names is None:
        names = [f"member{i}" for i in range(len(weights))]
    if len(names) != len(weights):
        raise ValueError(f"{len(names)} member names for {len(weights)} classifier weights")
    seen: dict[str, int] = {}
    found = []
    for name, w in zip(names, weights):
        seen[name] = seen.get(name, -1) + 1
        found.append((name, seen[name], w))
    return found


def classifier_probs(preds: pd.DataFrame, images_dir: Path, predictors: Sequence, tta: bool = True,
                     n_cells: Mapping[str, int] | None = None,
                     names: Sequence[str] | None = None) -> ClassifierProbs:
    """Classify the rows' crops (crop members) and single-cell images (full members) with loaded
    predictors: ``infer.oof_cls.CropClassifier``, every predictor on every image, memory cache only.
    ``names``: each predictor's member (its folds averaged first); None: each predictor its own."""
    found = found_for_test(predictors, names)
    return CropClassifier(images_dir, found, disk=False).probs(preds, tta, n_cells)


def blend_table(preds: pd.DataFrame, probs: ClassifierProbs, weight: float,
                full_weight: float = 0.5, shares: Mapping[str, float] | None = None) -> pd.DataFrame:
    """``preds`` with p_ columns = the blend and ``class`` = its argmax (rows without a
    classifier probability keep the detector's); ``weight`` 0: ``preds`` unchanged. ``shares``:
    the crop members' relative shares (``ClassifierProbs.crop_for``; None: equal)."""
    if weight == 0:
        return preds.copy()
    det = det_probs(preds)
    crop = probs.crop_for(shares)
    crop = np.where(np.isnan(crop), det, crop)
    full, single = None, probs.single
    if probs.full is not None:
        single = probs.single & ~np.isnan(probs.full).any(axis=1)
        full = np.where(np.isnan(probs.full), det, probs.full)
    blended = blend_probs(det, crop, weight, full, full_weight, single)
    out = preds.drop(columns=[c for c in classes.PROB_COLUMNS if c in preds.columns]).copy()
    out[list(classes.PROB_COLUMNS)] = blended
    out["class"] = np.asarray(classes.CLASSES, dtype=object)[blended.argmax(1)] if len(out) else []
    return out


def apply_classifier(preds: pd.DataFrame, images_dir: Path, members: list[tuple[Path, Any]], weight: float,
                     device: str = "cpu", tta: bool = True, n_cells: Mapping[str, int] | None = None,
                     full_weight: float = 0.5, backend: str = "torch", names: Sequence[str] | None = None,
                     shares: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Blend the classifier members' probabilities into a fused prediction table (see module doc).

    ``members``: (weights, config) of every checkpoint. ``n_cells`` (NAME -> test.csv rows) limits
    the work to each image's top-n boxes by score (the only ones a submission keeps) and enables
    full-image members on single-cell images. ``names``: the classifier member of each checkpoint
    (its folds are averaged, then the crop members mixed by ``shares``, as tuning scored them);
    None: each checkpoint is its own member (equal shares).
    """
    if not members or len(preds) == 0 or weight == 0:
        return preds.copy()
    weights = [Path(w) if c is None else load_members([(w, c)], device, backend)[0] for w, c in members]
    found = found_for_test(weights, [str(w) for w, _ in members] if names is None else names)
    loader = None if backend == "torch" else (lambda w: load_members([(w, None)], device, backend)[0])
    # the disk cache holds the torch network's probabilities: an exported backend's are not mixed in
    classifier = CropClassifier(images_dir, found, None, device, loader, disk=loader is None)
    probs = classifier.probs(preds, tta, n_cells)
    return blend_table(preds, probs, weight, full_weight, shares)
