"""What a synthetic data set holds, decided before any pixel is drawn.

``make_plan(n_images, seed, test_fraction)`` returns one ``ImagePlan`` per
image: its challenge-like name, size, the classes of its cells (the first one
centred), whether that cell crosses the border, and its split. Everything is
drawn from one numpy Generator seeded by ``seed``, so a seed gives the same plan
on every machine and with any number of workers.

Class frequencies follow the real train box counts (docs/CHALLENGE.md section 2) with a
floor of up to 4 images per class, so that even 100 images cover all 23
classes; the train/test split is stratified on the centred cell's class and
keeps most of a rare class in train.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from cytocore.classes import CLASSES
from prepare.synth.classes import BOX_COUNTS, RECIPES

CLASS_FLOOR = 4  # images per class guaranteed when there are enough images
BOXES_PER_MULTI = 2.3  # mean boxes of a real multi-cell image
EXTRA_CELLS = (1, 2, 3, 4, 5)  # extra cells of a multi-cell image ...
EXTRA_P = (0.78, 0.13, 0.05, 0.025, 0.015)  # ... and their probabilities (real train.csv)
SAME_CLASS_P = 0.65  # share of multi-cell images holding one class only (real: 2030 / 3134)
EDGE_P = 0.012  # centred cell pushed across the image border
LARGE_P, LARGE_LYSEE_P = 0.02, 0.25  # images of about 600 px (more often for Lysee) ...
CROWDED = 0.4  # ... and always when the cells' boxes would cover this share of a 360 px image
SMALL_SIDES = (352, 356, 360, 360, 360, 363, 366, 368, 370)
SIDE_JITTER = (0, 0, 0, 2, -2, -4)
LARGE_SIZES = ((608, 608), (608, 608), (600, 600), (612, 608))


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    """One image to draw."""

    index: int
    name: str
    width: int
    height: int
    classes: tuple[str, ...]  # first = the centred cell
    edge: bool  # the centred cell crosses the image border
    test: bool


def class_weights() -> np.ndarray:
    """Probability of each class (``CLASSES`` order) from the real box counts."""
    w = np.array([BOX_COUNTS[c] for c in CLASSES], np.float64)
    return w / w.sum()


def multi_probability(code: str) -> float:
    """Chance that an image centred on ``code`` holds several cells.

    docs/CHALLENGE.md section 2 gives the share s of a class's boxes that sit in multi-cell
    images; with m boxes per such image, the image-level chance p solves
    s = m p / (m p + 1 - p).
    """
    s, m = RECIPES[code].multi, BOXES_PER_MULTI
    return s / (m - (m - 1) * s)


def _primaries(rng: np.random.Generator, n: int) -> np.ndarray:
    """Class id of each image's centred cell: a floor per class, the rest by frequency."""
    w = class_weights()
    k = len(CLASSES)
    floor = min(CLASS_FLOOR, n // k)
    if floor == 0:
        ids = rng.choice(k, size=n, replace=False, p=w)
    else:
        ids = np.concatenate([np.repeat(np.arange(k), floor), rng.choice(k, size=n - k * floor, p=w)])
    return rng.permutation(ids)


def _split(rng: np.random.Generator, primaries: np.ndarray, fraction: float) -> np.ndarray:
    """Test flags stratified by class; a class keeps at least min(3, half) of its images in train."""
    test = np.zeros(len(primaries), bool)
    for c in np.unique(primaries):
        idx = np.flatnonzero(primaries == c)
        want = int(np.floor(len(idx) * fraction + rng.random()))
        n_test = min(want, max(len(idx) - 3, len(idx) // 2))
        test[rng.choice(idx, size=n_test, replace=False)] = True
    if len(primaries) >= 2 and not test.any():
        test[rng.integers(len(primaries))] = True
    if test.all():
        test[rng.integers(len(primaries))] = False
    return test


def _names(rng: np.random.Generator, n: int) -> list[str]:
    """Unique names like the real ones: 8 hex chars, '-', 1 hex char, '.jpg'."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = f"{int(rng.integers(0, 2 ** 32)):08x}-{int(rng.integers(16)):x}.jpg"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def make_plan(n_images: int, seed: int, test_fraction: float = 0.25) -> list[ImagePlan]:
    """The plan of a data set of ``n_images`` images (deterministic for ``seed``)."""
    if n_images < 1:
        raise ValueError(f"--images must be at least 1, got {n_images}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    rng = np.random.default_rng([seed, 1])
    primaries = _primaries(rng, n_images)
    test = _split(rng, primaries, test_fraction)
    names = _names(rng, n_images)
    w = class_weights()
    plans = []
    for i, cid in enumerate(primaries):
        code = CLASSES[cid]
        classes = [code]
        if rng.random() < multi_probability(code):
            for _ in range(int(rng.choice(EXTRA_CELLS, p=EXTRA_P))):
                same = rng.random() < SAME_CLASS_P
                classes.append(code if same else CLASSES[int(rng.choice(len(CLASSES), p=w))])
        crowded = sum(np.prod(RECIPES[c].size) for c in classes) > CROWDED * SMALL_SIDES[4] ** 2
        if crowded or rng.random() < (LARGE_LYSEE_P if code == "Lysee" else LARGE_P):
            width, height = LARGE_SIZES[int(rng.integers(len(LARGE_SIZES)))]
        else:
            width = int(rng.choice(SMALL_SIDES))
            height = min(370, width + int(rng.choice(SIDE_JITTER)))
        edge = bool(rng.random() < EDGE_P)
        plans.append(ImagePlan(i, names[i], width, height, tuple(classes), edge, bool(test[i])))
    return plans
