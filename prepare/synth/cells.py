"""One synthetic leukocyte (or giant platelet, or lysed cell) drawn from its class recipe.

``draw_cell(code, rng)`` returns a ``CellPatch``: the optical density of the
cell on a square patch, how much of the smear behind it the cell hides, and
the boolean mask of its pixels (its box is the mask's extent plus a few pixels,
like an annotator's). The look of each class is in ``prepare.synth.classes``.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from prepare.synth import shapes as sh
from prepare.synth.classes import AZUR, BASO, EOSIN, RECIPES, Recipe

BOX_PAD = 3.5  # px between the drawn cell and the real annotators' median box
DUST = sh.od((206, 168, 204))  # fine neutrophilic granules
ROD = sh.od((118, 26, 92))  # Auer rods: dense red-purple
NUCLEOLUS_TINT = sh.od((205, 215, 240))  # nucleoli look pale blue-grey
GRANULES = {  # kind -> (colour OD, radius range px, may cover the nucleus, opacity)
    "few": (sh.od(AZUR), (1.4, 2.3), False, 1.0),
    "azur": (sh.od(AZUR), (1.0, 1.7), False, 0.9),
    "coarse": (sh.od(AZUR), (1.3, 2.2), True, 1.0),
    "packed": (sh.od((138, 40, 104)), (1.4, 2.4), True, 1.0),
    "eo": (sh.od(EOSIN), (2.3, 3.3), False, 0.95),
    "ba": (sh.od(BASO), (2.4, 4.2), True, 1.0),
}


@dataclasses.dataclass
class CellPatch:
    """A drawn cell: ``od`` (P, P, 3) float32, ``cover`` (P, P) in [0, 1], ``mask`` (P, P) bool."""

    code: str
    od: np.ndarray
    cover: np.ndarray
    mask: np.ndarray

    @property
    def extent(self) -> tuple[int, int, int, int]:
        """Tight ``(x1, y1, x2, y2)`` of the mask in patch pixels (inclusive)."""
        ys = np.flatnonzero(self.mask.any(axis=1))
        xs = np.flatnonzero(self.mask.any(axis=0))
        return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


def draw_cell(code: str, rng: np.random.Generator) -> CellPatch:
    """Draw one cell of class ``code`` (one of the 23 codes) with random size, shape and texture."""
    recipe = RECIPES[code]
    scale = np.exp(rng.normal(0.0, recipe.spread))
    w, h = (np.asarray(recipe.size, np.float64) * scale * np.exp(rng.normal(0.0, 0.05, 2)))
    rx, ry = max(w / 2 - BOX_PAD, 12.0), max(h / 2 - BOX_PAD, 12.0)
    size = int(2 * max(rx, ry) * 1.2) + 24
    centre = np.array([size / 2, size / 2]) + rng.uniform(-0.5, 0.5, 2)
    if recipe.nucleus == "smudge":
        return _smudge(code, recipe, rng, size, centre, rx, ry)
    return _cell(code, recipe, rng, size, centre, rx, ry)


def _cell(code: str, r: Recipe, rng, size: int, centre, rx: float, ry: float) -> CellPatch:
    shape = (size, size)
    theta = np.linspace(0, 2 * np.pi, 160, endpoint=False, dtype=np.float32)
    angle = rng.uniform(0, np.pi)
    radii = sh.wobble(rng, theta, 0.06 if r.outline == "irregular" else 0.022)
    if r.nucleus == "none":  # giant platelet: irregular body
        radii = sh.wobble(rng, theta, 0.11, kmax=7)
    if r.outline == "scalloped":
        for at in rng.uniform(0, 2 * np.pi, rng.integers(3, 6)):
            radii = radii * sh.notch(theta, at, rng.uniform(0.05, 0.1), rng.uniform(0.18, 0.3))
    cyto = sh.fill(shape, [sh.outline(centre, rx, ry, angle, radii, theta)])
    if r.outline == "villous":
        cyto = np.maximum(cyto, _villi(rng, shape, centre, rx, ry, angle, radii, theta))
    R = float(np.sqrt(rx * ry))
    density = 1.0 + 0.07 * sh.noise(rng, shape, 4.0)

    nuc = np.zeros(shape, np.float32)
    ncentre = centre
    if r.nucleus != "none":
        direction = rng.uniform(0, 2 * np.pi)
        ncentre = centre + r.offset * R * np.array([np.cos(direction), np.sin(direction)])
        nuc, grooves = _nucleus(r, rng, shape, ncentre, R * r.nc, direction)
        nuc = np.minimum(nuc, cyto)  # the nucleus never spills out of the cell
    cyto_rgb = r.alt_cyto_rgb if r.alt_cyto_rgb is not None and rng.random() < 0.5 else r.cyto_rgb
    if r.cyto_edge:
        density = density * (1.0 + r.cyto_edge * sh.edge_weight(cyto, 0.12 * R))
    free = cyto * (1.0 - nuc)  # cytoplasm not under the nucleus
    if r.pale_zone:
        toward = centre - ncentre
        at = ncentre + toward / max(float(np.hypot(*toward)), 1e-3) * R * r.nc * 0.9
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        zone = np.exp(-((xx - at[0]) ** 2 + (yy - at[1]) ** 2) / (2 * (0.2 * R) ** 2))
        density = density * (1.0 - 0.6 * zone)
    if r.vacuoles[1] and rng.random() < r.vacuole_p:
        vac = np.zeros(shape, np.uint8)
        pts = sh.sample_in(rng, free, centre, R, int(rng.integers(r.vacuoles[0], r.vacuoles[1] + 1)))
        sh.dots(vac, pts, rng.uniform(2.0, 5.0, len(pts)))
        density = density * (1.0 - 0.8 * vac.astype(np.float32) / 255)
    out = np.zeros((3, *shape), np.float32)  # optical density, channel first
    sh.paint(out, free * density, sh.od(cyto_rgb))
    if r.nucleus != "none":
        chrom = _chromatin(r, rng, shape, R * r.nc) * (1.0 - grooves)
        sh.paint(out, nuc * chrom, sh.od(r.chromatin_rgb))
        _nucleoli(out, r, rng, shape, ncentre, R * r.nc, nuc)
    _granules(out, r, rng, shape, centre, R, cyto, free)
    _rods(out, r, rng, shape, centre, R, free)
    cover = np.clip(cyto + nuc, 0.0, 1.0)
    return CellPatch(code, cv2.merge(list(out)), cover, cover > 0.5)


def _villi(rng, shape, centre, rx, ry, angle, radii, theta) -> np.ndarray:
    """Short hair-like projections, mostly at one pole of the cell."""
    n = int(rng.integers(14, 28))
    pole = rng.uniform(0, 2 * np.pi)
    at = pole + rng.normal(0, 0.7, n)
    idx = (np.round((at % (2 * np.pi)) / (2 * np.pi) * len(theta)).astype(int)) % len(theta)
    base = sh.outline(centre, rx, ry, angle, radii[idx] * 0.97, theta[idx])
    length = rng.uniform(6.0, 14.0, n)
    direction = base - np.asarray(centre)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    tips = base + direction * length[:, None] + rng.normal(0, 1.2, (n, 2))
    layer = np.zeros(shape, np.uint8)
    sh.lines(layer, base, tips, 2)
    sh.lines(layer, base, (2 * base + tips) / 3, 3)
    return layer.astype(np.float32) / 255


def _nucleus(r: Recipe, rng, shape, c, rn: float, direction: float) -> tuple[np.ndarray, np.ndarray]:
    """The nucleus mask and a mask of pale grooves/clefts drawn into it."""
    theta = np.linspace(0, 2 * np.pi, 180, endpoint=False, dtype=np.float32)
    grooves = np.zeros(shape, np.uint8)
    facing = direction + np.pi  # an indentation faces the centre of the cell
    aspect = rng.uniform(0.84, 1.0)
    angle = rng.uniform(0, np.pi)
    kind = r.nucleus
    if kind in ("lobes", "spectacle", "butterfly"):
        if kind == "lobes":  # a chain of lobes along a C- or S-shaped arc
            k = int(rng.integers(r.lobes[0], r.lobes[1] + 1))
            span = rng.uniform(0.85, 1.1) * (k - 1)
            arc = rng.uniform(0.6, 0.72) * rn
            hub = np.asarray(c) + 0.5 * arc * np.array([np.cos(facing), np.sin(facing)])
            ts = facing + np.pi + np.linspace(-span / 2, span / 2, k) + rng.normal(0, 0.12, k)
            centres = hub + arc * np.stack([np.cos(ts), np.sin(ts)], axis=1)
            lobe_r = rn * rng.uniform(0.27, 0.33, k) * (1.0 if k < 4 else 0.88)
        else:
            gap = 0.5 if kind == "spectacle" else 0.36
            axis = np.array([np.cos(angle), np.sin(angle)])
            centres = np.asarray(c) + np.outer([-gap, gap], axis) * rn * rng.uniform(0.9, 1.1)
            lobe_r = rn * (rng.uniform(0.44, 0.52, 2) if kind == "butterfly" else rng.uniform(0.4, 0.46, 2))
        layer = np.zeros(shape, np.uint8)
        for cc, lr in zip(centres, lobe_r):
            poly = sh.outline(cc, lr, lr * rng.uniform(0.72, 0.95), rng.uniform(0, np.pi),
                              sh.wobble(rng, theta, 0.05), theta)
            cv2.fillPoly(layer, [sh.fixed(poly)], 255, cv2.LINE_AA, sh.SHIFT)
        sh.lines(layer, centres[:-1], centres[1:], 2 if kind != "butterfly" else 6)
        if kind == "butterfly":
            mid = centres.mean(axis=0)
            perp = np.array([-np.sin(angle), np.cos(angle)]) * rn * 0.45
            sh.lines(grooves, (mid - perp)[None], (mid + perp)[None], 1, 150)
        return layer.astype(np.float32) / 255, grooves.astype(np.float32) / 255
    amp = {"indented": 0.07, "horseshoe": 0.05, "cerebriform": 0.04}.get(kind, 0.03)
    radii = sh.wobble(rng, theta, amp, kmax=9 if kind == "cerebriform" else 5)
    rel = facing - angle  # the notch angle in the ellipse's own frame
    if kind == "kidney":
        radii *= sh.notch(theta, rel, rng.uniform(0.3, 0.45), 0.5)
    elif kind == "horseshoe":
        radii *= sh.notch(theta, rel, rng.uniform(0.5, 0.68), rng.uniform(0.55, 0.75))
    elif kind == "indented":
        radii *= sh.notch(theta, rel, rng.uniform(0.18, 0.32), 0.3)
    elif kind == "cleaved":
        for at in rel + np.array([0.0, rng.uniform(2.0, 4.2)])[: 1 + int(rng.random() < 0.3)]:
            radii *= sh.notch(theta, at, rng.uniform(0.55, 0.78), rng.uniform(0.07, 0.11))
    poly = sh.outline(c, rn, rn * aspect, angle, radii, theta)
    if kind == "cerebriform":
        n = int(rng.integers(7, 12))
        start = np.asarray(c) + rng.normal(0, 0.4 * rn, (n, 2))
        t = rng.uniform(0, 2 * np.pi, n)
        mid = start + 0.35 * rn * _unit(t)
        end = mid + 0.3 * rn * _unit(t + rng.normal(0, 1, n))
        sh.lines(grooves, start, mid, 2, 200)
        sh.lines(grooves, mid, end, 2, 200)
    return sh.fill(shape, [poly]), grooves.astype(np.float32) / 255 * 0.55


def _chromatin(r: Recipe, rng, shape, rn: float) -> np.ndarray:
    """Chromatin density inside the nucleus (1 = typical condensed chromatin)."""
    if r.chromatin == "ink":
        return 1.3 + 0.05 * sh.noise(rng, shape, 3.0)
    if r.chromatin == "clumped":  # coarse dark blocks between paler patches ("cracked mud")
        field = sh.noise(rng, shape, max(rn / 5.0, 4.0))
        blocks = 1.0 / (1.0 + np.exp(-5.0 * (field + 0.45)))
        return 0.68 + 0.48 * blocks + 0.06 * sh.noise(rng, shape, 2.0)
    if r.chromatin == "dense":
        return 1.0 + 0.12 * sh.noise(rng, shape, 3.0) + 0.08 * sh.noise(rng, shape, 8.0)
    if r.chromatin == "moderate":
        return 0.92 + 0.18 * sh.noise(rng, shape, 5.0) + 0.08 * sh.noise(rng, shape, 2.0)
    return 0.8 + 0.13 * sh.noise(rng, shape, 2.0) + 0.06 * sh.noise(rng, shape, 6.0)  # fine, lacy


def _nucleoli(out: np.ndarray, r: Recipe, rng, shape, c, rn: float, nuc: np.ndarray) -> None:
    """Add the nucleoli: chromatin cleared away and a pale blue tint."""
    n = int(rng.integers(r.nucleoli[0], r.nucleoli[1] + 1))
    if n == 0:
        return
    layer = np.zeros(shape, np.uint8)
    for p in sh.sample_in(rng, nuc, c, 0.55 * rn, n):
        rad = rn * rng.uniform(0.09, 0.15)
        sh.ellipse(layer, p, (rad, rad * rng.uniform(0.7, 1.0)), rng.uniform(0, 180))
    m = cv2.GaussianBlur(layer, (0, 0), 1.0).astype(np.float32) / 255 * nuc
    sh.paint(out, m, 0.8 * NUCLEOLUS_TINT - (1.0 - r.nucleolus_density) * sh.od(r.chromatin_rgb))


def _granules(out: np.ndarray, r: Recipe, rng, shape, c, R: float, cyto: np.ndarray,
              free: np.ndarray) -> None:
    """Add the class's granules."""
    if r.granules in ("dust", "azur") and r.nucleus != "none":  # fine dust over the cytoplasm
        speck = np.clip(sh.noise(rng, shape, 1.2) - 1.0, 0.0, 1.0)
        sh.paint(out, free * speck, 0.9 * DUST)
    if r.granules not in GRANULES:
        return
    colour, (rmin, rmax), over_nucleus, alpha = GRANULES[r.granules]
    n = int(rng.integers(r.granule_n[0], r.granule_n[1] + 1))
    region = cyto if over_nucleus else free
    if r.nucleus == "none":  # platelet granules cluster in the centre
        pts = sh.sample_in(rng, region, c, R, n, spread=0.3 * R)
    elif r.granules == "few":
        pick = sh.sample_in(rng, free, c, R, 1)
        at = pick[0] if len(pick) else c
        pts = sh.sample_in(rng, free, at, R, n, spread=0.22 * R)
    else:
        pts = sh.sample_in(rng, region, c, R * 1.05, n)
    layer = np.zeros(shape, np.uint8)
    sh.dots(layer, pts, rng.uniform(rmin, rmax, len(pts)))
    sh.paint(out, layer, colour * (alpha / 255))


def _rods(out: np.ndarray, r: Recipe, rng, shape, c, R: float, free: np.ndarray) -> None:
    """Add Auer rods: thin dense red-purple needles, in bundles for LAM3."""
    if not r.rods[1] or rng.random() >= r.rod_p:
        return
    n = int(rng.integers(r.rods[0], r.rods[1] + 1))
    at = sh.sample_in(rng, free, c, R * 0.85, 1)
    if not len(at):
        return
    phi = rng.uniform(0, np.pi) + rng.normal(0, 0.12, n)
    perp = np.array([-np.sin(phi[0]), np.cos(phi[0])])
    offsets = np.outer(np.arange(n) - (n - 1) / 2, perp) * rng.uniform(2.0, 3.2)  # side by side
    mids = at[0] + offsets + rng.normal(0, 1.0, (n, 2))
    half = (rng.uniform(0.12, 0.2, n) * R)[:, None] * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    layer = np.zeros(shape, np.uint8)
    sh.lines(layer, mids - half, mids + half, 1)
    sh.paint(out, layer * free, ROD / 255)


def _unit(angles: np.ndarray) -> np.ndarray:
    """Unit vectors (n, 2) pointing at ``angles``."""
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _smudge(code: str, r: Recipe, rng, size: int, centre, rx: float, ry: float) -> CellPatch:
    """A lysed cell: blurred purple smear of nuclear material with streaks (basket/smudge)."""
    shape = (size, size)
    theta = np.linspace(0, 2 * np.pi, 120, endpoint=False, dtype=np.float32)
    R = float(np.sqrt(rx * ry))
    body = sh.fill(shape, [sh.outline(centre, rx * 0.9, ry * 0.9, rng.uniform(0, np.pi),
                                      sh.wobble(rng, theta, 0.16, kmax=7), theta)])
    streaks = np.zeros(shape, np.uint8)
    n = int(rng.integers(6, 18))
    t = rng.uniform(0, 2 * np.pi) + rng.normal(0, 1.2, n)
    starts = np.asarray(centre) + rng.normal(0, 0.25 * R, (n, 2))
    bend = t + rng.normal(0, 0.5, n)  # each strand bends once, like a thread
    mids = starts + (rng.uniform(0.2, 0.45, n) * R)[:, None] * _unit(t)
    ends = mids + (rng.uniform(0.15, 0.45, n) * R)[:, None] * _unit(bend)
    sh.lines(streaks, starts, mids, 1, 110)
    sh.lines(streaks, mids, ends, 1, 110)
    streaks = cv2.GaussianBlur(streaks, (0, 0), 1.0)
    body = cv2.GaussianBlur(body, (0, 0), 0.05 * R + 1.0)
    smear = body * (0.62 + 0.16 * sh.noise(rng, shape, R / 3)) + streaks.astype(np.float32) / 255 * 0.7
    smear = np.clip(smear, 0.0, 1.2)
    if rng.random() < 0.5:  # a denser remnant of the nucleus
        blob = np.zeros(shape, np.uint8)
        sh.ellipse(blob, centre + rng.normal(0, 0.2 * R, 2), (0.45 * R, 0.35 * R), rng.uniform(0, 180))
        smear += cv2.GaussianBlur(blob, (0, 0), 3.0).astype(np.float32) / 255 * 0.45 * body
    smear = np.maximum(smear, 0.0)
    cover = np.clip(body * 1.3, 0.0, 1.0) * 0.95
    out = sh.tint(smear, sh.od(r.chromatin_rgb))
    return CellPatch(code, out.astype(np.float32), cover, (body > 0.35) | (streaks > 40))
