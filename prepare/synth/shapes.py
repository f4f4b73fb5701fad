"""Drawing primitives of the synthetic smear generator: colours, outlines, textures, dots.

Everything is vectorised numpy or OpenCV on small patches; cv2 draws with
sub-pixel precision (``SHIFT`` fractional bits) and anti-aliasing into uint8
layers that are then used as float masks in [0, 1]. Colours are handled as
optical density (``od``), so that stains stack like real dyes (Beer-Lambert).
"""
from __future__ import annotations

import cv2
import numpy as np

SHIFT = 4  # fractional bits of cv2 drawing coordinates
ONE = 1 << SHIFT


def od(rgb) -> np.ndarray:
    """Optical density (3,) of a colour seen on a white background: ``-ln(rgb / 255)``."""
    return -np.log(np.clip(np.asarray(rgb, np.float32) / 255.0, 1e-3, 1.0))


def tint(a: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``a[..., None] * colour`` as float32 (H, W, 3), several times faster than numpy broadcasting."""
    a = np.asarray(a, np.float32)
    return cv2.merge([a * np.float32(colour[0]), a * np.float32(colour[1]), a * np.float32(colour[2])])


def paint(out: np.ndarray, a: np.ndarray, colour: np.ndarray) -> None:
    """``out[c] += a * colour[c]`` on a channel-first (3, H, W) optical density accumulator."""
    out += np.asarray(a, np.float32)[None] * np.asarray(colour, np.float32)[:, None, None]


def fixed(points: np.ndarray) -> np.ndarray:
    """Float (..., 2) pixel coordinates as int32 for cv2 drawing with ``SHIFT`` bits."""
    return np.round(np.asarray(points) * ONE).astype(np.int32)


def wobble(rng: np.random.Generator, theta: np.ndarray, amp: float, kmax: int = 5) -> np.ndarray:
    """Radius multipliers ``1 + sum_k a_k cos(k theta + phi_k)`` (a smooth irregular outline)."""
    k = np.arange(2, kmax + 1, dtype=np.float32)
    a = rng.normal(0.0, amp, size=k.size).astype(np.float32) / np.sqrt(k - 1)
    phi = rng.uniform(0, 2 * np.pi, size=k.size).astype(np.float32)
    return 1.0 + (a[:, None] * np.cos(k[:, None] * theta[None, :] + phi[:, None])).sum(axis=0)


def notch(theta: np.ndarray, at: float, depth: float, width: float) -> np.ndarray:
    """Radius multipliers with an indentation of ``depth`` centred on angle ``at``."""
    diff = np.angle(np.exp(1j * (theta - at))).astype(np.float32)
    return 1.0 - depth * np.exp(-0.5 * (diff / width) ** 2)


def outline(centre, rx: float, ry: float, angle: float, radii: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Polygon (n, 2) of a rotated ellipse whose radius is scaled by ``radii`` at each ``theta``."""
    x = rx * radii * np.cos(theta)
    y = ry * radii * np.sin(theta)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], axis=1)


def fill(shape: tuple[int, int], polygons: list[np.ndarray]) -> np.ndarray:
    """Anti-aliased filled polygons as a float32 mask in [0, 1]."""
    layer = np.zeros(shape, np.uint8)
    cv2.fillPoly(layer, [fixed(p) for p in polygons], 255, cv2.LINE_AA, SHIFT)
    return layer.astype(np.float32) * (1 / 255)


def ellipse(layer: np.ndarray, centre, axes, angle_deg: float, value: int = 255, thickness: int = -1) -> None:
    """Draw an anti-aliased ellipse on a uint8 layer (in place)."""
    cv2.ellipse(layer, tuple(fixed(centre)), tuple(fixed(axes)), float(angle_deg), 0, 360, value,
                thickness, cv2.LINE_AA, SHIFT)


def lines(layer: np.ndarray, starts: np.ndarray, ends: np.ndarray, thickness: int, value: int = 255) -> None:
    """Draw anti-aliased segments ``starts[i] -> ends[i]`` on a uint8 layer (in place)."""
    for a, b in zip(fixed(starts), fixed(ends)):
        cv2.line(layer, tuple(a), tuple(b), value, thickness, cv2.LINE_AA, SHIFT)


def dots(layer: np.ndarray, centres: np.ndarray, radii: np.ndarray, value: int = 255) -> None:
    """Draw anti-aliased filled discs on a uint8 layer (in place)."""
    for c, r in zip(fixed(centres), np.round(np.asarray(radii) * ONE).astype(np.int32)):
        cv2.circle(layer, tuple(c), int(r), value, -1, cv2.LINE_AA, SHIFT)


def noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth random field of about unit spread whose blobs are ``scale`` pixels across."""
    h, w = shape
    gh, gw = max(2, int(h / scale) + 2), max(2, int(w / scale) + 2)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return field * (1.0 / max(float(field[::3, ::3].std()), 1e-6))


def sample_in(rng: np.random.Generator, region: np.ndarray, centre, radius: float, n: int,
              spread: float | None = None) -> np.ndarray:
    """Up to ``n`` points (x, y) inside ``region > 0.5``: uniform in a disc of ``radius``
    around ``centre``, or Gaussian with sd ``spread`` when given."""
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    m = 4 * n + 16
    if spread is None:
        r = radius * np.sqrt(rng.random(m))
        t = rng.uniform(0, 2 * np.pi, m)
        pts = np.stack([centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)], axis=1)
    else:
        pts = np.asarray(centre, np.float64) + rng.normal(0.0, spread, size=(m, 2))
    h, w = region.shape
    xi = np.clip(pts[:, 0].astype(np.int64), 0, w - 1)
    yi = np.clip(pts[:, 1].astype(np.int64), 0, h - 1)
    inside = region[yi, xi] > 0.5
    return pts[inside][:n].astype(np.float32)


def edge_weight(mask: np.ndarray, width: float) -> np.ndarray:
    """``exp(-distance to the mask's edge / width)`` inside the mask (1 at the edge)."""
    dist = cv2.distanceTransform((mask > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    return np.exp(-dist / max(width, 1e-3)).astype(np.float32)
