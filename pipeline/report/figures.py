"""The report's figures: matplotlib (Agg), each returned as a ``data:`` URI to embed in the page.

Charts are PNG (sharp lines, small); photos (crops, smear images with boxes) are JPEG, a fifth of
their PNG size. Text is drawn at ``TEXT`` points or more at ``DPI``: at least 11 px at 100 %.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import classes

TRUE_COLOUR, PRED_COLOUR = "#1a9850", "#d6046f"  # green truth, magenta prediction
DPI = 100  # pixels per inch of every figure
TEXT = 8  # smallest font size in points (11 px at DPI)
JPEG_QUALITY = 82  # photos: no visible artefact on smear crops, ~5x smaller than PNG


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def encode(fig, photo: bool = False) -> str:
    """The figure as a ``data:`` URI (and closed): JPEG for photos, PNG for charts."""
    buf = io.BytesIO()
    if photo:
        fig.savefig(buf, format="jpeg", dpi=DPI, bbox_inches="tight", pil_kwargs={"quality": JPEG_QUALITY})
    else:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    mime = "image/jpeg" if photo else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def png(fig) -> str:
    """A chart as a PNG ``data:`` URI."""
    return encode(fig)


def class_counts(boxes: pd.DataFrame) -> str:
    """Boxes per class (the 23 codes in kit order), log scale: the imbalance at a glance."""
    plt = _plt()
    counts = boxes["class"].value_counts().reindex(classes.CLASSES, fill_value=0)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.bar(range(len(counts)), counts.to_numpy(), color="#4575b4")
    ax.set_xticks(range(len(counts)), counts.index, rotation=60, fontsize=8)
    if counts.max() > 20 * max(counts[counts > 0].min(), 1):  # the real data: three orders of magnitude
        from matplotlib.ticker import LogLocator, ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10))
        ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_ylabel("boxes")
    for i, v in enumerate(counts.to_numpy()):
        ax.text(i, max(v, 1), str(v), ha="center", va="bottom", fontsize=TEXT)
    return png(fig)


def fold_balance(images: pd.DataFrame, boxes: pd.DataFrame, k: int) -> str:
    """Share of each class's boxes per fold (ideal 1/k), counts written in the cells."""
    plt = _plt()
    fold = boxes["NAME"].map(images.set_index("NAME")["fold"])
    counts = pd.crosstab(boxes["class"], fold).reindex(index=classes.CLASSES, columns=range(k), fill_value=0)
    share = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * k, 6.5))
    im = ax.imshow(share.to_numpy(dtype=float), cmap="RdBu_r", vmin=0, vmax=min(1.0, 2.0 / k), aspect="auto")
    for (i, j), v in np.ndenumerate(counts.to_numpy()):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=TEXT)
    ax.set_xticks(range(k), [f"fold {f}" for f in range(k)], fontsize=8)
    ax.set_yticks(range(len(classes.CLASSES)), classes.CLASSES, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.05, label=f"share of the class (ideal {1 / k:.2f})")
    return png(fig)


def _loss(frame: pd.DataFrame) -> pd.Series | None:
    cols = [c for c in frame.columns if c.startswith("train") and "loss" in c] or \
        [c for c in frame.columns if c in ("loss", "train_loss")]
    return frame[cols].sum(axis=1, min_count=1) if cols else None


def curves(model: str, frames: dict[int, pd.DataFrame]) -> str:
    """Training loss and the validation score per epoch, one line per fold."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3))
    found = [c for c in ("challenge", "val_f1", "seg_miou") if any(c in f for f in frames.values())]
    metric = found[0] if found else None
    for fold, frame in sorted(frames.items()):
        loss = _loss(frame)
        if loss is not None:
            left.plot(frame["epoch"], loss, marker=".", label=f"fold {fold}")
        if metric and metric in frame:
            right.plot(frame["epoch"], frame[metric], marker=".", label=f"fold {fold}")
    from matplotlib.ticker import MaxNLocator

    left.set_title(f"{model}: training loss", fontsize=10)
    right.set_title(f"{model}: validation {metric or '(none)'}", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=TEXT)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def f1_bars(per_class: pd.DataFrame) -> str:
    """Per-class F1 of a setting, worst first, with each class's number of true boxes."""
    plt = _plt()
    table = per_class.sort_values("f1")
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(table) + 1))
    ax.barh(range(len(table)), table["f1"], color="#4575b4")
    ax.set_yticks(range(len(table)), [f"{c} (n={int(s)})" for c, s in zip(table["label"], table["support"])],
                  fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.grid(axis="x", alpha=0.3)
    return png(fig)


def confusion(labels: list[str], matrix: np.ndarray) -> str:
    """Row-normalised confusion matrix (true rows, predicted columns) with the counts written in."""
    plt = _plt()
    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(0.36 * n + 2, 0.36 * n + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(m):
        if v:
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=TEXT,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=TEXT)
    ax.set_yticks(range(n), labels, fontsize=TEXT)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return png(fig)


def crop(image: np.ndarray, box: np.ndarray, margin: float = 0.25) -> np.ndarray:
    """The box with a margin (a fraction of its size) around it, clipped to the image."""
    x1, y1, x2, y2 = np.asarray(box, dtype=float)
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    h, w = image.shape[:2]
    top, bottom = max(int(y1 - my), 0), min(int(np.ceil(y2 + my)), h)
    return image[top:bottom, max(int(x1 - mx), 0):min(int(np.ceil(x2 + mx)), w)]


def crop_rows(rows: list[tuple[str, list[np.ndarray]]], per_row: int = 6) -> str:
    """One row of example crops per confused pair (title at the left)."""
    plt = _plt()
    fig, axes = plt.subplots(len(rows), per_row, figsize=(1.5 * per_row, 1.6 * len(rows)), squeeze=False)
    for r, (title, crops) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(crops) and crops[c].size:
                ax.imshow(crops[c])
        axes[r][0].set_title(title, fontsize=TEXT + 1, loc="left")
    fig.tight_layout()
    return encode(fig, photo=True)


def boxes_grid(items: list[tuple[str, np.ndarray, pd.DataFrame, pd.DataFrame]], per_row: int = 3) -> str:
    """Images with their true boxes (green) and the scored predictions (magenta), class codes written."""
    plt = _plt()
    rows = int(np.ceil(len(items) / per_row))
    fig, axes = plt.subplots(rows, per_row, figsize=(4.2 * per_row, 4.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, image, truth, pred) in zip(axes.ravel(), items):
        ax.imshow(image)
        for table, colour, va in ((truth, TRUE_COLOUR, "bottom"), (pred, PRED_COLOUR, "top")):
            for b in table.itertuples():
                ax.add_patch(plt.Rectangle((b.x1, b.y1), b.x2 - b.x1, b.y2 - b.y1, fill=False, lw=1.6,
                                           edgecolor=colour))
                y = b.y1 if va == "bottom" else b.y2
                ax.text(b.x1, y, str(b.label), color="white", fontsize=TEXT + 1, va=va,
                        bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "lw": 0})
        ax.set_title(title, fontsize=TEXT + 1)
    fig.tight_layout()
    return encode(fig, photo=True)


def image_of(images_dir: Path, name: str) -> np.ndarray:
    from cytocore.images import load_rgb

    return load_rgb(Path(images_dir) / name)
