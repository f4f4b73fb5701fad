"""Stain-space colour augmentation for smears: HED jitter, shared by the crop classifier and the YOLOs.

``HEDJitter`` (an albumentations transform, so both training pipelines take it as is) unmixes each pixel's
optical density ``OD = -ln(I / 255)`` into haematoxylin, eosin and DAB amounts with the Ruifrok & Johnston
matrix (``skimage.color.rgb2hed``'s, written out here: scikit-image is not installed), scales and shifts
each amount by its own random draw, and mixes them back (Tellez et al. 2018, "HED jitter"). The matrix is
invertible (three stains, three channels), so a draw of scale 1 and shift 0 gives the image back exactly;
``A.HEStain`` of the installed albumentations keeps only two stains and changes an image even at scale 1
and shift 0 (it drops the residual), which is why it is not used.

Romanowsky-type smear stains (May-Grunwald-Giemsa, Wright) are not H&E: the H and E axes here stand for a
blue-violet nuclear dye and a pink-orange cytoplasm/erythrocyte dye, which is what the jitter moves apart.

``COLOR_AUGS`` are the values of the ``color_aug`` key of both configs: ``hsv`` (the generic
hue/saturation jitter, as before), ``hed`` (``HEDJitter`` in its place) or ``none``.
"""
from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np

COLOR_AUGS = ("hsv", "hed", "none")
# Rows: the optical-density direction of haematoxylin, eosin and DAB (Ruifrok & Johnston 2001, as
# skimage.color.rgb_from_hed); OD_rgb = amounts_hed @ RGB_FROM_HED.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
OD_FLOOR = 0.25 / 255  # a 0 is read as a quarter grey level (no log of 0); it rounds back to 0
MAX_STRENGTH = 0.5  # a scale range wider than [0.5, 1.5] turns stains around rather than varying them


def check_color_aug(name: str, strength: float) -> None:
    """Refuse an unknown ``color_aug`` or a strength outside ``[0, MAX_STRENGTH]`` (``ValueError``)."""
    if name not in COLOR_AUGS:
        raise ValueError(f"color_aug: {name!r} is not one of {', '.join(COLOR_AUGS)}")
    if not 0 <= strength <= MAX_STRENGTH:
        raise ValueError(f"hed_strength={strength}: must be in [0, {MAX_STRENGTH}]")


def rgb_to_hed(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float64 H, E and DAB amounts (optical-density units) of a uint8 RGB image."""
    od = -np.log(np.maximum(np.asarray(image, dtype=np.float64) / 255.0, OD_FLOOR))
    return od @ HED_FROM_RGB


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """uint8 RGB of ``(H, W, 3)`` H, E and DAB amounts (the inverse of ``rgb_to_hed``, rounded, clipped)."""
    rgb = 255.0 * np.exp(-(np.asarray(hed, dtype=np.float64) @ RGB_FROM_HED))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def hed_jitter(image: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``image`` (uint8 RGB) with each stain's amount ``a`` replaced by ``a * scale + shift``."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"HED jitter takes uint8 RGB images (H, W, 3), not {image.dtype} {image.shape}")
    hed = rgb_to_hed(image)
    return hed_to_rgb(hed * np.asarray(scale, np.float64) + np.asarray(shift, np.float64))


class HEDJitter(A.ImageOnlyTransform):
    """Each stain's amount scaled by U(1 - strength, 1 + strength) and shifted by U(-strength, strength)
    optical-density units (three independent draws each); ``strength`` 0 is the identity.

    Tellez et al. (2018) found strength 0.05 ("HED-light") the best single colour augmentation across
    pathology labs; serialisable with ``A.to_dict`` (ultralytics stores its augmentations that way).
    """

    def __init__(self, strength: float = 0.05, p: float = 0.5):
        super().__init__(p=p)
        check_color_aug("hed", strength)
        self.strength = float(strength)

    def get_params(self) -> dict[str, Any]:
        s = self.strength
        return {"scale": self.random_generator.uniform(1 - s, 1 + s, size=3),
                "shift": self.random_generator.uniform(-s, s, size=3)}

    def apply(self, img: np.ndarray, scale: np.ndarray, shift: np.ndarray, **params: Any) -> np.ndarray:
        return hed_jitter(img, scale, shift)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("strength",)
