"""Crops for the second-stage leukocyte classifier: windows, dataset, sampling, augmentation.

A crop is a box grown by a margin (16 px by default, as the challenge's winner
did) and clipped at the image border, then resized to ``imgsz`` x ``imgsz``.
In ``full`` mode the whole image is the crop (the full-image classifier of
single-cell images). Training crops come from GT boxes, optionally jittered to
look like detector boxes; validation crops come from a detector's out-of-fold
boxes matched to their GT box by best GIoU, as the metric matches them
(``match_truth``), or from the GT boxes themselves.

A crop resized to ``imgsz`` has lost its cell's size, which tells many of the
23 classes apart (median boxes from 80 px, Thromb, to 190 px, MoB): each crop
carries ``box_size_features`` of its box for a ``box_size`` classifier head.
With ``cache`` the dataset decodes each image once instead of once per crop and
epoch (the bulk of a CPU epoch's time on small crops).
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from cytocore import boxes, classes, images, resources
from cytocore.tables import COORDS

log = logging.getLogger(__name__)

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # ImageNet, timm's default for these backbones
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
AUGMENTS = ("none", "light", "default")
SAMPLERS = ("random", "balanced")
SIZE_REF = 128.0  # px: box-size features are log(side / SIZE_REF) (real median box sides run 80-190 px)
CACHE_SHARE = 0.25  # cache: true keeps crops' pixels up to this share of the job's memory (rest decoded)


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


def resize_crop(patch: np.ndarray, imgsz: int) -> np.ndarray:
    """``patch`` resized to ``(imgsz, imgsz)``: area averaging when shrinking, bilinear when growing."""
    shrink = patch.shape[0] > imgsz or patch.shape[1] > imgsz
    return cv2.resize(patch, (imgsz, imgsz), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def extract_crop(image: np.ndarray, box: np.ndarray | None, margin: int, imgsz: int) -> np.ndarray:
    """The ``(imgsz, imgsz, 3)`` uint8 crop of ``box`` (xyxy pixels) with ``margin``; None = whole image."""
    if box is None:
        return resize_crop(image, imgsz)
    h, w = image.shape[:2]
    x1, y1, x2, y2 = crop_window(box, w, h, margin)
    return resize_crop(image[y1:y2, x1:x2], imgsz)


def box_size_features(xyxy: np.ndarray) -> np.ndarray:
    """``(N, 2)`` float32 ``log(width / SIZE_REF), log(height / SIZE_REF)`` of xyxy pixel boxes ``(N, 4)``.

    Sides are rounded to whole pixels (at least 1): a sub-pixel change carries no
    size information, and whole pixels let ``infer.oof_cls`` cache per crop window.
    """
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    sides = np.maximum(np.round(xyxy[:, 2:] - xyxy[:, :2]), 1.0)
    return np.log(sides / SIZE_REF).astype(np.float32)


def image_size_features(images: list[np.ndarray]) -> np.ndarray:
    """``box_size_features`` of whole images (what a ``full``-mode classifier gets as its size)."""
    return box_size_features(np.array([[0.0, 0.0, im.shape[1], im.shape[0]] for im in images]).reshape(-1, 4))


_logged_budgets: set[int] = set()  # each budget is logged once per process (the pre-flight asks per member)


def cache_budget(limits: resources.Limits | None = None) -> int:
    """Bytes ``cache: true`` may keep: ``CACHE_SHARE`` of the job's memory (the cgroup / SLURM limit, not
    the machine's RAM, divided by the ``CYTOKIT_JOBS`` jobs training at once); logged once."""
    limits = limits or resources.Limits()
    budget = resources.cache_budget(CACHE_SHARE, limits)
    if budget in _logged_budgets:
        return budget
    _logged_budgets.add(budget)
    log.info("crop cache budget: %s (%.0f%% of %s, %s, shared by %d job(s))", resources.fmt_bytes(budget),
             100 * CACHE_SHARE, resources.fmt_bytes(limits.memory_bytes()), limits.memory_source(),
             limits.job_count())
    return budget


def loader_workers(requested: int, batch: int, imgsz: int, limits: resources.Limits | None = None) -> int:
    """DataLoader workers of a classifier: ``requested`` capped by the job's cores and /dev/shm (each worker
    holds 2 batches of float32 crops there: ~0.6 GB for 8 workers of 64 crops at 224 px)."""
    per_worker = resources.loader_shm_bytes(batch, imgsz)
    return resources.capped_workers(requested, limits, shm_per_worker=per_worker, what="classifier")


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


def build_augment(name: str, color_aug: str = "hsv", hed_strength: float = 0.05):
    """The albumentations pipeline called ``name`` (applied to uint8 crops), or None for ``none``.

    ``color_aug`` picks the colour step of ``default`` (``train.stain.COLOR_AUGS``): ``hsv`` a generic
    hue/saturation/value jitter, ``hed`` a stain-space jitter of ``hed_strength``, ``none`` neither;
    the brightness/contrast step stays in all three."""
    from train.stain import HEDJitter, check_color_aug

    if name not in AUGMENTS:
        raise ValueError(f"unknown augment {name!r}; valid: {', '.join(AUGMENTS)}")
    check_color_aug(color_aug, hed_strength)
    if name == "none":
        return None
    import albumentations as A

    # Cells have no orientation: every flip and rotation is a valid sample.
    steps = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    if name == "default":
        hsv = A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=12, p=0.5)
        colour = {"hsv": [hsv], "hed": [HEDJitter(hed_strength, p=0.5)], "none": []}[color_aug]
        steps += [
            A.Affine(rotate=(-180, 180), scale=(0.9, 1.1), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            *colour,
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        ]
    return A.Compose(steps)


def labels_of(table: pd.DataFrame) -> np.ndarray:
    """Class ids (``cytocore.classes`` order) of a table's ``class`` column; unknown codes raise."""
    bad = ~table["class"].isin(classes.CLASSES)
    if bad.any():
        raise ValueError(f"unknown class {table['class'][bad].iloc[0]!r} in {int(bad.sum())} row(s)")
    return table["class"].map(classes.CLASS_TO_ID).to_numpy(dtype=np.int64)


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit seed of stream ``stream`` of epoch ``epoch`` of a run seeded ``seed``. Every random draw of
    a classifier epoch (sampling, dropout, jitter, augmentation, mixing) is seeded from it, so an epoch
    draws the same whether the run went straight through or was resumed before it."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))


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
    """Crops of a box table (NAME, x1, y1, x2, y2, class) as ``(tensor, size, class id)`` triples.

    ``size`` is ``box_size_features`` of the (jittered) box; ``full=True`` ignores
    the boxes, uses each row's whole image and its size. ``cache_bytes`` > 0
    decodes every image once, up front (``torch.get_num_threads()`` threads),
    and keeps the pixels each row's crops can reach (the box grown by the margin
    and the largest jitter; the whole image in full mode) until ``cache_bytes``
    are held; the rows past it are decoded per crop as without a cache. The
    crops are the same either way.
    """

    def __init__(self, table: pd.DataFrame, images_dir: Path, imgsz: int, margin: int,
                 augment: str = "none", jitter: float = 0.0, full: bool = False, seed: int = 0,
                 cache_bytes: int = 0, color_aug: str = "hsv", hed_strength: float = 0.05):
        self.table = table.reset_index(drop=True)
        self.names = self.table["NAME"].to_numpy()
        self.xyxy = self.table[COORDS].to_numpy(dtype=np.float64)
        self.labels = labels_of(self.table)
        self.images_dir = Path(images_dir)
        self.imgsz, self.margin, self.jitter, self.full = imgsz, margin, jitter, full
        self.transform = build_augment(augment, color_aug, hed_strength)
        self.seed, self.epoch = seed, 0  # the jitter and augmentation streams: see ``generator``
        self._stream: tuple[int, int] | None = None  # (epoch, torch seed) that ``_rng`` was seeded for
        self._rng: np.random.Generator | None = None
        # per row: (pixels, their x0, y0 in the image, image width, height), or None (decode per crop)
        self.patches: list[tuple[np.ndarray, int, int, int, int] | None] = [None] * len(self.table)
        self.cached_bytes = self._fill_cache(cache_bytes) if cache_bytes > 0 else 0

    def _reach(self, i: int) -> int:
        """Pixels around row ``i``'s box that a jittered crop can reach: the margin, plus the largest
        move of a side (shift ``jitter`` x size, plus half the scale change ``jitter`` x size)."""
        side = float(np.max(self.xyxy[i, 2:] - self.xyxy[i, :2]))
        return self.margin + math.ceil(1.5 * self.jitter * max(side, 0.0)) + 1

    def _fill_cache(self, budget: int) -> int:
        """Decode the images once and keep their rows' reachable pixels, up to ``budget`` bytes."""
        from train import progress

        groups = list(self.table.groupby("NAME", sort=False).indices.items())
        threads, held = max(1, torch.get_num_threads()), 0
        every = progress.Every(30.0)  # at real scale the decoding takes minutes: say where it is
        with ThreadPoolExecutor(threads) as pool:
            for start in range(0, len(groups), 8 * threads):  # a few images decoded ahead, not all
                if every.due():
                    log.info("crop cache: %s",
                             progress.batch_text(start, len(groups), every.elapsed(), "image"))
                chunk = groups[start:start + 8 * threads]
                for (_, rows), image in zip(chunk, pool.map(lambda g: images.load_rgb(self.images_dir / g[0]),
                                                            chunk)):
                    h, w = image.shape[:2]
                    for k, i in enumerate(rows):
                        if self.full:  # the rows of one image share it
                            patch, x1, y1, size = image, 0, 0, image.nbytes if k == 0 else 0
                        else:
                            x1, y1, x2, y2 = crop_window(self.xyxy[i], w, h, self._reach(i))
                            patch = image[y1:y2, x1:x2].copy()
                            size = patch.nbytes
                        if held + size > budget:
                            log.warning("crop cache full (%.1f GiB): %d of %d crops decoded at every epoch",
                                        budget / 2**30, sum(p is None for p in self.patches), len(self))
                            return held
                        self.patches[i] = (patch, x1, y1, w, h)
                        held += size
        return held

    def __len__(self) -> int:
        return len(self.table)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose jitter and augmentation streams the next crops draw from (set before the loader
        starts the epoch's workers)."""
        self.epoch = int(epoch)

    def generator(self) -> np.random.Generator:
        """This process's jitter stream, seeded from (seed, epoch, torch's seed of this process): a
        DataLoader worker's torch seed is the loader's base seed + its id, which the training loop seeds
        per epoch (``train.cls.adapter.seed_epoch``), as it seeds torch in the main process; so the same
        seed and worker count give the same crops, straight or resumed, and every worker and epoch its own.
        The augmentation pipeline (albumentations keeps its own generator, which forked workers would
        share) is reseeded from it at the same moments."""
        key = (self.epoch, torch.initial_seed())
        if self._rng is None or key != self._stream:
            self._stream = key
            self._rng = np.random.default_rng([self.seed, self.epoch, 100, key[1]])
            if self.transform is not None:
                self.transform.set_random_seed(int(self._rng.integers(2**31)))
        return self._rng

    def _pixels(self, i: int, box: np.ndarray | None) -> tuple[np.ndarray, int, int]:
        """The pixels of row ``i``'s crop of ``box`` (None: the whole image) before resizing, and the
        image's width and height."""
        cached = self.patches[i]
        if cached is None:
            image = images.load_rgb(self.images_dir / self.names[i])
            cached = (image, 0, 0, image.shape[1], image.shape[0])
        patch, x0, y0, w, h = cached
        if box is None:
            return patch, w, h
        x1, y1, x2, y2 = crop_window(box, w, h, self.margin)
        ph, pw = patch.shape[:2]
        x1, y1 = min(max(x1 - x0, 0), pw - 1), min(max(y1 - y0, 0), ph - 1)
        return patch[y1:max(min(y2 - y0, ph), y1 + 1), x1:max(min(x2 - x0, pw), x1 + 1)], w, h

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rng = self.generator()
        box = None if self.full else jitter_box(self.xyxy[i], self.jitter, rng)
        patch, w, h = self._pixels(i, box)
        crop = resize_crop(patch, self.imgsz)
        if self.transform is not None:
            crop = self.transform(image=crop)["image"]
        size = box_size_features(np.array([0.0, 0.0, w, h]) if box is None else box)[0]
        return to_tensor(crop)[0], torch.from_numpy(size), int(self.labels[i])


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
