"""The one owner of "classify the top-n rows of a table": crop / full-image classifier probabilities of
a prediction table's rows, cached per crop in memory and on disk.

``CropClassifier(images_dir, found, fold_of, device)`` holds classifier checkpoints
``found`` = ``(model, fold, best.pt)``. ``probs(table, tta, n_cells)`` returns the
``infer.ClassifierProbs`` of a table's rows: the crops of each image's top-n
boxes (n = ``n_cells[NAME]``; every row without ``n_cells``) for crop models, the
whole image of single-cell images for full-image models. A crop member (``model``) gets the
mean over its checkpoints that classify the row (``ClassifierProbs.members``); the members
are then mixed with relative shares (``member_mean``: equal shares in ``crop``, the tuned
shares through ``ClassifierProbs.crop_for``); full-image checkpoints are averaged together.
With ``fold_of`` (image -> fold; out of fold) a row is classified only by the checkpoints
of its image's fold -- those trained without it; without it (test images) by every checkpoint.
Tuning (``infer.oof_eval``), the report, ``make cls-report``, the submission
(``infer.blend.apply_classifier``) and the classifier's own out-of-fold table
(``train.cls.oof``) all call it; ``infer.oof_cls.OOFClassifier`` is the out-of-fold one of
a prepared dataset.

A crop is fully determined by its integer pixel window (``train.cls.data.crop_window``:
the box grown by the margin, floored, ceiled and clipped), so the probabilities are
cached per (checkpoint, image content, window), each flip view apart, so that TTA on and off
come from one pass of the network. An image is known by the sha1 of its file's bytes (read once
per process), not by its name or folder: an image replaced under the same name is classified
again, the same image in another folder is not. The cache is also kept on disk
(``work/cache/cls/<key>.npz``), keyed by the checkpoint (resolved path, size,
modification time) and its imgsz / margin / box-size input, so every step of a run -- tuning,
``make score``, the report, ``make cls-report`` -- classifies each crop once; a retrained
checkpoint gets a new key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytocore import classes, images, paths
from cytocore.tables import COORDS

log = logging.getLogger(__name__)
IMAGE_CACHE_BYTES = 512 * 2**20  # decoded images kept between trials (least recently used dropped first)
FLUSH_S = 60.0  # the disk cache is rewritten at most this often during a run (and at its end)
CACHE_VERSION = 2  # disk-cache layout: 2 = crops keyed by image content (1 was by image name)
KEY_INTS = 6  # a crop key: image sha1 + window (4 ints) + box size (2 ints, size-aware models), -1 padded


@dataclasses.dataclass
class ClassifierProbs:
    """Per-row classifier output for a prediction table (row order kept)."""

    crop: np.ndarray  # (N, 23) crop members at equal shares; NaN rows: not classified (none, or beyond top-n)
    full: np.ndarray | None  # (N, 23) full-image probabilities on single-cell rows, NaN elsewhere
    single: np.ndarray  # (N,) bool: the row's image holds one cell
    members: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # crop member -> its folds' mean

    def crop_for(self, shares: Mapping[str, float] | None = None) -> np.ndarray:
        """The crop probabilities with the members' relative ``shares`` (``member_mean``); ``crop`` when
        no share is given or the members are not kept apart."""
        return member_mean(self.members, shares) if shares and self.members else self.crop


def top_rows(preds: pd.DataFrame, n_cells: Mapping[str, int] | None) -> np.ndarray:
    """Rows to classify: each image's top-n by score (all rows without ``n_cells``)."""
    if n_cells is None:
        return np.ones(len(preds), bool)
    order = preds.reset_index(drop=True).sort_values("score", ascending=False, kind="stable")
    rank = order.groupby("NAME").cumcount().sort_index().to_numpy()
    return rank < preds["NAME"].map(n_cells).fillna(0).to_numpy()


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


def checkpoint_key(path: Path, cfg: Any, takes_size: bool) -> str:
    """The disk-cache key of one checkpoint's crops: what changes its probabilities of a crop window
    (the image itself is in each crop's key: its content's sha1)."""
    path = Path(path).resolve()
    st = path.stat()
    facts = [CACHE_VERSION, str(path), st.st_size, st.st_mtime_ns, int(cfg.imgsz), int(cfg.margin),
             str(cfg.mode), bool(takes_size)]
    return hashlib.sha1(json.dumps(facts).encode()).hexdigest()[:20]


class CropStore:
    """One checkpoint's crop probabilities: ``key -> (3, 23)`` float32 views, loaded from and flushed to
    ``work/cache/cls/<key>.npz`` (None: memory only)."""

    def __init__(self, path: Path | None):
        self.path, self.data, self.unsaved, self.saved_at = path, {}, 0, time.monotonic()
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    names, ints, probs = z["names"], z["ints"], z["probs"]
                for i, (name, row) in enumerate(zip(names.tolist(), ints.tolist())):
                    self.data[(name, *(v for v in row if v >= 0))] = probs[:, i]
            except (OSError, ValueError, KeyError) as exc:  # a torn or foreign file: classify again
                log.warning("%s: unreadable crop cache (%s); classifying again", path, exc)
                self.data = {}

    def flush(self, force: bool = True) -> None:
        """Write the crops (all of them, atomically); without ``force`` at most every ``FLUSH_S``."""
        if self.path is None or not self.unsaved or not self.data:
            return
        if not force and time.monotonic() - self.saved_at < FLUSH_S:
            return
        keys = list(self.data)
        names = np.array([k[0] for k in keys], dtype=str)
        ints = np.full((len(keys), KEY_INTS), -1, dtype=np.int64)
        for i, k in enumerate(keys):
            ints[i, :len(k) - 1] = k[1:]
        probs = np.stack([self.data[k] for k in keys], axis=1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.npz")
        np.savez(tmp, names=names, ints=ints, probs=probs)
        os.replace(tmp, self.path)
        self.unsaved, self.saved_at = 0, time.monotonic()


class CropClassifier:
    """Classifier probabilities of a table's rows with a per-crop cache (see the module docstring)."""

    def __init__(self, images_dir: Path, found: Sequence[tuple[str, int, Any]],
                 fold_of: Mapping[str, int] | pd.Series | None = None, device: str = "cpu",
                 loader: Callable[[Path], Any] | None = None, disk: bool = True):
        """``found``: ``(model, fold, checkpoint path or a loaded ClassifierPredictor)``; ``fold_of``:
        image name -> fold (out of fold) or None (every checkpoint classifies every image); ``loader``:
        checkpoint path -> predictor (default: ``ClassifierAdapter.load`` on ``device``; the submission
        passes ``infer.blend.load_members`` for exported backends); ``disk``: keep the crop cache under
        ``work/cache/cls`` (checkpoint paths only)."""
        self.images_dir, self.device, self.loader, self.disk = Path(images_dir), device, loader, disk
        self.paths: dict[tuple[str, int], Any] = {(model, fold): w for model, fold, w in found}
        self.models = list(dict.fromkeys(model for model, _, _ in found))
        self.fold_of = None if fold_of is None else pd.Series(fold_of)
        self._predictors: dict[tuple[str, int], Any] = {}
        self._cache: dict[tuple[str, int], CropStore] = {}
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._image_bytes = 0
        self._content: dict[str, str] = {}  # image name -> sha1 of its file (the crops' cache key)
        self.computed = 0  # crops (and whole images) run through a network
        self.reused = 0  # crops served from the cache (this process's or the disk's)

    def predictor(self, model: str, fold: int) -> Any:
        key = (model, fold)
        if key not in self._predictors:
            w = self.paths[key]
            if not isinstance(w, (str, Path)):
                self._predictors[key] = w
            elif self.loader is not None:
                self._predictors[key] = self.loader(Path(w))
            else:
                from train.cls.predictor import load_predictor

                self._predictors[key] = load_predictor(Path(w), None, self.device)
        return self._predictors[key]

    def store(self, model: str, fold: int) -> CropStore:
        key = (model, fold)
        if key not in self._cache:
            w, path = self.paths[key], None
            if self.disk and isinstance(w, (str, Path)):
                p = self.predictor(model, fold)
                name = checkpoint_key(Path(w), p.cfg, p.takes_size)
                path = paths.cache_dir() / "cls" / f"{name}.npz"
            self._cache[key] = CropStore(path)
        return self._cache[key]

    def flush(self, force: bool = True) -> None:
        """Write every checkpoint's new crops to the disk cache (without ``force``: throttled)."""
        for store in self._cache.values():
            store.flush(force)

    def content(self, name: str) -> str:
        """The sha1 of image ``name``'s file: what its crops are cached under (read once per process)."""
        if name not in self._content:
            path = self.images_dir / name
            try:
                with open(path, "rb") as fh:
                    self._content[name] = hashlib.file_digest(fh, "sha1").hexdigest()
            except FileNotFoundError:
                raise images.ImageError(path, "image not found") from None
            except OSError as exc:
                raise images.ImageError(path, f"cannot read the image ({exc.strerror or exc})") from None
        return self._content[name]

    def image(self, name: str) -> np.ndarray:
        """The decoded image ``name`` (kept in a bounded LRU: trials ask for the same images again)."""
        if name in self._images:
            self._images.move_to_end(name)
            return self._images[name]
        image = images.load_rgb(self.images_dir / name)
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
        store = self.store(model, fold)
        cache = store.data
        ids = [self.content(n) for n in names]
        if boxes is None:
            keys = [(c,) for c in ids]
        else:
            win = crop_windows(boxes, sizes[:, 0], sizes[:, 1], pred.cfg.margin)
            if pred.takes_size:  # its box size input (whole pixels, see box_size_features) joins the key
                win = np.concatenate([win, np.maximum(np.round(boxes[:, 2:] - boxes[:, :2]), 1)], axis=1)
            keys = [(c, *w) for c, w in zip(ids, win.astype(np.int64).tolist())]
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
            store.unsaved += len(done)
            for j, key in enumerate(done):
                cache[key] = probs[:, j]
        if not keys:
            return np.zeros((3, 0, classes.NUM_CLASSES), dtype=np.float32)
        return np.stack([cache[k] for k in keys], axis=1)

    def probs(self, table: pd.DataFrame, tta: bool, n_cells: Mapping[str, int] | None,
              chunk: int = 512) -> ClassifierProbs:
        """The classifier probabilities of a prediction table's rows (row order kept): THE function that
        classifies the top-n rows of a table (see the module docstring)."""
        from tqdm import tqdm

        table = table.reset_index(drop=True)
        n = len(table)
        names = table["NAME"].to_numpy(dtype=object)
        fold = None
        if self.fold_of is not None:
            f = table["NAME"].map(self.fold_of)
            if f.isna().any():
                raise ValueError(f"image {names[f.isna().to_numpy()][0]!r} is not in the prepared dataset "
                                 f"of {self.images_dir}")
            fold = f.to_numpy(dtype=np.int64)
        single = table["NAME"].map(n_cells).eq(1).to_numpy() if n_cells is not None else np.zeros(n, bool)
        todo = top_rows(table, n_cells)
        xyxy = table[COORDS].to_numpy(dtype=np.float64)
        sizes = table[["width", "height"]].to_numpy(dtype=np.int64)
        modes = {m: self.mode(m) for m in self.models}
        if n_cells is None and "full" in modes.values():
            log.warning("full-image classifiers ignored: n_cells (test.csv rows per image) not given")
        crops: dict[str, list[np.ndarray]] = {}  # crop member -> one array per checkpoint
        fulls: list[np.ndarray] = []
        for model, f in tqdm(list(self.paths), desc="classify crops", leave=False, disable=None):
            kind = modes[model]
            if kind == "full" and n_cells is None:
                continue
            p = np.full((n, classes.NUM_CLASSES), np.nan)
            mask = todo & (single if kind == "full" else True)
            if fold is not None:
                mask &= fold == f
            rows = np.flatnonzero(mask)
            for start in range(0, len(rows), chunk):  # crops of ``chunk`` rows in memory at a time
                r = rows[start:start + chunk]
                views = self._views(model, f, names[r], None if kind == "full" else xyxy[r], sizes[r])
                p[r] = combine(views, tta)
            if kind == "full":
                fulls.append(p)
            else:
                crops.setdefault(model, []).append(p)
        members = {m: _nanmean(parts, n) for m, parts in crops.items()}
        crop = member_mean(members) if members else _nanmean([], n)
        full = _nanmean(fulls, n) if fulls else None
        self.flush(force=False)
        return ClassifierProbs(crop, full, single, members)


def member_mean(members: Mapping[str, np.ndarray], shares: Mapping[str, float] | None = None) -> np.ndarray:
    """Row-wise weighted mean of the crop members' ``(N, 23)`` probabilities (NaN rows: the member did
    not classify the row) with relative ``shares`` (member -> share >= 0; a member not named has 0).
    Each row mixes the members with a share > 0 that classified it, their shares renormalised; NaN
    where none did. ``shares`` None, empty or 0 for every member: equal shares. Pure.

    Shares are divided by the largest first, so a lone member, or equal shares, give exactly the
    plain mean (one member's probabilities bit for bit: a one-member ensemble scores as before)."""
    if not members:
        raise ValueError("member_mean needs at least one member")
    names = list(members)
    w = np.array([float((shares or {}).get(m, 0.0)) for m in names])
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"member shares must be finite and >= 0, got {dict(zip(names, w.tolist()))}")
    if not w.any():
        w = np.ones(len(names))
    return _weighted_nanmean([np.asarray(members[m], dtype=np.float64) for m in names], w / w.max())


def _nanmean(arrays: list[np.ndarray], n: int) -> np.ndarray:
    """Row-wise mean over the checkpoints that classified each row; NaN rows where none did."""
    if not arrays:
        return np.full((n, classes.NUM_CLASSES), np.nan)
    return _weighted_nanmean(arrays, np.ones(len(arrays)))


def _weighted_nanmean(arrays: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    """Row-wise mean of ``arrays`` weighted by ``w`` over those with a weight > 0 that have the row (no
    NaN); NaN rows where none has. Weights of 1 give the plain sum over count."""
    stack = np.stack(arrays)
    have = ~np.isnan(stack).any(axis=2) & (w > 0)[:, None]
    weight = np.where(have, w[:, None], 0.0)
    total = (np.where(have[..., None], stack, 0.0) * weight[..., None]).sum(axis=0)
    count = weight.sum(axis=0)
    out = np.full(stack.shape[1:], np.nan)
    out[count > 0] = total[count > 0] / count[count > 0, None]
    return out
