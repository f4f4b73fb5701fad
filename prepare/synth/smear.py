"""One synthetic blood smear image: red cells, leukocytes, stain, lighting, blur, noise.

``render(width, height, classes, edge, rng)`` places the cells (the first one
roughly centred, or crossing the border when ``edge``), draws a background of
overlapping red cells and a few platelets around them, and finishes the image
like a microscope camera would (per-image stain balance, illumination,
saturation and hue, blur, sensor noise). It returns the RGB image, the boxes
(unclipped integer ``xyxy``, as annotators give them), their classes and a
label mask (0 = background, i = the i-th box's cell) used by the tests.
"""
from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np

from prepare.synth import shapes as sh
from prepare.synth.cells import draw_cell

RBC = sh.od((230, 170, 164))  # red cell: salmon pink (each image varies it a little)
PLATELET = sh.od((150, 96, 172))  # small platelets: purple
MIN_VISIBLE = 0.45  # share of an off-centre cell's box that must lie inside the image
INSIDE_TRIES = 50  # placements of an off-centre cell tried fully inside the image first


@dataclasses.dataclass
class Scene:
    """A rendered image: ``rgb`` (H, W, 3) uint8, ``boxes`` (n, 4) int xyxy, ``classes``,
    ``labels`` (H, W) int16 (0 = background, i = the cell of box i - 1)."""

    rgb: np.ndarray
    boxes: np.ndarray
    classes: list[str]
    labels: np.ndarray


@functools.lru_cache(maxsize=1)
def _rbc_templates() -> tuple[np.ndarray, ...]:
    """Red cell density templates (96 px for 2.2 radii): discs with a paler centre and a soft edge."""
    yy, xx = np.mgrid[-1.1:1.1:96j, -1.1:1.1:96j].astype(np.float32)
    d = np.sqrt(xx ** 2 + yy ** 2)
    disc = np.clip((1.0 - d) / 0.05 + 0.5, 0.0, 1.0)
    out = []
    for pallor in (0.4, 0.55, 0.7):
        for rim in (0.1, 0.25):
            body = 1.0 - pallor * np.exp(-((d / 0.42) ** 2)) + rim * np.exp(-(((d - 0.86) / 0.1) ** 2))
            out.append((disc * body).astype(np.float32))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _noise_tile() -> np.ndarray:
    """A fixed tile of unit Gaussian sensor noise; images take random crops of it."""
    return np.random.default_rng(20241130).standard_normal((700, 700, 3), dtype=np.float32)


def _add(layer: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    """``layer[y0:, x0:] += patch``, clipped to the layer."""
    h, w = layer.shape[:2]
    ph, pw = patch.shape[:2]
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + pw, w), min(y0 + ph, h)
    if xa < xb and ya < yb:
        layer[ya:yb, xa:xb] += patch[ya - y0:yb - y0, xa - x0:xb - x0]


def red_cells(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Density (H, W) of a monolayer of red cells on a jittered hexagonal grid, some overlapping."""
    d = rng.uniform(66.0, 80.0)
    step = d * rng.uniform(0.98, 1.16)
    keep = rng.uniform(0.5, 0.8)
    ys = np.arange(-d / 2, height + d / 2, step * 0.866)
    xs = np.arange(-d / 2, width + d / 2, step)
    gx, gy = np.meshgrid(xs, ys)
    gx = gx + (np.arange(len(ys)) % 2)[:, None] * step / 2
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1) + rng.normal(0.0, 0.2 * step, (gx.size, 2))
    pts = pts[rng.random(len(pts)) < keep]
    templates = _rbc_templates()
    layer = np.zeros((height, width), np.float32)
    sizes = d * 1.1 * np.exp(rng.normal(0.0, 0.06, len(pts)))
    aspects = rng.uniform(0.84, 1.0, len(pts))
    kinds = rng.integers(0, len(templates), len(pts))
    flips = rng.random(len(pts)) < 0.5
    for (x, y), s, a, k, f in zip(pts, sizes, aspects, kinds, flips):
        w, h = (int(s * a), int(s)) if f else (int(s), int(s * a))
        patch = cv2.resize(templates[k], (w, h), interpolation=cv2.INTER_LINEAR)
        _add(layer, patch, int(x - w / 2), int(y - h / 2))
    return layer


def _place(rng, i: int, edge: bool, half: np.ndarray, width: int, height: int,
           placed: list) -> np.ndarray | None:
    """Centre of the i-th cell: the first near the middle (or across a border), others anywhere free."""
    if i == 0:
        c = np.array([width / 2, height / 2]) + rng.normal(0.0, 0.045 * min(width, height), 2)
        if edge:  # push it over one border so that 15-55 % of its box lies outside
            side = int(rng.integers(4))
            axis, size = side % 2, (width, height)[side % 2]
            inside = half[axis] * (1.0 - 2 * rng.uniform(0.15, 0.55))
            c[axis] = inside if side < 2 else size - inside
        return c
    for attempt in range(INSIDE_TRIES + 15):  # fully inside first, then partly outside like real border cells
        c = rng.uniform([0.0, 0.0], [width, height])
        lo, hi = np.maximum(c - half, 0), np.minimum(c + half, [width, height])
        visible = np.prod(np.maximum(hi - lo, 0)) / np.prod(2 * half)
        if visible < (0.999 if attempt < INSIDE_TRIES else MIN_VISIBLE):
            continue
        if all(np.hypot(*(c - pc)) > 0.8 * (half.max() + ph) for pc, ph in placed):
            return c
    return None


def _region(x0: int, y0: int, ph: int, pw: int, width: int, height: int):
    """Slices of the image and of a patch at (x0, y0) that overlap, or None."""
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + pw, width), min(y0 + ph, height)
    if xa >= xb or ya >= yb:
        return None
    return (slice(ya, yb), slice(xa, xb)), (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))


def render(width: int, height: int, classes: list[str] | tuple[str, ...], edge: bool,
           rng: np.random.Generator) -> Scene:
    """Draw one smear image holding cells of ``classes`` (those that find room)."""
    rbc = red_cells(rng, height, width)
    labels = np.zeros((height, width), np.int16)
    placed: list[tuple[np.ndarray, float]] = []
    boxes, kept, cells = [], [], []
    for i, code in enumerate(classes):
        cell = draw_cell(code, rng)
        x1, y1, x2, y2 = cell.extent
        mid = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
        half = np.array([(x2 - x1) / 2, (y2 - y1) / 2]) + 1
        c = _place(rng, i, edge, half, width, height, placed)
        if c is None:
            continue
        x0, y0 = (np.round(c - mid)).astype(int)
        img_sl, patch_sl = _region(x0, y0, *cell.mask.shape, width, height)
        rbc[img_sl] *= 1.0 - 0.94 * cell.cover[patch_sl]  # the cell hides the red cells behind it
        labels[img_sl][cell.mask[patch_sl]] = len(kept) + 1
        pad = rng.integers(1, 5, 4)
        boxes.append([x0 + x1 - pad[0], y0 + y1 - pad[1], x0 + x2 + pad[2], y0 + y2 + pad[3]])
        kept.append(code)
        cells.append((cell.od[patch_sl], img_sl))
        placed.append((c, float(half.max())))
    od_img = sh.tint(rbc, RBC * rng.normal(1.0, 0.08, 3).astype(np.float32))
    for od_patch, img_sl in cells:
        od_img[img_sl] += od_patch
    spots = rng.uniform([0, 0], [width, height], (int(rng.integers(0, 4)), 2))
    for p, r in zip(spots, rng.uniform(2.5, 5.0, 3)):
        if labels[int(p[1]), int(p[0])] == 0:  # small platelets, between the cells
            spot = np.zeros((16, 16), np.uint8)
            sh.ellipse(spot, p - np.floor(p) + 8, (r, r * 0.8), rng.uniform(0, 180))
            _add(od_img, sh.tint(spot, PLATELET / 255), int(p[0]) - 8, int(p[1]) - 8)
    rgb = finish(rng, od_img)
    return Scene(rgb, np.asarray(boxes, np.int64).reshape(-1, 4), kept, labels)


def finish(rng: np.random.Generator, od_img: np.ndarray) -> np.ndarray:
    """Optical density -> camera image: stain balance, light, colour, blur, noise (uint8 RGB)."""
    height, width = od_img.shape[:2]
    stain = rng.normal(1.0, 0.07, 3).astype(np.float32) * rng.uniform(0.85, 1.12)
    light = np.clip(np.array([243.0, 232.0, 236.0]) + rng.normal(0.0, 5.0, 3), 200, 255).astype(np.float32)
    gx, gy = (float(v) for v in rng.normal(0.0, 0.05, 2))
    illum = np.add.outer(gy * (np.arange(height, dtype=np.float32) / height - 0.5),
                         gx * (np.arange(width, dtype=np.float32) / width - 0.5)) + 1.0
    img = cv2.multiply(od_img, tuple(float(-v) for v in stain) + (0.0,))
    np.exp(img, out=img)
    sat, hue, gain = rng.uniform(0.75, 1.15), rng.normal(0.0, 0.06), rng.uniform(0.94, 1.04)
    k = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.cos(hue) * np.eye(3) + np.sin(hue) * cross + (1 - np.cos(hue)) * np.outer(k, k)
    mix = sat * np.eye(3) + (1 - sat) / 3 * np.ones((3, 3))
    img = cv2.transform(img, (gain * rot @ mix @ np.diag(light)).astype(np.float32))
    img *= cv2.merge([illum, illum, illum])
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.0))
    tile = _noise_tile()
    oy, ox = rng.integers(0, tile.shape[0] - height + 1), rng.integers(0, tile.shape[1] - width + 1)
    img += tile[oy:oy + height, ox:ox + width] * np.float32(rng.uniform(1.5, 3.5))
    return np.clip(img, 0, 255, out=img).astype(np.uint8)
