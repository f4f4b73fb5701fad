"""Fusion of prediction tables over TTA views, folds and models: one WBF call per image.

Input: a prediction table (``cytocore.predictions``) holding many members' rows.
A WBF *list* (slot) is one ``(model, fold, view)``; with ``oof=True`` (out-of-
fold tables, where each image was predicted by one fold of each model) the fold
is ignored, so a slot is ``(model, view)``. Each model's weight (``weights``,
default 1) is split evenly over its slots, so adding views or folds does not
change a model's share. Every slot is passed for every image, empty or not,
so a member that found nothing still counts in ensemble-boxes' score rescaling.

Two modes (``FuseParams.mode``):

- ``wbf``      -- class-aware weighted boxes fusion (boxes of different classes
  never merge); the fused class is WBF's.
- ``agnostic`` -- boxes fused ignoring the class; the class is the argmax of the
  score-weighted mean of the members' per-class probabilities (their ``p_``
  columns, or one-hot x score for rows without them). Weight of a member box =
  its score x its slot weight; each member box counts for the fused box it
  overlaps most (IoU), which is the cluster WBF put it in.

Both modes return the fused rows in the prediction contract (``model`` =
``ensemble``, ``fold`` = -1, ``view`` = ``fused``) with ``p_`` columns (the
averaged probabilities, over same-class member boxes in ``wbf`` mode).

The work is vectorised over the whole table (checks, normalisation, top-k per
slot, grouping by sorting once); only the WBF call itself runs per image.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cytocore import boxes as bx
from cytocore import classes, predictions
from cytocore.tables import COORDS
from infer import wbf

log = logging.getLogger(__name__)

MODES = ("wbf", "agnostic")
FUSED_MODEL = "ensemble"
FUSED_VIEW = "fused"


@dataclasses.dataclass(frozen=True)
class FuseParams:
    """The fusion settings (from the ensemble config)."""

    mode: str = "wbf"  # wbf | agnostic
    iou_thr: float = dataclasses.field(kw_only=True)  # IoU above which boxes join a cluster (no default)
    skip_box_thr: float = 0.001  # boxes scored below are ignored
    conf_type: str = "avg"  # ensemble-boxes' conf_type
    max_det: int = 0  # top boxes kept per slot and image before fusion (0 = all)
    weights: dict[str, float] = dataclasses.field(default_factory=dict)  # model -> weight (default 1)
    views: tuple[str, ...] = ()  # TTA views fused (others left out); () = every view in the table

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fusion mode {self.mode!r}; valid: {', '.join(MODES)}")
        wbf.check_params(self.iou_thr, self.skip_box_thr, self.conf_type)
        if self.max_det < 0:
            raise ValueError(f"max_det must be >= 0, got {self.max_det}")


@dataclasses.dataclass
class Grouped:
    """A prediction table checked, normalised, filtered and sorted by (image, slot, -score)."""

    names: np.ndarray  # image names, one per image
    width: np.ndarray  # per image
    height: np.ndarray  # per image
    start: np.ndarray  # rows of image i: start[i]:start[i+1] (len = images + 1)
    slot: np.ndarray  # slot id per row
    slot_names: list[str]  # "model|fold|view" ("model|*|view" out of fold)
    slot_models: list[str]  # the model of each slot
    boxes01: np.ndarray  # (R, 4) normalised, clipped
    scores: np.ndarray  # (R,)
    labels: np.ndarray  # (R,) int
    probs: np.ndarray  # (R, 23) member class probabilities (one-hot x score without p_ columns)

    @property
    def models(self) -> list[str]:
        return sorted(set(self.slot_models))

    def slot_weights(self, weights: dict[str, float] | None = None,
                     views: tuple[str, ...] = ()) -> np.ndarray:
        """Each model's weight (default 1) split evenly over its slots present in the table;
        0 for the slots of views not in ``views`` (when given)."""
        weights = dict(weights or {})  # models without rows here (nothing detected) need no slot
        used = np.array([not views or s.split("|")[2] in views for s in self.slot_names], dtype=bool)
        count = pd.Series(np.asarray(self.slot_models, dtype=object)[used]).value_counts()
        w = np.array([weights.get(m, 1.0) / count[m] if u else 0.0 for m, u in zip(self.slot_models, used)],
                     dtype=np.float64)
        return np.asarray(wbf.check_weights(w, len(w), self.slot_names))


def _without_slots(g: Grouped, drop: np.ndarray) -> Grouped:
    """``g`` without the slots flagged in ``drop`` (zero-weight members: WBF cannot average them)."""
    keep_slots = np.flatnonzero(~drop)
    remap = np.full(len(drop), -1)
    remap[keep_slots] = np.arange(len(keep_slots))
    rows = ~drop[g.slot]
    image = np.repeat(np.arange(len(g.names)), np.diff(g.start))[rows]
    return dataclasses.replace(
        g, start=np.searchsorted(image, np.arange(len(g.names) + 1)), slot=remap[g.slot[rows]],
        slot_names=[g.slot_names[i] for i in keep_slots], slot_models=[g.slot_models[i] for i in keep_slots],
        boxes01=g.boxes01[rows], scores=g.scores[rows], labels=g.labels[rows], probs=g.probs[rows],
    )


def member_probs(df: pd.DataFrame) -> np.ndarray:
    """(R, 23) per-class probabilities of each row: its p_ columns, else one-hot x score."""
    lab = df["class"].map(classes.CLASS_TO_ID).to_numpy(dtype=np.int64)
    onehot = np.zeros((len(df), classes.NUM_CLASSES))
    onehot[np.arange(len(df)), lab] = df["score"].to_numpy(dtype=np.float64)
    if not predictions.has_probs(df):
        return onehot
    p = np.array(df[list(classes.PROB_COLUMNS)].to_numpy(dtype=np.float64))  # a writable copy
    missing = ~np.isfinite(p).all(axis=1)
    p[missing] = onehot[missing]
    return p


def group(df: pd.DataFrame, skip_box_thr: float = 0.0, max_det: int = 0, oof: bool = False,
          slots: list[str] | None = None) -> Grouped:
    """Check and arrange a prediction table for per-image fusion (all vectorised).

    Rows scored below ``skip_box_thr`` are dropped and at most ``max_det`` rows
    (0: all) kept per image and slot, the best first. ``slots``: every
    ``model|fold|view`` of the whole table when ``df`` holds only some of its
    images (the slot weights are those of the whole, so each image fuses as it
    would in one table).
    """
    df = df.reset_index(drop=True)
    for col in predictions.COLUMNS:
        if col not in df.columns:
            raise ValueError(f"predictions: missing column {col}")
    if oof:
        per_image = df.groupby(["NAME", "model"])["fold"].nunique()
        if (per_image > 1).any():
            name, model = per_image[per_image > 1].index[0]
            raise ValueError(f"out-of-fold predictions: image {name} has rows from several folds of {model}")
    fold_key = "*" if oof else df["fold"].astype(str)
    slot_key = df["model"].astype(str) + "|" + fold_key + "|" + df["view"].astype(str)
    if slots is None:
        slot, slot_names = pd.factorize(slot_key, sort=True)
    else:
        slot_names = pd.Index(sorted(slots))
        slot = pd.Categorical(slot_key, categories=slot_names).codes.astype(np.int64)
        if (slot < 0).any():
            raise ValueError(f"predictions: slot {slot_key[slot < 0].iloc[0]!r} not among the slots given")
    bad = ~df["class"].isin(classes.CLASSES)
    if bad.any():
        first = df[bad].iloc[0]
        raise ValueError(f"predictions of {first['model']}: unknown class {first['class']!r}")
    labels = df["class"].map(classes.CLASS_TO_ID).to_numpy(dtype=np.int64)
    b01, scores, labels, keep = wbf.prepare(
        df[COORDS].to_numpy(dtype=np.float64), df["score"].to_numpy(dtype=np.float64),
        labels, df["width"].to_numpy(dtype=np.float64), df["height"].to_numpy(dtype=np.float64),
        slot, list(slot_names),
    )
    keep &= scores >= skip_box_thr
    image, names = pd.factorize(df["NAME"].astype(str), sort=True)
    sizes = df.groupby(image)[["width", "height"]].first()
    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((-scores[idx], slot[idx], image[idx]))]
    if max_det:
        key = image[idx].astype(np.int64) * len(slot_names) + slot[idx]
        first = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
        rank = np.arange(len(idx)) - np.repeat(first, np.diff(np.r_[first, len(idx)]))
        idx = idx[rank < max_det]
    probs = member_probs(df.iloc[idx])
    return Grouped(
        names=np.asarray(names, dtype=object),
        width=sizes["width"].to_numpy(dtype=np.int64), height=sizes["height"].to_numpy(dtype=np.int64),
        start=np.searchsorted(image[idx], np.arange(len(names) + 1)),
        slot=slot[idx], slot_names=list(slot_names), slot_models=[s.split("|")[0] for s in slot_names],
        boxes01=b01[idx], scores=scores[idx], labels=labels[idx], probs=probs,
    )


def _assigned_probs(
    in_boxes: np.ndarray, in_labels: np.ndarray, in_weight: np.ndarray, in_probs: np.ndarray,
    out_boxes: np.ndarray, out_labels: np.ndarray | None,
) -> np.ndarray:
    """Weighted mean of member probabilities per fused box (each member box -> its best-IoU fused box).

    A member box that overlaps no fused box (of its class, with ``out_labels``) took no
    part in the fusion and is left out.
    """
    iou = bx.iou_matrix(in_boxes, out_boxes)
    if out_labels is not None:
        iou = np.where(in_labels[:, None] == out_labels[None, :], iou, -1.0)
    target = np.argmax(iou, axis=1)
    used = iou[np.arange(len(target)), target] > 0
    target, in_probs, in_weight = target[used], in_probs[used], in_weight[used]
    num = np.zeros((len(out_boxes), in_probs.shape[1]))
    np.add.at(num, target, in_probs * in_weight[:, None])
    den = np.zeros(len(out_boxes))
    np.add.at(den, target, in_weight)
    return num / np.maximum(den, np.finfo(float).tiny)[:, None]


def fuse_grouped(g: Grouped, params: FuseParams, progress: bool = True) -> pd.DataFrame:
    """Fuse every image of ``g`` with ``params``; returns the fused prediction table."""
    params.check()
    slot_weights = g.slot_weights(params.weights, tuple(params.views))
    if (slot_weights == 0).any():
        g = _without_slots(g, slot_weights == 0)
        slot_weights = slot_weights[slot_weights > 0]
    n_slots = len(g.slot_names)
    slot_ids = np.arange(1, n_slots)
    parts: list[tuple] = []
    agnostic = params.mode == "agnostic"
    for i in tqdm(range(len(g.names)), desc=f"fuse ({params.mode})", disable=not progress, mininterval=2):
        lo, hi = g.start[i], g.start[i + 1]
        if hi == lo:
            continue
        cuts = np.searchsorted(g.slot[lo:hi], slot_ids)
        b, s, lab = g.boxes01[lo:hi], g.scores[lo:hi], g.labels[lo:hi]
        fuse_lab = np.zeros_like(lab) if agnostic else lab
        ob, os_, ol = wbf.fuse_normalized(
            np.split(b, cuts), np.split(s, cuts), np.split(fuse_lab, cuts), slot_weights,
            params.iou_thr, params.skip_box_thr, params.conf_type,
        )
        if not len(ob):
            continue
        weight = np.where(s >= params.skip_box_thr, s * slot_weights[g.slot[lo:hi]], 0.0)
        p = _assigned_probs(b, lab, weight, g.probs[lo:hi], ob, None if agnostic else ol)
        if agnostic:
            ol = np.argmax(p, axis=1)
        parts.append((i, ob, os_, ol, p))
    return _table(g, parts)


def _table(g: Grouped, parts: list[tuple]) -> pd.DataFrame:
    if not parts:
        return predictions.empty(with_probs=True)
    img = np.concatenate([np.full(len(p[1]), p[0]) for p in parts])
    w, h = g.width[img], g.height[img]
    xyxy = bx.denormalize(np.concatenate([p[1] for p in parts]), w, h)
    probs = np.concatenate([p[4] for p in parts])
    total = probs.sum(axis=1, keepdims=True)
    probs = np.where(total > 0, probs / np.where(total > 0, total, 1.0), probs)
    n = len(img)
    data = {
        "NAME": g.names[img], "x1": xyxy[:, 0], "y1": xyxy[:, 1], "x2": xyxy[:, 2], "y2": xyxy[:, 3],
        "score": np.concatenate([p[2] for p in parts]),
        "class": np.asarray(classes.CLASSES, dtype=object)[np.concatenate([p[3] for p in parts])],
        "width": w, "height": h, "model": np.full(n, FUSED_MODEL, dtype=object),
        "fold": np.full(n, -1, dtype=np.int64), "view": np.full(n, FUSED_VIEW, dtype=object),
    }
    data.update({col: probs[:, j] for j, col in enumerate(classes.PROB_COLUMNS)})
    return pd.DataFrame(data)


def fuse(df: pd.DataFrame, params: FuseParams, oof: bool = False, progress: bool = True,
         slots: list[str] | None = None) -> pd.DataFrame:
    """Fuse a prediction table over its models, folds and views (see the module docstring); ``slots``:
    see ``group``."""
    params.check()
    g = group(df, params.skip_box_thr, params.max_det, oof=oof, slots=slots)
    return fuse_grouped(g, params, progress=progress)


def fuse_parts(parts: list[Path], params: FuseParams, slots: list[str]) -> pd.DataFrame:
    """``fuse`` of one chunk of images read from its parquet ``parts`` (every member-fold's rows of those
    images; ``infer.ensemble.fuse_files`` writes them), with the ``slots`` of the whole test set: what
    one fusion worker process does, and the in-process path too (the same code either way)."""
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    return fuse(df, params, progress=False, slots=slots)


def worker_init() -> None:
    """A fusion worker's start: its numeric libraries on one thread each (the pool is the parallelism).
    The worker imports this module only, not torch; were torch loaded, it gets one thread too."""
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency: caps loaded BLAS/OpenMP pools

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"  # libraries loaded later
    threadpool_limits(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
