"""Detections -> prediction-table rows: the ONE conversion, used by out-of-fold prediction and inference.

``Rows`` collects one image's detections at a time (``add``) and builds the
prediction table (``cytocore.predictions``) once at the end (``table``): the
hot path never makes a DataFrame per image. For each image and view it

1. drops boxes that are not finite or have no area in the view image,
2. maps the boxes back to the original image (``view.inverse``),
3. clips them to the image and drops those left with no area,
4. keeps the ``max_det`` best by score (0 = all), best first,
5. clips scores to [0, 1].

``predict_table`` is the loop around it: chunks of ``(name, RGB array)`` pairs,
every view of a chunk in ONE predictor call (views of an image are a batch),
rows in original pixels. ``train.oof`` calls it with the identity view;
``infer.predict`` with the TTA views. A *view* is anything with ``name``,
``image(array)`` and ``inverse(xyxy, width, height)`` (``infer.tta.View``).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cytocore import boxes as bx
from cytocore import classes, predictions

log = logging.getLogger(__name__)


class _Identity:
    """The view that changes nothing (out-of-fold prediction)."""

    name = "identity"

    @staticmethod
    def image(img: np.ndarray) -> np.ndarray:
        return img

    @staticmethod
    def inverse(xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
        return np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)


IDENTITY = _Identity()


class Rows:
    """Accumulates detections of many images; ``table`` returns them as one prediction table."""

    def __init__(self) -> None:
        self._names: list[np.ndarray] = []
        self._xyxy: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._probs: list[np.ndarray | None] = []
        self._size: list[np.ndarray] = []
        self._views: list[np.ndarray] = []

    def add(self, name: str, det: Any, width: int, height: int, view: Any = IDENTITY, max_det: int = 0,
            what: str = "") -> int:
        """Add one image's ``Detections`` (in the view image's pixels); returns the rows kept."""
        xyxy = np.asarray(det.xyxy, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(det.scores, dtype=np.float64).reshape(-1)
        labels = np.asarray(det.labels, dtype=np.int64).reshape(-1)
        if not (len(scores) == len(labels) == len(xyxy)):
            raise ValueError(f"{what} {name}: {len(xyxy)} boxes, {len(scores)} scores, {len(labels)} labels")
        ok = np.isfinite(xyxy).all(axis=1) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        if not ok.all():
            log.debug("%s %s %s: %d degenerate box(es) dropped", what, name, view.name, int((~ok).sum()))
        keep = np.flatnonzero(ok)
        out = bx.clip(view.inverse(xyxy[keep], width, height), width, height)
        pos = bx.area(out) > 0
        keep, out = keep[pos], out[pos]
        order = np.argsort(-scores[keep], kind="stable")
        if max_det:
            order = order[:max_det]
        rows = keep[order]
        n = len(rows)
        if not n:
            return 0
        if (labels[rows] < 0).any() or (labels[rows] >= classes.NUM_CLASSES).any():
            raise ValueError(f"{what} {name}: class id outside 0..{classes.NUM_CLASSES - 1}")
        probs = None
        if det.probs is not None:
            probs = np.asarray(det.probs, dtype=np.float64).reshape(len(xyxy), classes.NUM_CLASSES)[rows]
        self._names.append(np.full(n, name, dtype=object))
        self._xyxy.append(out[order])
        self._scores.append(np.clip(scores[rows], 0.0, 1.0))
        self._labels.append(labels[rows])
        self._probs.append(probs)
        self._size.append(np.tile(np.array([width, height], dtype=np.int64), (n, 1)))
        self._views.append(np.full(n, view.name, dtype=object))
        return n

    def __len__(self) -> int:
        return sum(len(s) for s in self._scores)

    def table(self, model: str, fold: int) -> pd.DataFrame:
        """Every added row as one prediction table (``p_`` columns when any image had probabilities)."""
        with_probs = any(p is not None for p in self._probs)
        n = len(self)
        if not n:
            return predictions.empty(with_probs=with_probs)
        xyxy = np.concatenate(self._xyxy)
        size = np.concatenate(self._size)
        data = {
            "NAME": np.concatenate(self._names), "x1": xyxy[:, 0], "y1": xyxy[:, 1], "x2": xyxy[:, 2],
            "y2": xyxy[:, 3], "score": np.concatenate(self._scores),
            "class": np.asarray(classes.CLASSES, dtype=object)[np.concatenate(self._labels)],
            "width": size[:, 0], "height": size[:, 1], "model": np.full(n, model, dtype=object),
            "fold": np.full(n, int(fold), dtype=np.int64), "view": np.concatenate(self._views),
        }
        if with_probs:
            # images whose model gave no probabilities get NaN rows (infer.fuse uses one-hot x score there)
            probs = np.concatenate([np.full((len(s), classes.NUM_CLASSES), np.nan) if p is None else p
                                    for p, s in zip(self._probs, self._scores)])
            data.update({c: probs[:, j] for j, c in enumerate(classes.PROB_COLUMNS)})
        return pd.DataFrame(data)


def chunked(items: Iterable, size: int) -> Iterator[list]:
    """Lists of ``size`` consecutive items (the last one shorter)."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_table(predictor: Any, images: Iterable[tuple[str, np.ndarray]],
                  views: Sequence[Any] = (IDENTITY,), model: str = "", fold: int = 0, conf: float = 0.001,
                  max_det: int = 0, batch: int = 8) -> pd.DataFrame:
    """Predict ``(name, RGB array)`` pairs with every view; the prediction table in original pixels.

    Each chunk of ``batch`` images goes to ``predictor.predict`` once with all its
    views (``len(chunk) * len(views)`` images, view-major).
    """
    rows = Rows()
    what = f"{model} fold{fold}"
    for chunk in chunked(images, batch):
        batch_images = [view.image(img) for view in views for _, img in chunk]
        dets = predictor.predict(batch_images, conf=conf)
        if len(dets) != len(batch_images):
            raise ValueError(f"{what}: predictor returned {len(dets)} results for {len(batch_images)} images")
        for i, det in enumerate(dets):
            view = views[i // len(chunk)]
            name, img = chunk[i % len(chunk)]
            rows.add(name, det, img.shape[1], img.shape[0], view, max_det, what)
    return predictions.validate(rows.table(model, fold), what)
