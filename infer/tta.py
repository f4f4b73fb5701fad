"""Test-time augmentation as data: named views, each an image transform and its exact box inverse.

A view turns the original ``(H, W, 3)`` image into the image the model sees
and maps boxes between the two pixel frames. Every geometric view is written
as a map on NORMALISED xyxy coordinates (``cytocore.boxes.normalize``), so a
box found in the view image is mapped back by::

    normalise by the view image's size -> inverse map -> denormalise by the original size

Views (``VIEWS`` lists the fixed ones):

- ``identity``                 -- the image as is
- ``hflip`` / ``vflip`` / ``hvflip`` -- mirror left-right / top-bottom / both
- ``rot90`` / ``rot180`` / ``rot270`` -- rotate counter-clockwise (``numpy.rot90``);
  rot90 and rot270 swap width and height
- ``scale<f>`` (``scale1.25``, ``scale0.8``) -- resize by ``f`` (bilinear); an
  identity in normalised coordinates, so only the pixel frame changes

``get_view(name)`` / ``get_views(names)`` raise ``ValueError`` on an unknown name.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from cytocore import boxes as bx

BoxMap = Callable[[np.ndarray], np.ndarray]
SCALE_PREFIX = "scale"


def _identity(b: np.ndarray) -> np.ndarray:
    return b.copy()


def _hflip(b: np.ndarray) -> np.ndarray:
    return np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], axis=1)


def _vflip(b: np.ndarray) -> np.ndarray:
    return np.stack([b[:, 0], 1 - b[:, 3], b[:, 2], 1 - b[:, 1]], axis=1)


def _hvflip(b: np.ndarray) -> np.ndarray:
    return _vflip(_hflip(b))


def _rot90(b: np.ndarray) -> np.ndarray:
    """Counter-clockwise quarter turn: view x = y, view y = 1 - x (normalised)."""
    return np.stack([b[:, 1], 1 - b[:, 2], b[:, 3], 1 - b[:, 0]], axis=1)


def _rot270(b: np.ndarray) -> np.ndarray:
    """Clockwise quarter turn (the inverse of ``_rot90``): view x = 1 - y, view y = x."""
    return np.stack([1 - b[:, 3], b[:, 0], 1 - b[:, 1], b[:, 2]], axis=1)


@dataclasses.dataclass(frozen=True)
class View:
    """One TTA view: how to make the view image and how to map boxes both ways."""

    name: str
    image_fn: Callable[[np.ndarray], np.ndarray]
    forward_norm: BoxMap  # normalised boxes: original frame -> view frame
    inverse_norm: BoxMap  # normalised boxes: view frame -> original frame
    swaps_axes: bool = False
    scale: float = 1.0

    def size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of the view image of an original ``width x height`` image."""
        w, h = (height, width) if self.swaps_axes else (width, height)
        if self.scale != 1.0:
            w, h = max(1, int(round(w * self.scale))), max(1, int(round(h * self.scale)))
        return w, h

    def image(self, img: np.ndarray) -> np.ndarray:
        """The view image of an ``(H, W, C)`` array (contiguous, same dtype)."""
        return np.ascontiguousarray(self.image_fn(img))

    def forward(self, xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
        """Absolute xyxy boxes of the original image -> absolute boxes in the view image."""
        b = _boxes(xyxy)
        vw, vh = self.size(width, height)
        return bx.denormalize(self.forward_norm(bx.normalize(b, width, height)), vw, vh)

    def inverse(self, xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
        """Absolute xyxy boxes found in the view image -> absolute boxes in the original image.

        ``width`` and ``height`` are the ORIGINAL image's size.
        """
        b = _boxes(xyxy)
        vw, vh = self.size(width, height)
        return bx.denormalize(self.inverse_norm(bx.normalize(b, vw, vh)), width, height)


def _boxes(xyxy: np.ndarray) -> np.ndarray:
    return np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)


def _scaled(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    def resize(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
        return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)

    return resize


_FIXED: dict[str, View] = {
    v.name: v
    for v in (
        View("identity", lambda im: im, _identity, _identity),
        View("hflip", lambda im: im[:, ::-1], _hflip, _hflip),
        View("vflip", lambda im: im[::-1], _vflip, _vflip),
        View("hvflip", lambda im: im[::-1, ::-1], _hvflip, _hvflip),
        View("rot90", lambda im: np.rot90(im, 1), _rot90, _rot270, swaps_axes=True),
        View("rot180", lambda im: np.rot90(im, 2), _hvflip, _hvflip),
        View("rot270", lambda im: np.rot90(im, 3), _rot270, _rot90, swaps_axes=True),
    )
}
VIEWS: tuple[str, ...] = tuple(_FIXED)


def get_view(name: str) -> View:
    """The view called ``name`` (one of ``VIEWS`` or ``scale<f>`` with f > 0)."""
    if name in _FIXED:
        return _FIXED[name]
    if isinstance(name, str) and name.startswith(SCALE_PREFIX):
        try:
            factor = float(name[len(SCALE_PREFIX):])
        except ValueError:
            factor = float("nan")
        if np.isfinite(factor) and factor > 0:
            return View(name, _scaled(factor), _identity, _identity, scale=factor)
    raise ValueError(
        f"unknown TTA view {name!r}; valid views: {', '.join(VIEWS)}, or scale<f> such as scale1.25"
    )


def get_views(names: Sequence[str]) -> list[View]:
    """Views by name, in order; an empty list or a repeated name raises ``ValueError``."""
    if not names:
        raise ValueError("at least one TTA view is needed (use [identity] for none)")
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise ValueError(f"TTA view(s) listed twice: {', '.join(dup)}")
    return [get_view(n) for n in names]
