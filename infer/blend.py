"""Second stage: classify the fused boxes' crops and blend with the detectors' class probabilities.

``apply_classifier(preds, images_dir, members, weight, ...)`` takes a fused
prediction table (cytokit.predictions contract, with or without p_ columns) and
returns the same rows with

    p = weight * classifier + (1 - weight) * detector,     class = argmax(p)

where ``classifier`` is the mean over crop members and flip views of the
softmax of each box's crop (box + margin), and ``detector`` is the table's p_
columns (a one-hot of ``class`` when it has none). For single-cell images
(``n_cells[NAME] == 1``, i.e. one test.csv row) full-image members are mixed in
first: ``classifier = (1 - full_weight) * crop + full_weight * full``. Scores
and boxes are unchanged, so the submission's top-N choice is too; weight 0
leaves the table as it is (the detectors' classes).

Pure pieces: ``blend_probs`` and ``blend_table``. Out-of-fold probabilities
(each image classified by the fold that did not see it, cached per crop for
tuning) are ``infer.oof_cls``.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytokit import classes, images, predictions
from cytokit.tables import COORDS

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


@dataclasses.dataclass
class ClassifierProbs:
    """Per-row classifier output for a prediction table (row order kept)."""

    crop: np.ndarray  # (N, 23); NaN rows: not classified (no crop member, or beyond the top-n)
    full: np.ndarray | None  # (N, 23) full-image probabilities on single-cell rows, NaN elsewhere
    single: np.ndarray  # (N,) bool: the row's image holds one cell


def load_members(members: Sequence[tuple[Path, Any]], device: str = "cpu", backend: str = "torch") -> list:
    """``ClassifierPredictor`` of each (weights, config) member (config: None, a dict or a YAML path);
    ``backend`` (``infer.backends``) may run an exported member's network on the CPU."""
    from train.cls.adapter import ClassifierAdapter

    out = []
    for w, c in members:
        p = ClassifierAdapter().load(Path(w), c, device)
        if backend != "torch":
            import torch

            from infer import backends

            chosen = backends.choose(Path(w), backend, device, int(p.cfg.imgsz))
            if chosen != "torch":
                p.model = backends.RunnerModule(backends.runner(chosen, Path(w), torch.get_num_threads()))
        out.append(p)
    return out


def top_rows(preds: pd.DataFrame, n_cells: Mapping[str, int] | None) -> np.ndarray:
    """Rows to classify: each image's top-n by score (all rows without ``n_cells``)."""
    if n_cells is None:
        return np.ones(len(preds), bool)
    order = preds.reset_index(drop=True).sort_values("score", ascending=False, kind="stable")
    rank = order.groupby("NAME").cumcount().sort_index().to_numpy()
    return rank < preds["NAME"].map(n_cells).fillna(0).to_numpy()


def classifier_probs(preds: pd.DataFrame, images_dir: Path, predictors: Sequence, tta: bool = True,
                     n_cells: Mapping[str, int] | None = None, chunk: int = 64) -> ClassifierProbs:
    """Classify the rows' crops (crop members) and single-cell images (full members)."""
    from tqdm import tqdm

    n = len(preds)
    crop_members = [p for p in predictors if p.cfg.mode == "crop"]
    full_members = [p for p in predictors if p.cfg.mode == "full"]
    if full_members and n_cells is None:
        log.warning("full-image classifiers ignored: n_cells (test.csv rows per image) not given")
        full_members = []
    single = preds["NAME"].map(n_cells).eq(1).to_numpy() if n_cells is not None else np.zeros(n, bool)
    todo = top_rows(preds, n_cells)
    crop = np.full((n, classes.NUM_CLASSES), np.nan)
    full = np.full((n, classes.NUM_CLASSES), np.nan) if full_members else None
    xyxy = preds[COORDS].to_numpy(dtype=np.float64)
    groups = preds.groupby("NAME", sort=False).indices if n else {}
    names = [nm for nm, rows in groups.items() if todo[rows].any() and (crop_members or single[rows[0]])]
    for start in tqdm(range(0, len(names), chunk), desc="classify crops", leave=False, disable=None):
        batch = names[start:start + chunk]
        imgs = [images.load_rgb(Path(images_dir) / nm) for nm in batch]
        rows = [groups[nm][todo[groups[nm]]] for nm in batch]
        if crop_members:
            p = [m.classify_boxes(imgs, [xyxy[r] for r in rows], tta) for m in crop_members]
            for i, r in enumerate(rows):
                crop[r] = np.mean([pm[i] for pm in p], axis=0)
        sel = [i for i, r in enumerate(rows) if single[r[0]]] if full_members else []
        if sel:
            p = np.mean([m.classify_images([imgs[i] for i in sel], tta) for m in full_members], axis=0)
            for j, i in enumerate(sel):
                full[rows[i]] = p[j]
    return ClassifierProbs(crop, full, single)


def blend_table(preds: pd.DataFrame, probs: ClassifierProbs, weight: float,
                full_weight: float = 0.5) -> pd.DataFrame:
    """``preds`` with p_ columns = the blend and ``class`` = its argmax (rows without a
    classifier probability keep the detector's); ``weight`` 0: ``preds`` unchanged."""
    if weight == 0:
        return preds.copy()
    det = det_probs(preds)
    crop = np.where(np.isnan(probs.crop), det, probs.crop)
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
                     full_weight: float = 0.5, backend: str = "torch") -> pd.DataFrame:
    """Blend the classifier members' probabilities into a fused prediction table (see module doc).

    ``n_cells`` (NAME -> test.csv rows) limits the work to each image's top-n
    boxes by score (the only ones a submission keeps) and enables full-image
    members on single-cell images.
    """
    if not members or len(preds) == 0 or weight == 0:
        return preds.copy()
    probs = classifier_probs(preds, images_dir, load_members(members, device, backend), tta, n_cells)
    return blend_table(preds, probs, weight, full_weight)
