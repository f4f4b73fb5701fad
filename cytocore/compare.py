"""Is a gain more than noise? A paired bootstrap over images of the difference of two challenge scores.

``paired_bootstrap(a, b)`` takes two ``cytocore.metric.ScoreResult`` of the SAME
truth (same GT boxes in the same order: two members, with and without TTA or
the classifier, a member and the ensemble) and resamples the truth's images
with replacement. Each resample scores both systems on the same images with
the metric's own semantics (mean rescaled GIoU over the drawn GT boxes,
macro-F1 over the union of the labels drawn), so the interval is that of
``score(a) - score(b)`` as the leaderboard would compute it on another draw
of images. The macro-F1 term does not split over images, which is why the
whole metric is recomputed per resample (vectorised: one weighted confusion
count per resample).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from cytocore.metric import F1_WEIGHT, GIOU_WEIGHT


@dataclasses.dataclass(frozen=True)
class Difference:
    """``a - b`` of two scores on the same truth, with a bootstrap interval over images."""

    diff: float  # score(a) - score(b) on the full truth
    lo: float  # lower end of the interval
    hi: float  # upper end
    p_better: float  # share of resamples where a scored above b
    level: float  # confidence level of [lo, hi]
    n: int  # resamples

    def __str__(self) -> str:
        return f"{self.diff:+.4f} [{self.lo:+.4f}, {self.hi:+.4f}]"


def _codes(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """True labels and both systems' predicted labels as integer codes of one label set."""
    values = np.concatenate([a["class"].to_numpy(object), a["pred_class"].to_numpy(object),
                             b["pred_class"].to_numpy(object)]).astype(str)
    codes, labels = pd.factorize(values)
    n = len(a)
    return codes[:n], codes[n:2 * n], codes[2 * n:], len(labels)


def _scores(true: np.ndarray, pred: np.ndarray, rescaled: np.ndarray, weights: np.ndarray,
            n_labels: int) -> np.ndarray:
    """The metric under box weights ``(R, N)`` (each row one resample): ``(R,)`` totals."""
    r = len(weights)
    offset = (np.arange(r) * n_labels)[:, None]
    shape = r * n_labels
    hit = (true == pred).astype(np.float64)
    tp = np.bincount((offset + true).ravel(), (weights * hit).ravel(), shape).reshape(r, n_labels)
    support = np.bincount((offset + true).ravel(), weights.ravel(), shape).reshape(r, n_labels)
    predicted = np.bincount((offset + pred).ravel(), weights.ravel(), shape).reshape(r, n_labels)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=present)
    f1_term = f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    giou_term = (weights * rescaled).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-12)
    return GIOU_WEIGHT * giou_term + F1_WEIGHT * f1_term


def paired_bootstrap(a, b, n: int = 1000, seed: int = 0, level: float = 0.95,
                     chunk: int = 100) -> Difference:
    """Bootstrap interval of ``a.total - b.total`` over the truth's images (see the module doc)."""
    pa, pb = a.per_box, b.per_box
    key = ["trustii_id", "NAME", "class"]
    if len(pa) != len(pb) or not (pa[key].to_numpy() == pb[key].to_numpy()).all():
        raise ValueError("paired bootstrap: the two scores are not on the same truth boxes")
    true, pred_a, pred_b, n_labels = _codes(pa, pb)
    image, _ = pd.factorize(pa["NAME"])
    n_images = int(image.max()) + 1
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, n, chunk):
        r = min(chunk, n - start)
        drawn = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=r).astype(np.float64)
        w = drawn[:, image]
        diffs.append(_scores(true, pred_a, pa["rescaled_giou"].to_numpy(), w, n_labels)
                     - _scores(true, pred_b, pb["rescaled_giou"].to_numpy(), w, n_labels))
    d = np.concatenate(diffs)
    tail = (1 - level) / 2
    return Difference(float(a.total - b.total), float(np.quantile(d, tail)), float(np.quantile(d, 1 - tail)),
                      float((d > 0).mean()), level, n)
