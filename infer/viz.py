"""A PNG grid of sample images with their predicted boxes, for a quick look at a submission.

``draw_grid(preds, images_dir, out, n=16)`` draws the ``n`` first images (in
name order; a fixed sample) with each box in a class colour, its class code and
score. Only the top ``per_image`` boxes by score are drawn (what a submission
keeps when ``n_cells`` gives the rows per image).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import classes, io
from cytocore.images import load_rgb
from cytocore.tables import COORDS

COLUMNS = 4  # images per row of the grid
CELL_INCHES = 3.0  # size of one image in the figure
DEFAULT_TOP = 3  # boxes drawn per image without n_cells
SCORE_NOTE = ("class code and score: the fused ensemble score ranks the boxes of an image; the submission "
              "keeps each image's top N boxes (N from test.csv), so a correct cell can score 0.05: "
              "scores are ranks, not probabilities")
CONFIDENCE_NOTE = ("class code and confidence: the fused score calibrated on the run's out-of-fold boxes "
                   "(of boxes drawn at 0.80, about 80 % were a right cell of the right class); the "
                   "submission keeps each image's top N boxes (N from test.csv) whatever their confidence")


def draw_grid(preds: pd.DataFrame, images_dir: Path, out: Path, n: int = 16,
              n_cells: Mapping[str, int] | None = None, seed: int = 0, note: str = SCORE_NOTE) -> Path | None:
    """Write the grid PNG to ``out`` (atomically); None when there is nothing to draw."""
    names = sorted(pd.unique(preds["NAME"])) if len(preds) else []
    if n_cells is not None:
        names = sorted(set(names) | set(n_cells))
    if not names or n <= 0:
        return None
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(names, min(n, len(names)), replace=False).tolist())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cmap = plt.get_cmap("tab20", classes.NUM_CLASSES)
    rows = math.ceil(len(sample) / COLUMNS)
    cols = min(COLUMNS, len(sample))
    fig, axes = plt.subplots(rows, cols, figsize=(CELL_INCHES * cols, CELL_INCHES * rows), squeeze=False)
    by_name = preds.groupby("NAME").indices if len(preds) else {}
    for ax, name in zip(axes.flat, sample):
        ax.imshow(load_rgb(Path(images_dir) / name))
        ax.set_title(name, fontsize=8)
        ax.axis("off")
        rows_idx = by_name.get(name, np.zeros(0, dtype=int))
        top = (n_cells or {}).get(name, DEFAULT_TOP)
        part = preds.iloc[rows_idx].sort_values("score", ascending=False).head(top)
        coords = part[COORDS].to_numpy()
        for (x1, y1, x2, y2), code, score in zip(coords, part["class"], part["score"]):
            colour = cmap(classes.CLASS_TO_ID.get(code, 0))
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5, ec=colour))
            ax.text(x1, y1, f"{code} {score:.2f}", fontsize=8, color="white", va="bottom",
                    bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "lw": 0})
    for ax in list(axes.flat)[len(sample):]:
        ax.axis("off")
    fig.suptitle(note, fontsize=8, wrap=True)
    fig.tight_layout()
    with io.atomic_write(Path(out)) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(out)
