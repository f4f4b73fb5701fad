"""The challenge metric, vectorised and pure: ``score(truth, submission)``, and its printed breakdown.

    score = 0.2 x mean over GT boxes of (GIoU + 1) / 2  +  0.8 x macro-F1

with the organisers' semantics (docs/CHALLENGE.md section 4): per image (NAME) of the truth,
the submission rows with that NAME and one of the image's trustii_ids; rows with
a repeated trustii_id dropped (first kept), then rows repeating an exact
(x1, y1, x2, y2, class); each GT box takes the prediction of highest GIoU (first
on ties, a NaN GIoU wins like ``np.argmax``), that GIoU and that class; an image
with no usable row gives its boxes GIoU -1 and the label ``"None"``; NaN GIoU
rescales to 0; macro-F1 over the union of true and predicted labels as strings
(a NaN class is the label ``"nan"``, as pandas 2 wrote it on the platform).

No per-image loop: (GT, prediction) pairs of the same image are enumerated with
``np.repeat`` and reduced per GT box with ``np.maximum.reduceat``.

``format_result`` prints the total, both terms and per-class F1 (what
``make score`` shows); ``save_confusion`` draws the confusion matrix.
The command line is ``python -m submit.score``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import boxes, io
from cytocore.tables import COORDS
from cytocore.tables import SUBMISSION_COLUMNS as COLUMNS

GIOU_WEIGHT = 0.2
F1_WEIGHT = 0.8
MISSING_LABEL = "None"  # predicted label of a GT box whose image has no usable prediction
NAN_LABEL = "nan"  # a missing (NaN) predicted class


@dataclasses.dataclass
class ScoreResult:
    """The metric and its breakdown. ``giou_term`` and ``f1_term`` are unweighted."""

    total: float
    giou_term: float  # mean rescaled GIoU (GIoU + 1) / 2 over GT boxes
    f1_term: float  # macro-F1 over the union of labels
    balanced_accuracy: float  # mean recall over the labels present in the truth
    n_gt: int  # GT boxes scored
    n_unmatched: int  # GT boxes of images without any usable prediction
    labels: list[str]  # union of true and predicted labels, sorted (confusion order)
    confusion: np.ndarray  # (L, L) counts: rows true label, columns predicted label
    per_class: pd.DataFrame  # label, precision, recall, f1, support, predicted
    per_box: pd.DataFrame  # per GT box: trustii_id, NAME, class, pred_class, giou, matched, rescaled_giou

    def to_dict(self) -> dict:
        """JSON-ready: the numbers, per-class rows and the confusion matrix (no per-box rows)."""
        return {
            "total": self.total,
            "giou_term": self.giou_term,
            "f1_term": self.f1_term,
            "balanced_accuracy": self.balanced_accuracy,
            "n_gt": self.n_gt,
            "n_unmatched": self.n_unmatched,
            "per_class": self.per_class.to_dict(orient="records"),
            "labels": list(self.labels),
            "confusion": self.confusion.tolist(),
        }


def _require(df: pd.DataFrame, what: str) -> None:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)} (need {','.join(COLUMNS)})")


def _truth_ids(truth: pd.DataFrame) -> np.ndarray:
    ids = pd.to_numeric(truth["trustii_id"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(ids) | (ids != np.round(ids))
    if bad.any():
        raise ValueError(f"truth: trustii_id must be integers ({int(bad.sum())} bad, "
                         f"first at row {np.argmax(bad)})")
    if truth["class"].isna().any():
        raise ValueError("truth: class must not be missing")
    return ids.astype(np.int64)


def _labels(cls: pd.Series) -> np.ndarray:
    """Predicted classes as the platform's strings: NaN -> 'nan', anything else str()."""
    out = cls.to_numpy(dtype=object).copy()
    out[pd.isna(out)] = NAN_LABEL
    if pd.api.types.infer_dtype(out, skipna=False) != "string":
        out = np.array([v if isinstance(v, str) else str(v) for v in out], dtype=object)
    return out


def _image_codes(truth: pd.DataFrame, submission: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
    """Image index of each truth row and each submission row (-1: not a truth image), and the image count.

    One factorisation of both NAME columns: truth names come first, so they get
    the codes 0..n-1 in order of first appearance.
    """
    t = truth["NAME"].to_numpy(dtype=object)
    codes, _ = pd.factorize(np.concatenate([t, submission["NAME"].to_numpy(dtype=object)]))
    if (codes[:len(t)] < 0).any():
        raise ValueError("truth: NAME must not be missing")
    n_img = int(codes[:len(t)].max()) + 1 if len(t) else 0
    sub = codes[len(t):]
    return codes[:len(t)], np.where(sub < n_img, sub, -1), n_img


def usable_rows(truth: pd.DataFrame, submission: pd.DataFrame, codes=None) -> np.ndarray:
    """Positions of the submission rows the metric uses, in submission order.

    A row is usable when its NAME is a truth image and its trustii_id one of that
    image's; then repeated (NAME, trustii_id) and repeated (NAME, box, class) rows
    are dropped, the first kept. ``codes``: ``_image_codes``' result, when known.
    """
    names, sub_img, n_img = codes if codes is not None else _image_codes(truth, submission)
    ids = _truth_ids(truth)
    lo, span = int(ids.min()) if len(ids) else 0, int(np.ptp(ids)) + 1 if len(ids) else 1
    if span * max(n_img, 1) >= 2**62:
        raise ValueError("truth: trustii_id range too wide to index")
    truth_keys = names.astype(np.int64) * span + (ids - lo)
    sub_id = pd.to_numeric(submission["trustii_id"], errors="coerce")
    sub_id = sub_id.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        ok = (sub_img >= 0) & np.isfinite(sub_id) & (sub_id == np.round(sub_id))
        ok &= (sub_id >= lo) & (sub_id < lo + span)
    offset = (np.where(ok, sub_id, lo) - lo).astype(np.int64)
    keys = np.where(ok, sub_img.astype(np.int64) * span + offset, -1)
    rows = np.flatnonzero(ok & np.isin(keys, truth_keys))
    rows = rows[~pd.Series(keys[rows]).duplicated().to_numpy()]
    coords = submission[COORDS].iloc[rows].apply(pd.to_numeric, errors="coerce").reset_index(drop=True)
    dedup = pd.concat([pd.Series(sub_img[rows], name="img"), coords,
                       submission["class"].iloc[rows].reset_index(drop=True)], axis=1)
    return rows[~dedup.duplicated().to_numpy()]


def match(truth: pd.DataFrame, submission: pd.DataFrame) -> pd.DataFrame:
    """Per GT box (truth order): its best prediction's GIoU and label
    (docs/CHALLENGE.md section 4, steps 1-3)."""
    _require(truth, "truth")
    _require(submission, "submission")
    codes = _image_codes(truth, submission)
    names, sub_img, n_img = codes
    rows = usable_rows(truth, submission, codes)
    p_img = sub_img[rows]
    p_box = submission[COORDS].iloc[rows].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    p_lab = _labels(submission["class"].iloc[rows])
    g_box = truth[COORDS].to_numpy(np.float64)

    p_order = np.argsort(p_img, kind="stable")  # predictions by image, submission order inside
    n_pred = np.bincount(p_img, minlength=n_img)
    p_start = np.cumsum(n_pred) - n_pred
    g_order = np.argsort(names, kind="stable")
    reps = n_pred[names[g_order]]
    seg_start = np.cumsum(reps) - reps
    total = int(reps.sum())
    within = np.arange(total) - np.repeat(seg_start, reps)
    pair_g = np.repeat(g_order, reps)
    pair_p = p_order[np.repeat(p_start[names[g_order]], reps) + within]

    has = reps > 0
    best = np.full(len(truth), -1.0)
    label = np.full(len(truth), MISSING_LABEL, dtype=object)
    if total:
        giou = boxes.giou_matrix(g_box[pair_g][:, None], p_box[pair_p][:, None], signed=True)[:, 0, 0]
        starts = seg_start[has]
        seg_max = np.repeat(np.maximum.reduceat(giou, starts), reps[has])  # NaN wins, like np.max
        hit = (giou == seg_max) | (np.isnan(giou) & np.isnan(seg_max))
        first = np.minimum.reduceat(np.where(hit, np.arange(total), total), starts)
        best[g_order[has]] = giou[first]
        label[g_order[has]] = p_lab[pair_p[first]]
    matched = np.zeros(len(truth), dtype=bool)
    matched[g_order[has]] = True
    return pd.DataFrame({
        "trustii_id": truth["trustii_id"].to_numpy(), "NAME": truth["NAME"].to_numpy(),
        "class": truth["class"].astype(str).to_numpy(dtype=object), "pred_class": label, "giou": best,
        "matched": matched,
    })


def score(truth: pd.DataFrame, submission: pd.DataFrame) -> ScoreResult:
    """The challenge score of ``submission`` against ``truth`` (both ``trustii_id,NAME,x1,y1,x2,y2,class``).

    Pure: no I/O. Extra submission columns are ignored; NaN or unknown classes,
    NaN boxes, foreign trustii_ids and repeated rows are scored as on the
    platform. Raises ``ValueError`` on a missing column or a malformed truth.
    """
    per_box = match(truth, submission)
    if per_box.empty:
        raise ValueError("truth: no boxes to score")
    rescaled = np.nan_to_num((per_box["giou"].to_numpy() + 1) / 2, nan=0.0)
    y_true = per_box["class"].to_numpy(dtype=object)
    y_pred = per_box["pred_class"].to_numpy(dtype=object)
    codes, labels = pd.factorize(np.concatenate([y_true, y_pred]), sort=True)
    labels = np.asarray(labels, dtype=object)
    n, n_lab = len(y_true), len(labels)
    confusion = np.bincount(codes[:n] * n_lab + codes[n:], minlength=n_lab * n_lab).reshape(n_lab, n_lab)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    per_class = pd.DataFrame({"label": labels.astype(object), "precision": precision, "recall": recall,
                              "f1": f1, "support": support, "predicted": predicted})
    giou_term = float(rescaled.mean())
    f1_term = float(f1.mean())
    return ScoreResult(
        total=GIOU_WEIGHT * giou_term + F1_WEIGHT * f1_term,
        giou_term=giou_term,
        f1_term=f1_term,
        balanced_accuracy=float(recall[support > 0].mean()),
        n_gt=n,
        n_unmatched=int((~per_box["matched"]).sum()),
        labels=[str(x) for x in labels],
        confusion=confusion,
        per_class=per_class,
        per_box=per_box.assign(rescaled_giou=rescaled),
    )



def format_result(result, per_class: bool = True) -> str:
    """The total (6 decimals), the two terms and the per-class table sorted by F1 (worst last)."""
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
