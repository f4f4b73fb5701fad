"""Classical cell masks from boxes: no weights, works everywhere.

Two methods, each turning one xyxy box of an RGB smear into a boolean mask of
the cell inside it (``box_mask``):

- ``grabcut`` -- OpenCV's GrabCut initialised from the box (``GC_INIT_WITH_RECT``,
  a few iterations) on a crop around the box: colour models of the cell (inside)
  and of the smear around it (outside) separate the leukocyte from the pink
  background and the red cells.
- ``stain``   -- thresholding of a "blue-purple stain" value (minus the b* axis
  of CIE Lab: chromatin and basophilic cytoplasm are blue-violet, red cells and
  background are pink) with Otsu's threshold inside the box.

Both keep the largest connected component, fill its holes and stay inside the
box. When the result covers less than ``min_fill`` of the box, or more than
``MAX_FILL`` (the whole box: a threshold that found no edge), the segmentation
failed and the ellipse inscribed in the box is used instead, so every box gets
a plausible cell mask.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)

METHODS = ("grabcut", "stain")
MAX_FILL = 0.97  # a "cell" filling more of its box than this is a failed segmentation


def _int_box(box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box as integer pixel bounds clipped to the image, or None when empty."""
    x1, y1, x2, y2 = (float(v) for v in box)
    ix1, iy1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
    ix2, iy2 = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
    if ix2 - ix1 < 2 or iy2 - iy1 < 2:
        return None
    return ix1, iy1, ix2, iy2


def ellipse_mask(box, width: int, height: int) -> np.ndarray:
    """The ellipse inscribed in an xyxy box (pixels whose centre lies inside), (H, W) bool."""
    x1, y1, x2, y2 = (float(v) for v in box)
    a, b = max((x2 - x1) / 2, 1e-6), max((y2 - y1) / 2, 1e-6)
    xs = (np.arange(width) + 0.5 - (x1 + x2) / 2) / a
    ys = (np.arange(height) + 0.5 - (y1 + y2) / 2) / b
    return ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0


def clean(mask: np.ndarray) -> np.ndarray:
    """Largest 8-connected component of a bool mask, holes filled."""
    mask = mask.astype(np.uint8)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, dtype=bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = (comp == biggest).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    return filled.astype(bool)


def _grabcut_crop(crop: np.ndarray, rect: tuple[int, int, int, int], iters: int) -> np.ndarray:
    """GrabCut foreground of an RGB crop, given the box as (x, y, w, h) inside it."""
    gc_mask = np.zeros(crop.shape[:2], dtype=np.uint8)
    bgd = np.zeros((1, 65), dtype=np.float64)
    fgd = np.zeros((1, 65), dtype=np.float64)
    bgr = np.ascontiguousarray(crop[..., ::-1])
    cv2.grabCut(bgr, gc_mask, rect, bgd, fgd, iters, cv2.GC_INIT_WITH_RECT)
    return (gc_mask == cv2.GC_FGD) | (gc_mask == cv2.GC_PR_FGD)


def stain_value(rgb: np.ndarray) -> np.ndarray:
    """Blue-purple stain strength per pixel: ``-b*`` of CIE Lab (uint8 scale, 128 = neutral)."""
    lab = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB)
    return 255 - lab[..., 2]


def _stain_crop(crop: np.ndarray) -> np.ndarray:
    """Otsu threshold of the stain value inside the crop, lightly smoothed."""
    value = cv2.GaussianBlur(stain_value(crop), (5, 5), 0)
    _, fg = cv2.threshold(value, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, kernel)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    return fg.astype(bool)


def box_mask(
    image: np.ndarray,
    box,
    method: str = "grabcut",
    iters: int = 3,
    margin: float = 0.15,
    min_fill: float = 0.15,
) -> np.ndarray:
    """The cell inside one xyxy ``box`` of an RGB uint8 ``image``: an (H, W) bool mask.

    ``margin`` (fraction of the box size) sets how much smear around the box
    GrabCut sees as background; ``min_fill`` is the smallest share of the box
    the mask may cover before the inscribed ellipse replaces it.
    """
    if method not in METHODS:
        raise ValueError(f"unknown fallback mask method {method!r}; valid: {', '.join(METHODS)}")
    height, width = image.shape[:2]
    ib = _int_box(box, width, height)
    out = np.zeros((height, width), dtype=bool)
    if ib is None:
        return out
    x1, y1, x2, y2 = ib
    bw, bh = x2 - x1, y2 - y1
    mx, my = max(4, int(round(margin * bw))), max(4, int(round(margin * bh)))
    cx1, cy1 = max(0, x1 - mx), max(0, y1 - my)
    cx2, cy2 = min(width, x2 + mx), min(height, y2 + my)
    crop = image[cy1:cy2, cx1:cx2]
    if method == "grabcut":
        # GrabCut needs background samples: keep the rect off the crop's edges.
        rx1, ry1 = max(1, x1 - cx1), max(1, y1 - cy1)
        rx2, ry2 = min(crop.shape[1] - 1, x2 - cx1), min(crop.shape[0] - 1, y2 - cy1)
        try:
            fg = _grabcut_crop(crop, (rx1, ry1, rx2 - rx1, ry2 - ry1), iters)
        except cv2.error as exc:  # degenerate colour statistics (flat crops)
            log.debug("grabcut failed on box %s: %s", box, exc)
            fg = np.zeros(crop.shape[:2], dtype=bool)
    else:
        fg = _stain_crop(crop)
    out[cy1:cy2, cx1:cx2] = fg
    return finish(out, box, min_fill)


def finish(mask: np.ndarray, box, min_fill: float = 0.15) -> np.ndarray:
    """A raw cell mask made plausible: inside its box, largest component, holes filled.

    When what is left covers less than ``min_fill`` or more than ``MAX_FILL``
    of the box, the inscribed ellipse replaces it. Used for the classical masks and for MedSAM's.
    """
    height, width = mask.shape
    ib = _int_box(box, width, height)
    if ib is None:
        return np.zeros((height, width), dtype=bool)
    x1, y1, x2, y2 = ib
    out = np.zeros((height, width), dtype=bool)
    out[y1:y2, x1:x2] = clean(mask[y1:y2, x1:x2])
    fill = out.sum() / ((x2 - x1) * (y2 - y1))
    if fill < min_fill or fill > MAX_FILL:
        ellipse = ellipse_mask(box, width, height)
        out[:] = False
        out[y1:y2, x1:x2] = ellipse[y1:y2, x1:x2]
    return out


def box_masks(image: np.ndarray, boxes, method: str = "grabcut", **kwargs) -> np.ndarray:
    """``box_mask`` for each of ``boxes`` (N, 4): an (N, H, W) bool array."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    height, width = image.shape[:2]
    if not len(boxes):
        return np.zeros((0, height, width), dtype=bool)
    return np.stack([box_mask(image, b, method, **kwargs) for b in boxes])
