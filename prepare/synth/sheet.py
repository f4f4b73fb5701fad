"""The contact sheet of a synthetic data set: several crops of every class, one row per class.

Crops come from the data set's own boxes (train and test truth); a class with
too few boxes (tiny data sets) is topped up with cells drawn alone on a plain
background (no red cells), so that the sheet always shows all 23 classes.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cytocore.classes import CLASSES
from prepare.synth.cells import draw_cell
from prepare.synth.smear import finish

LABEL_W = 96  # px of the class-code column


def _crop(rgb: np.ndarray, box, tile: int) -> np.ndarray:
    """A square crop centred on ``box`` (padded with white outside the image), resized to ``tile``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = int(max(x2 - x1, y2 - y1) * 1.15) + 2
    cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
    h, w = rgb.shape[:2]
    out = np.full((side, side, 3), 255, np.uint8)
    x0, y0 = cx - side // 2, cy - side // 2
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if xa < xb and ya < yb:
        out[ya - y0:yb - y0, xa - x0:xb - x0] = rgb[ya:yb, xa:xb]
    return cv2.resize(out, (tile, tile), interpolation=cv2.INTER_AREA)


def contact_sheet(images_dir: Path, boxes: pd.DataFrame, seed: int, per_class: int = 6,
                  tile: int = 96) -> np.ndarray:
    """RGB grid (23 rows x ``per_class`` crops) of the boxes in ``boxes`` (NAME,x1,y1,x2,y2,class)."""
    rows = []
    cache: dict[str, np.ndarray] = {}
    for cid, code in enumerate(CLASSES):
        tiles = []
        for row in boxes[boxes["class"] == code].head(per_class).itertuples(index=False):
            if row.NAME not in cache:
                cache[row.NAME] = cv2.imread(str(Path(images_dir) / row.NAME))[..., ::-1]
            tiles.append(_crop(cache[row.NAME], (row.x1, row.y1, row.x2, row.y2), tile))
        extra = 0
        while len(tiles) < per_class:  # top up with cells drawn alone on a plain background
            rng = np.random.default_rng([seed, 3, cid, extra])
            cell = draw_cell(code, rng)
            tiles.append(_crop(finish(rng, cell.od.copy()), cell.extent, tile))
            extra += 1
        label = np.full((tile, LABEL_W, 3), 255, np.uint8)
        cv2.putText(label, code, (6, tile // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                    cv2.LINE_AA)
        rows.append(np.hstack([label, *tiles]))
    return np.vstack(rows)


def write_contact_sheet(path: Path, images_dir: Path, boxes: pd.DataFrame, seed: int) -> Path:
    """Write the contact sheet PNG to ``path``."""
    sheet = contact_sheet(images_dir, boxes, seed)
    ok, data = cv2.imencode(".png", sheet[..., ::-1])
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    Path(path).write_bytes(data.tobytes())
    return Path(path)
