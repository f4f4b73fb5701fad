"""Image access: sizes from headers, truncation checks, decoding to RGB.

Grayscale and RGBA images are accepted and converted to 3-channel RGB.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

JPEG_EOI = b"\xff\xd9"


def read_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header, without decoding the pixels.

    Raises ``ValueError`` with the path when the file is not a readable image.
    """
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (UnidentifiedImageError, OSError, ImportError) as exc:
        # ImportError: once ultralytics is imported, PIL's open tries the (absent) pi-heif plugin on
        # files it cannot identify
        raise ValueError(f"{path}: not a readable image ({exc})") from None


def is_truncated(path: Path) -> bool:
    """True when a JPEG lacks its end-of-image marker (a cut-off download).

    Trailing padding after the marker (some cameras add zeros) is tolerated.
    Non-JPEG files return False.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(2) != b"\xff\xd8":
            return False
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 1024))
        tail = fh.read().rstrip(b"\x00")
    return not tail.endswith(JPEG_EOI)


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image as an ``(H, W, 3)`` uint8 RGB array (gray/RGBA converted)."""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ImportError) as exc:  # ImportError: see read_size
        raise ValueError(f"{path}: cannot decode image ({exc})") from None
    return np.asarray(rgb)
