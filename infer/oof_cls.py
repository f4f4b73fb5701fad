"""Classifier probabilities of out-of-fold boxes, cached per crop: what tuning blends at every trial.

``OOFClassifier(ds, found)`` holds the classifier folds found on the prepared
dataset ``ds`` (``infer.config.classifier_weights``). ``probs(table, tta, n_cells)``
returns the ``infer.blend.ClassifierProbs`` of a fused out-of-fold table as
``infer.blend.classifier_probs`` computes them for the test images (crops of
each image's top-n boxes, mean over crop models; the whole image of single-cell
images for full-image models), except that each image is classified by the
folds that did NOT see it (those of the fold holding it).

The classifier changes classes, not boxes, and tuning asks for nearly the same
boxes trial after trial. A crop is fully determined by its integer pixel window
(``train.cls.data.crop_window``: the box grown by the margin, floored, ceiled
and clipped), so the probabilities are cached per (model, fold, image, window),
each flip view apart, so that TTA on and off come from one pass of the network.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytokit import classes, images
from cytokit.tables import COORDS
from infer import blend

log = logging.getLogger(__name__)
IMAGE_CACHE_BYTES = 512 * 2**20  # decoded images kept between trials (least recently used dropped first)


def crop_windows(xyxy: np.ndarray, width: np.ndarray, height: np.ndarray, margin: int) -> np.ndarray:
    """``(N, 4)`` int windows of boxes, vectorised ``train.cls.data.crop_window``."""
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    w, h = np.asarray(width, dtype=np.int64), np.asarray(height, dtype=np.int64)
    x1 = np.minimum(np.maximum(np.floor(b[:, 0] - margin), 0), w - 1)
    y1 = np.minimum(np.maximum(np.floor(b[:, 1] - margin), 0), h - 1)
    x2 = np.maximum(np.minimum(np.ceil(b[:, 2] + margin), w), x1 + 1)
    y2 = np.maximum(np.minimum(np.ceil(b[:, 3] + margin), h), y1 + 1)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.int64)


def combine(views: np.ndarray, tta: bool) -> np.ndarray:
    """float64 probabilities from ``(3, N, 23)`` views, as ``train.cls.model.predict_probs`` sums them."""
    from train.cls.model import combine as model_combine

    return model_combine(views, tta)


class OOFClassifier:
    """Out-of-fold classifier probabilities with a per-crop cache (see the module docstring)."""

    def __init__(self, ds: Any, found: Sequence[tuple[str, int, Path]], device: str = "cpu"):
        self.ds, self.device = ds, device
        self.paths = {(model, fold): Path(path) for model, fold, path in found}
        self.models = list(dict.fromkeys(model for model, _, _ in found))
        self.fold_of = ds.images().set_index("NAME")["fold"]
        self._predictors: dict[tuple[str, int], Any] = {}
        self._cache: dict[tuple[str, int], dict] = {}
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._image_bytes = 0
        self.computed = 0  # crops (and whole images) run through a network
        self.reused = 0  # crops served from the cache

    def predictor(self, model: str, fold: int) -> Any:
        key = (model, fold)
        if key not in self._predictors:
            self._predictors[key] = blend.load_members([(self.paths[key], None)], self.device)[0]
        return self._predictors[key]

    def image(self, name: str) -> np.ndarray:
        """The decoded image ``name`` (kept in a bounded LRU: trials ask for the same images again)."""
        if name in self._images:
            self._images.move_to_end(name)
            return self._images[name]
        image = images.load_rgb(Path(self.ds.images_dir) / name)
        self._images[name] = image
        self._image_bytes += image.nbytes
        while self._image_bytes > IMAGE_CACHE_BYTES and len(self._images) > 1:
            self._image_bytes -= self._images.popitem(last=False)[1].nbytes
        return image

    def mode(self, model: str) -> str:
        """``crop`` or ``full``: the mode the model's folds were trained in (from the checkpoint)."""
        modes = {self.predictor(m, f).cfg.mode for m, f in self.paths if m == model}
        if len(modes) > 1:
            raise ValueError(f"classifier {model}: folds trained in different modes ({', '.join(modes)})")
        return modes.pop()

    def _views(self, model: str, fold: int, names: np.ndarray, boxes: np.ndarray | None,
               sizes: np.ndarray) -> np.ndarray:
        """``(3, N, 23)`` views of the crops of ``boxes`` (None: whole images) of images ``names``."""
        from train.cls.data import box_size_features

        pred = self.predictor(model, fold)
        cache = self._cache.setdefault((model, fold), {})
        if boxes is None:
            keys = [(n,) for n in names]
        else:
            win = crop_windows(boxes, sizes[:, 0], sizes[:, 1], pred.cfg.margin)
            if pred.takes_size:  # its box size input (whole pixels, see box_size_features) joins the key
                win = np.concatenate([win, np.maximum(np.round(boxes[:, 2:] - boxes[:, :2]), 1)], axis=1)
            keys = [(n, *w) for n, w in zip(names, win.tolist())]
        todo: dict[tuple, int] = {}
        for i, key in enumerate(keys):
            if key not in cache and key not in todo:
                todo[key] = i
        self.reused += len(keys) - len(todo)
        by_image: dict[str, list[tuple[tuple, int]]] = {}
        for key, i in todo.items():
            by_image.setdefault(names[i], []).append((key, i))
        crops, box_sizes, done = [], [], []
        for name, items in by_image.items():
            image = self.image(name)
            if boxes is None:
                crops.append(pred.image_crops([image]))
                box_sizes.append(box_size_features(np.array([0.0, 0.0, image.shape[1], image.shape[0]])))
            else:
                crops.append(pred.crops(image, boxes[[i for _, i in items]]))
                box_sizes.append(box_size_features(boxes[[i for _, i in items]]))
            done.extend(key for key, _ in items)
        if done:
            probs = pred.view_probs(np.concatenate(crops), np.concatenate(box_sizes))
            self.computed += len(done)
            for j, key in enumerate(done):
                cache[key] = probs[:, j]
        if not keys:
            return np.zeros((3, 0, classes.NUM_CLASSES), dtype=np.float32)
        return np.stack([cache[k] for k in keys], axis=1)

    def probs(self, table: pd.DataFrame, tta: bool, n_cells: Mapping[str, int]) -> blend.ClassifierProbs:
        """The classifier probabilities of an out-of-fold prediction table (row order kept)."""
        table = table.reset_index(drop=True)
        n = len(table)
        names = table["NAME"].to_numpy(dtype=object)
        fold = table["NAME"].map(self.fold_of)
        if fold.isna().any():
            raise ValueError(f"image {names[fold.isna().to_numpy()][0]!r} is not in the prepared dataset "
                             f"{self.ds.root}")
        fold = fold.to_numpy(dtype=np.int64)
        single = table["NAME"].map(n_cells).eq(1).to_numpy()
        todo = blend.top_rows(table, n_cells)
        xyxy = table[COORDS].to_numpy(dtype=np.float64)
        sizes = table[["width", "height"]].to_numpy(dtype=np.int64)
        modes = {m: self.mode(m) for m in self.models}
        parts: dict[str, list[np.ndarray]] = {"crop": [], "full": []}
        for model in self.models:
            kind = modes[model]
            p = np.full((n, classes.NUM_CLASSES), np.nan)
            for f in sorted({f for m, f in self.paths if m == model}):
                rows = np.flatnonzero(todo & (fold == f) & (single if kind == "full" else True))
                if len(rows):
                    views = self._views(model, f, names[rows], None if kind == "full" else xyxy[rows],
                                        sizes[rows])
                    p[rows] = combine(views, tta)
            parts[kind].append(p)
        crop = _nanmean(parts["crop"], n)
        full = _nanmean(parts["full"], n) if parts["full"] else None
        return blend.ClassifierProbs(crop, full, single)


def _nanmean(arrays: list[np.ndarray], n: int) -> np.ndarray:
    """Row-wise mean over the models that classified each row; NaN rows where none did."""
    if not arrays:
        return np.full((n, classes.NUM_CLASSES), np.nan)
    stack = np.stack(arrays)
    have = ~np.isnan(stack).any(axis=2)
    total = np.where(have[..., None], stack, 0.0).sum(axis=0)
    count = have.sum(axis=0)
    out = np.full((n, classes.NUM_CLASSES), np.nan)
    out[count > 0] = total[count > 0] / count[count > 0, None]
    return out
