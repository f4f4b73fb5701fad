"""Cleaning of the train boxes: pure functions on DataFrames, every step counted.

``clean(boxes, sizes, ...)`` takes the train table (``NAME,x1,y1,x2,y2,class``,
as ``cytocore.tables.read_train`` returns it) and the image sizes
(``NAME,width,height``) and returns the cleaned boxes
(``NAME,x1,y1,x2,y2,class,width,height``, original pixels, input order) with a
``Report`` of what each step did:

1. ``duplicate rows``  -- exact repeats of a row are dropped (the first is kept);
2. ``clip``            -- boxes are clipped to ``[0, width] x [0, height]``;
3. ``degenerate``      -- boxes with no area left after clipping are dropped;
4. ``too small``       -- boxes with a side under ``min_side`` pixels are dropped;
5. ``same-class duplicates`` -- within an image, a box overlapping an earlier box of
   the same class with IoU above ``same_class_iou`` is dropped (the first is kept);
6. ``cross-class overlaps``  -- pairs of boxes of different classes with IoU above
   ``cross_class_iou`` are handled by ``cross_class_policy`` (see ``POLICIES``).

Overlaps are computed only within images that hold more than one box (about
3,100 of the 48,417 real train images), batched by box count, with
``cytocore.boxes.iou_matrix``.
``balance(boxes, per_class, seed)`` is the optional downsampling by whole images.
No function here reads or writes a file.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from cytocore import boxes as bx
from cytocore import classes
from cytocore.tables import COORDS

log = logging.getLogger(__name__)

POLICIES = {
    "keep_both": "keep both boxes (count the pair only)",
    "drop_both": "drop both boxes of the pair",
    "keep_larger": "drop the smaller box of the pair (the later one on equal areas)",
    "drop_image": "drop the whole image",
}
BOX_COLUMNS = ("NAME", *COORDS, "class", "width", "height")


class Report:
    """The cleaning steps, each with the boxes/images it removed or changed and what is left."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def add(self, step: str, before: pd.DataFrame, after: pd.DataFrame, changed: int = 0, **extra) -> None:
        self.steps.append({
            "step": step,
            "boxes_removed": int(len(before) - len(after)),
            "images_removed": int(before["NAME"].nunique() - after["NAME"].nunique()),
            "boxes_changed": int(changed),
            "boxes": int(len(after)),
            "images": int(after["NAME"].nunique()),
            **{k: (int(v) if isinstance(v, (int, np.integer)) else v) for k, v in extra.items()},
        })

    def to_dict(self) -> dict:
        return {"steps": self.steps}

    def table(self) -> str:
        """A short fixed-width table of the steps, for the screen."""
        head = f"{'step':<24}{'boxes -':>9}{'images -':>10}{'changed':>9}{'boxes':>8}{'images':>8}"
        lines = [head, "-" * len(head)]
        for s in self.steps:
            lines.append(
                f"{s['step']:<24}{s['boxes_removed']:>9}{s['images_removed']:>10}"
                f"{s['boxes_changed']:>9}{s['boxes']:>8}{s['images']:>8}"
            )
        return "\n".join(lines)


def attach_sizes(boxes: pd.DataFrame, sizes: pd.DataFrame) -> pd.DataFrame:
    """``boxes`` with the ``width``/``height`` of their image; ValueError naming images without one."""
    size = sizes.drop_duplicates("NAME").set_index("NAME")[["width", "height"]]
    missing = sorted(set(boxes["NAME"]) - set(size.index))
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ValueError(f"{len(missing)} image(s) have boxes but no size: {shown}")
    bad = size[(size["width"] <= 0) | (size["height"] <= 0)]
    if len(bad):
        raise ValueError(f"image sizes must be positive; first bad: {bad.index[0]} {bad.iloc[0].tolist()}")
    out = boxes[["NAME", *COORDS, "class"]].reset_index(drop=True)
    wh = size.reindex(out["NAME"]).to_numpy(dtype=np.float64)
    if not np.array_equal(wh, np.round(wh)):
        raise ValueError("image sizes must be whole numbers of pixels")
    out["width"] = wh[:, 0].astype(np.int64)
    out["height"] = wh[:, 1].astype(np.int64)
    return out


def _overlaps(
    table: pd.DataFrame, same_class_iou: float, cross_class_iou: float, policy: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows to drop for same-class and cross-class overlaps, and the cross-class pair count.

    Only images with more than one box are looked at. Images with the same box count
    ``n`` are stacked and their ``(n, n)`` IoU matrices computed in one batched call;
    within an image boxes are taken in table order, so the earlier of two same-class
    duplicates is kept.
    """
    n_rows = len(table)
    drop_same = np.zeros(n_rows, dtype=bool)
    drop_cross = np.zeros(n_rows, dtype=bool)
    pairs = 0
    codes, _ = pd.factorize(table["NAME"])
    per_image = np.bincount(codes)
    count = per_image[codes]
    xyxy = table[list(COORDS)].to_numpy(dtype=np.float64)
    cls = pd.Categorical(table["class"], categories=classes.CLASSES).codes
    for n in np.unique(count[count > 1]):
        sel = np.flatnonzero(count == n)
        rows = sel[np.argsort(codes[sel], kind="stable")].reshape(-1, n)  # (images, n), table order
        b = xyxy[rows]
        iou = bx.iou_matrix(b, b)  # (images, n, n)
        upper = np.triu(np.ones((n, n), dtype=bool), k=1)
        same = cls[rows][:, :, None] == cls[rows][:, None, :]
        for g, i, j in np.argwhere(upper & same & (iou > same_class_iou)):
            if not drop_same[rows[g, i]]:
                drop_same[rows[g, j]] = True
        kept = ~drop_same[rows]
        hits = np.argwhere(upper & ~same & (iou > cross_class_iou) & kept[:, :, None] & kept[:, None, :])
        pairs += len(hits)
        if not len(hits) or policy == "keep_both":
            continue
        g, i, j = hits.T
        if policy == "drop_image":
            drop_cross[rows[g].ravel()] = True
        elif policy == "drop_both":
            drop_cross[rows[g, i]] = True
            drop_cross[rows[g, j]] = True
        else:  # keep_larger: i < j, so on equal areas the later box goes
            areas = bx.area(b)
            smaller_i = areas[g, i] < areas[g, j]
            drop_cross[np.where(smaller_i, rows[g, i], rows[g, j])] = True
    return drop_same, drop_cross, pairs


def clean(
    boxes: pd.DataFrame,
    sizes: pd.DataFrame,
    *,
    min_side: float = 2.0,
    same_class_iou: float = 0.7,
    cross_class_iou: float = 0.7,
    cross_class_policy: str = "keep_both",
) -> tuple[pd.DataFrame, Report]:
    """Clean the train boxes (see the module docstring); returns ``(boxes, report)``.

    ``boxes``: ``NAME,x1,y1,x2,y2,class``; ``sizes``: ``NAME,width,height`` of every
    image named in ``boxes``. The result keeps the input order and has the columns
    ``NAME,x1,y1,x2,y2,class,width,height`` (original pixels).
    """
    if cross_class_policy not in POLICIES:
        raise ValueError(f"unknown cross_class_policy {cross_class_policy!r}; valid: {', '.join(POLICIES)}")
    report = Report()
    start = boxes.reset_index(drop=True)
    table = start[~start.duplicated(subset=["NAME", *COORDS, "class"], keep="first")]
    report.add("duplicate rows", start, table)
    table = attach_sizes(table, sizes)

    before = table
    xyxy = table[list(COORDS)].to_numpy(dtype=np.float64)
    width, height = (table[c].to_numpy(dtype=np.float64) for c in ("width", "height"))
    clipped = bx.clip(xyxy, width, height)
    changed = (clipped != xyxy).any(axis=1)
    table = table.copy()
    table[list(COORDS)] = clipped
    report.add("clip", before, table, changed=changed.sum(),
               images_changed=table.loc[changed, "NAME"].nunique())

    before = table
    valid = bx.is_valid(clipped)
    table = table[valid]
    report.add("degenerate", before, table)

    before = table
    sides = np.minimum(table["x2"] - table["x1"], table["y2"] - table["y1"])
    table = table[sides.to_numpy() >= min_side]
    report.add("too small", before, table, min_side=min_side)

    table = table.reset_index(drop=True)
    drop_same, drop_cross, pairs = _overlaps(table, same_class_iou, cross_class_iou, cross_class_policy)
    before = table
    table = table[~drop_same]
    report.add("same-class duplicates", before, table, iou_above=same_class_iou)
    before = table
    table = table[~drop_cross[~drop_same]]
    report.add("cross-class overlaps", before, table, pairs=pairs, iou_above=cross_class_iou,
               policy=cross_class_policy)
    return table.reset_index(drop=True)[list(BOX_COLUMNS)], report


def balance(boxes: pd.DataFrame, per_class: int, seed: int) -> tuple[pd.DataFrame, dict]:
    """Downsample by whole images so that each class keeps about ``per_class`` boxes.

    Images are visited in a seeded random order; an image is kept while at least one
    of its classes still has fewer than ``per_class`` kept boxes. Rare classes thus
    keep all their boxes; classes sharing images with them may exceed the target.
    Returns the kept rows (input order) and per-class counts before and after.
    """
    if per_class <= 0:
        raise ValueError(f"balance must be a positive number of boxes per class, got {per_class}")
    codes, names = pd.factorize(boxes["NAME"])
    cls = pd.Categorical(boxes["class"], categories=classes.CLASSES).codes
    counts = np.zeros((len(names), classes.NUM_CLASSES), dtype=np.int64)
    np.add.at(counts, (codes, cls), 1)
    order = np.random.default_rng(seed).permutation(len(names))
    kept_counts = np.zeros(classes.NUM_CLASSES, dtype=np.int64)
    keep = np.zeros(len(names), dtype=bool)
    for i in order:
        row = counts[i]
        if (kept_counts[row > 0] < per_class).any():
            keep[i] = True
            kept_counts += row
    out = boxes[keep[codes]].reset_index(drop=True)
    before = counts.sum(axis=0)
    per = {c: [int(before[i]), int(kept_counts[i])] for i, c in enumerate(classes.CLASSES)}
    return out, {"per_class": per_class, "seed": seed, "class_boxes_before_after": per}
