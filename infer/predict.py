"""Run one loaded member (a ``train.base.Predictor``) over images with TTA -> a prediction table.

For each chunk of images and each view (``infer.tta``) the view images go to
the predictor in one batch; its boxes are mapped back to the original image
(``View.inverse``), clipped to the image (boxes left with no area are
dropped), cut to the ``max_det`` best per image and view, and stored as rows
of the prediction contract with the view's name in the ``view`` column.

``load_member`` builds the predictor of one (model, fold) through the
registry: weights default to ``work/runs/<model>/fold<k>/best.pt`` and the
model config to the run's resolved ``config.yaml`` (else ``configs/<model>.yaml``).
Reusing a written table while its inputs are unchanged is ``infer.cache``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cytokit import boxes as bx
from cytokit import classes, predictions
from cytokit.images import load_rgb
from infer.tta import View

log = logging.getLogger(__name__)


def detections_to_rows(
    det: Any, view: View, name: str, width: int, height: int, model: str, fold: int, max_det: int = 0,
) -> pd.DataFrame:
    """One image's ``Detections`` (in the view image's pixels) as contract rows in original pixels."""
    xyxy = np.asarray(det.xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.clip(np.asarray(det.scores, dtype=np.float64).reshape(-1), 0.0, 1.0)
    labels = np.asarray(det.labels).reshape(-1)
    probs = None
    if det.probs is not None:
        probs = np.asarray(det.probs, dtype=np.float64).reshape(len(xyxy), classes.NUM_CLASSES)
    ok = np.isfinite(xyxy).all(axis=1) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    if (~ok).any():
        log.debug("%s %s: %d degenerate box(es) from %s dropped", name, view.name, int((~ok).sum()), model)
    xyxy = bx.clip(view.inverse(xyxy[ok], width, height), width, height)
    keep = np.flatnonzero(ok)[bx.area(xyxy) > 0]
    xyxy = xyxy[bx.area(xyxy) > 0]
    order = np.argsort(-scores[keep], kind="stable")
    if max_det:
        order = order[:max_det]
    rows = keep[order]
    return predictions.make(
        name, xyxy[order], scores[rows], labels[rows], width, height, model, fold, view.name,
        None if probs is None else probs[rows],
    )


def predict_arrays(
    predictor: Any,
    images: Iterable[tuple[str, np.ndarray]],
    views: Sequence[View],
    model: str,
    fold: int,
    conf: float = 0.001,
    max_det: int = 0,
    batch: int = 8,
) -> pd.DataFrame:
    """Predict ``(name, RGB array)`` pairs with every view; returns the prediction table."""
    frames: list[pd.DataFrame] = []
    for chunk in _chunked(images, batch):
        for view in views:
            dets = predictor.predict([view.image(img) for _, img in chunk], conf=conf)
            if len(dets) != len(chunk):
                raise ValueError(f"{model} fold{fold}: predictor returned {len(dets)} results "
                                 f"for {len(chunk)} images")
            for (name, img), det in zip(chunk, dets):
                h, w = img.shape[:2]
                frames.append(detections_to_rows(det, view, name, w, h, model, fold, max_det))
    frames = [f for f in frames if len(f)]
    with_probs = any(predictions.has_probs(f) for f in frames)
    if not frames:
        return predictions.empty(with_probs=with_probs)
    return predictions.validate(pd.concat(frames, ignore_index=True))


def _chunked(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_files(
    predictor: Any,
    images_dir: Path,
    names: Sequence[str],
    views: Sequence[View],
    model: str,
    fold: int,
    conf: float = 0.001,
    max_det: int = 0,
    batch: int = 8,
    progress: bool = True,
    desc: str | None = None,
) -> pd.DataFrame:
    """``predict_arrays`` over image files ``images_dir/<name>`` (decoded to RGB), with a progress bar."""
    names = list(names)
    bar = tqdm(names, desc=desc or f"predict {model} fold{fold}", unit="img", disable=not progress,
               mininterval=2)
    pairs = ((n, load_rgb(Path(images_dir) / n)) for n in bar)
    start = time.perf_counter()
    out = predict_arrays(predictor, pairs, views, model, fold, conf, max_det, batch)
    if names:
        log.info("%s fold%d: %d images x %d view(s) in %.1f s (%.0f ms per image, all views)", model, fold,
                 len(names), len(views), time.perf_counter() - start,
                 1000 * (time.perf_counter() - start) / len(names))
    return out


def member_weights(ds: Any, model: str, fold: int, template: str | None = None) -> Path:
    """Weights of one member: ``template`` with ``{fold}``/``{model}`` filled in, else the best.pt of
    its run on the prepared dataset ``ds`` (``cytokit.dataset.Dataset``)."""
    if template:
        return Path(template.format(fold=fold, model=model))
    return ds.run_dir(model, fold) / "best.pt"


def load_member(model: str, fold: int, weights: Path, device: str = "cpu",
                overrides: Sequence[str] = ()) -> Any:
    """The ``Predictor`` of one member through the model registry."""
    from train import registry

    weights = Path(weights)
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: weights of {model} fold {fold} not found; train it first "
                                f"(make train MODEL={model} FOLD={fold}) or set the member's weights path")
    cfg = registry.run_config(model, weights.parent, list(overrides))
    return registry.get(model)().load(weights, cfg, device)
