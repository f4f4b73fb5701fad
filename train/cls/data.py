"""Crops for the second-stage leukocyte classifier: windows, dataset, sampling, augmentation.

A crop is a box grown by a margin (16 px by default, as the challenge's winner
did) and clipped at the image border, then resized to ``imgsz`` x ``imgsz``.
In ``full`` mode the whole image is the crop (the full-image classifier of
single-cell images). Training crops come from GT boxes, optionally jittered to
look like detector boxes; validation crops come from a detector's out-of-fold
boxes matched to their GT box by best GIoU, as the metric matches them
(``match_truth``), or from the GT boxes themselves.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from cytokit import boxes, classes, images
from cytokit.tables import COORDS

log = logging.getLogger(__name__)

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # ImageNet, timm's default for these backbones
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
AUGMENTS = ("none", "light", "default")
SAMPLERS = ("random", "balanced")


def crop_window(box: np.ndarray, width: int, height: int, margin: int) -> tuple[int, int, int, int]:
    """Integer pixel window ``(x1, y1, x2, y2)`` (x2, y2 exclusive) of ``box`` grown by ``margin``.

    ``x1 = floor(bx1 - margin)`` and ``x2 = ceil(bx2 + margin)`` (same for y), then
    clipped to ``[0, width] x [0, height]``; a window that clipping empties (a box
    outside the image) keeps at least one pixel at the nearest border.
    """
    bx1, by1, bx2, by2 = (float(v) for v in box)
    x1 = min(max(math.floor(bx1 - margin), 0), width - 1)
    y1 = min(max(math.floor(by1 - margin), 0), height - 1)
    x2 = max(min(math.ceil(bx2 + margin), width), x1 + 1)
    y2 = max(min(math.ceil(by2 + margin), height), y1 + 1)
    return x1, y1, x2, y2


def extract_crop(image: np.ndarray, box: np.ndarray | None, margin: int, imgsz: int) -> np.ndarray:
    """The ``(imgsz, imgsz, 3)`` uint8 crop of ``box`` (xyxy pixels) with ``margin``; None = whole image."""
    h, w = image.shape[:2]
    if box is None:
        patch = image
    else:
        x1, y1, x2, y2 = crop_window(box, w, h, margin)
        patch = image[y1:y2, x1:x2]
    shrink = patch.shape[0] > imgsz or patch.shape[1] > imgsz
    return cv2.resize(patch, (imgsz, imgsz), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def jitter_box(box: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """``box`` with its centre shifted and its sides scaled by up to ``amount`` of its size."""
    if amount <= 0:
        return np.asarray(box, dtype=np.float64)
    cx, cy, w, h = boxes.convert(box, "xyxy", "cxcywh")
    dx, dy, sw, sh = rng.uniform(-amount, amount, size=4)
    return boxes.convert([cx + dx * w, cy + dy * h, w * (1 + sw), h * (1 + sh)], "cxcywh", "xyxy")


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` (or one ``(H, W, 3)``) RGB -> normalised float ``(B, 3, H, W)``."""
    x = np.asarray(crops, dtype=np.float32) / 255.0
    if x.ndim == 3:
        x = x[None]
    x = (x - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def build_augment(name: str):
    """The albumentations pipeline called ``name`` (applied to uint8 crops), or None for ``none``."""
    if name not in AUGMENTS:
        raise ValueError(f"unknown augment {name!r}; valid: {', '.join(AUGMENTS)}")
    if name == "none":
        return None
    import albumentations as A

    # Cells have no orientation: every flip and rotation is a valid sample.
    steps = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    if name == "default":
        steps += [
            A.Affine(rotate=(-180, 180), scale=(0.9, 1.1), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=12, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        ]
    return A.Compose(steps)


def labels_of(table: pd.DataFrame) -> np.ndarray:
    """Class ids (``cytokit.classes`` order) of a table's ``class`` column; unknown codes raise."""
    bad = ~table["class"].isin(classes.CLASSES)
    if bad.any():
        raise ValueError(f"unknown class {table['class'][bad].iloc[0]!r} in {int(bad.sum())} row(s)")
    return table["class"].map(classes.CLASS_TO_ID).to_numpy(dtype=np.int64)


def make_sampler(labels: np.ndarray, kind: str, power: float, seed: int):
    """A ``WeightedRandomSampler`` drawing class c with weight ``count_c ** -power`` per sample
    (``balanced``; power 1 = every class equally often), or None for plain shuffling."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; valid: {', '.join(SAMPLERS)}")
    if kind == "random":
        return None
    counts = np.bincount(labels, minlength=classes.NUM_CLASSES).astype(np.float64)
    weights = counts[labels] ** -float(power)
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights), len(labels), True, generator=gen)


def mix_batch(x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (Beta(mixup, mixup)) or CutMix (Beta(cutmix, cutmix)) of a batch with its reverse.

    ``y`` are soft targets ``(B, C)``; when both are enabled one is picked at
    random. Returns new tensors; alphas of 0 disable a method.
    """
    choices = [m for m, a in (("mixup", mixup), ("cutmix", cutmix)) if a > 0]
    if not choices or len(x) < 2:
        return x, y
    method = choices[rng.integers(len(choices))]
    perm = torch.arange(len(x) - 1, -1, -1)
    if method == "mixup":
        lam = float(rng.beta(mixup, mixup))
        return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
    lam = float(rng.beta(cutmix, cutmix))
    h, w = x.shape[-2:]
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[..., y1:y2, x1:x2] = x[perm][..., y1:y2, x1:x2]
    lam = 1 - (y2 - y1) * (x2 - x1) / (h * w)  # the area actually pasted
    return out, lam * y + (1 - lam) * y[perm]


class CropDataset(torch.utils.data.Dataset):
    """Crops of a box table (NAME, x1, y1, x2, y2, class) as ``(tensor, class id)`` pairs.

    ``full=True`` ignores the boxes and uses each row's whole image.
    """

    def __init__(self, table: pd.DataFrame, images_dir: Path, imgsz: int, margin: int,
                 augment: str = "none", jitter: float = 0.0, full: bool = False, seed: int = 0):
        self.table = table.reset_index(drop=True)
        self.names = self.table["NAME"].to_numpy()
        self.xyxy = self.table[COORDS].to_numpy(dtype=np.float64)
        self.labels = labels_of(self.table)
        self.images_dir = Path(images_dir)
        self.imgsz, self.margin, self.jitter, self.full = imgsz, margin, jitter, full
        self.transform = build_augment(augment)
        self._seeded: int | None = None  # worker seed of the transform (train.dist.reseed_augment)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from train.dist import reseed_augment

        # each worker (new ones every epoch) reseeds the pipeline: albumentations seeds it at construction
        self._seeded = reseed_augment(self.transform, self._seeded)
        image = images.load_rgb(self.images_dir / self.names[i])
        rng = np.random.default_rng(None if self.transform or self.jitter else self.seed + i)
        box = None if self.full else jitter_box(self.xyxy[i], self.jitter, rng)
        crop = extract_crop(image, box, 0 if self.full else self.margin, self.imgsz)
        if self.transform is not None:
            crop = self.transform(image=crop)["image"]
        return to_tensor(crop)[0], int(self.labels[i])


def single_cell_table(box_table: pd.DataFrame) -> pd.DataFrame:
    """The rows of images holding exactly one box (the full-image classifier's training rows)."""
    counts = box_table.groupby("NAME")["NAME"].transform("size")
    return box_table[counts == 1].reset_index(drop=True)


def match_truth(truth: pd.DataFrame, preds: pd.DataFrame, top_n: bool = True) -> pd.DataFrame:
    """Each GT box with the predicted box the metric would give it: the best GIoU (first on ties).

    ``truth``: NAME, x1..y2, class (+ width, height for images without
    predictions). ``preds``: the prediction contract. With ``top_n`` only each
    image's top-N predictions by score compete (N = its GT count), as in a
    submission. Returns ``truth``'s rows with the matched box in x1..y2, the
    matched row's index in ``pred_index`` (-1 when the image has no prediction:
    then the box is the writer's full-image filler ``(0, 0, W-1, H-1)``) and
    the GIoU of the pair in ``giou``.
    """
    out = truth.reset_index(drop=True).copy()
    out["pred_index"] = -1
    out["giou"] = -1.0
    if top_n and len(preds):
        need = out.groupby("NAME").size()
        ranked = preds.assign(_n=preds["NAME"].map(need)).sort_values("score", ascending=False, kind="stable")
        ranked = ranked[ranked.groupby("NAME").cumcount() < ranked["_n"].fillna(0)]
    else:
        ranked = preds
    pred_groups = ranked.groupby("NAME").indices if len(ranked) else {}
    pred_xyxy = ranked[COORDS].to_numpy(dtype=np.float64)
    pred_index = ranked.index.to_numpy()
    new_xyxy = out[COORDS].to_numpy(dtype=np.float64).copy()
    for name, rows in out.groupby("NAME").indices.items():
        cand = pred_groups.get(name)
        if cand is None:
            if "width" not in out.columns:
                raise ValueError(f"image {name} has no prediction and truth has no width/height")
            w, h = out.loc[rows[0], "width"], out.loc[rows[0], "height"]
            filler = np.array([[0.0, 0.0, w - 1.0, h - 1.0]])
            out.loc[rows, "giou"] = boxes.giou_matrix(new_xyxy[rows], filler)[:, 0]
            new_xyxy[rows] = filler
            continue
        g = boxes.giou_matrix(new_xyxy[rows], pred_xyxy[cand])
        best = g.argmax(axis=1)
        out.loc[rows, "pred_index"] = pred_index[cand[best]]
        out.loc[rows, "giou"] = g[np.arange(len(rows)), best]
        new_xyxy[rows] = pred_xyxy[cand[best]]
    out[COORDS] = new_xyxy
    return out
