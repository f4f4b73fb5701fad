"""Printing and plotting of a ``ScoreResult``: the summary table and the confusion-matrix PNG.

Used by ``python -m submit.score`` and ``python -m submit.oof``; matplotlib is
imported only when a plot is asked for (Agg backend, nothing shown).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cytokit import io


def format_result(result, per_class: bool = True) -> str:
    """The total (6 decimals), the two terms and the per-class table sorted by F1 (worst last)."""
    from submit.score import F1_WEIGHT, GIOU_WEIGHT

    lines = [
        f"score              {result.total:.6f}",
        f"  GIoU term        {result.giou_term:.6f}  (x{GIOU_WEIGHT} = {GIOU_WEIGHT * result.giou_term:.6f})",
        f"  macro-F1 term    {result.f1_term:.6f}  (x{F1_WEIGHT} = {F1_WEIGHT * result.f1_term:.6f}, "
        f"{len(result.labels)} labels)",
        f"  balanced acc.    {result.balanced_accuracy:.6f}",
        f"  GT boxes         {result.n_gt}  ({result.n_unmatched} in images without a usable prediction)",
    ]
    if per_class:
        table = result.per_class.sort_values(["f1", "support"], ascending=[False, False], kind="stable")
        lines.append("")
        header = ("class", "precision", "recall", "f1", "support", "predicted")
        lines.append(f"{header[0]:<10} " + " ".join(f"{h:>9}" for h in header[1:]))
        for row in table.itertuples(index=False):
            lines.append(f"{row.label:<10} {row.precision:9.4f} {row.recall:9.4f} {row.f1:9.4f} "
                         f"{row.support:9d} {row.predicted:9d}")
    return "\n".join(lines)


def format_table(scores: pd.DataFrame, float_cols: list[str] | None = None) -> str:
    """A plain-text table of a small DataFrame (floats with 6 decimals)."""
    float_cols = float_cols or [c for c in scores.columns if pd.api.types.is_float_dtype(scores[c])]
    shown = scores.copy()
    for col in float_cols:
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.6f}")
    return shown.to_string(index=False)


def save_confusion(result, path: Path, normalize: bool = True) -> Path:
    """Save the confusion matrix (rows: true label, columns: predicted) as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(result.confusion, dtype=np.float64)
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(result.labels)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * n + 2), max(5, 0.45 * n + 1.5)))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(n), result.labels, rotation=90, fontsize=8)
    ax.set_yticks(range(n), result.labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"score {result.total:.4f}  (macro-F1 {result.f1_term:.4f})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    with io.atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
