"""Calibrated confidence and a box threshold for predicting outside the challenge, fitted out of fold.

A submission keeps each test image's top-N boxes, N from test.csv; on new images
there is no N, so ``make predict`` keeps the boxes whose *confidence* is at least
a threshold. Both come from the run's out-of-fold predictions of its tuned
ensemble (``infer.oof_eval``: members fused, the classifier blended in, each
image predicted by the folds that did not see it) and the training truth:

- ``match(preds, truth)``: each predicted box, best score first per image, takes
  the unmatched truth box of highest IoU >= ``IOU_MATCH`` (greedy, as COCO
  does); it is *correct* when the classes agree too.
- ``fit(scores, correct)``: isotonic regression (sklearn) of correct on the
  fused score; the confidence of a box is that curve at its score
  (``Calibration.apply``, a piecewise-linear interpolation: no sklearn needed to
  apply it).
- ``reliability(conf, correct)``: per confidence bin, the mean predicted
  confidence beside the observed fraction of correct boxes. ``fit_oof`` measures
  it cross-fitted: the boxes of fold k are calibrated by a curve fitted on the
  other folds' boxes.
- ``threshold_table(conf, match)``: the challenge metric's two terms without
  test.csv counts, for each threshold: macro-F1 over the classes (a kept box of
  class c is a true positive when it is correct, else a false positive of c; a
  truth box of class c not found is a false negative of c) and the mean rescaled
  GIoU of the truth boxes ((GIoU + 1) / 2 of the correct kept box that found it,
  0 when none did); ``score = 0.2 * giou_term + 0.8 * f1`` as in
  ``cytocore.metric``. ``best_threshold`` picks the highest score.

``fit_run`` does it for a trained run and writes ``calibration.json`` beside its
tuned config (``work/logs/<dataset id>/``); ``load`` reads it back.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytocore import boxes as bx
from cytocore import classes, io
from cytocore.config import ConfigError
from cytocore.metric import F1_WEIGHT, GIOU_WEIGHT
from cytocore.tables import COORDS

log = logging.getLogger(__name__)
IOU_MATCH = 0.5  # a predicted box finds a truth box at this IoU or more
BINS = 10  # reliability bins over [0, 1]
FILE = "calibration.json"
VERSION = 1


@dataclasses.dataclass
class Calibration:
    """Score -> calibrated confidence (piecewise linear through ``x``, ``y``) and the box threshold."""

    x: list[float]  # fused scores (increasing)
    y: list[float]  # calibrated confidence at those scores (non-decreasing, in [0, 1])
    threshold: float = 0.5  # boxes with confidence >= threshold are kept (chosen out of fold)
    reliability: list[dict] = dataclasses.field(default_factory=list)  # reliability(...) rows
    thresholds: list[dict] = dataclasses.field(default_factory=list)  # a few rows of threshold_table
    n_boxes: int = 0  # out-of-fold boxes fitted on
    n_images: int = 0  # out-of-fold images
    cross_fitted: bool = True  # reliability measured on folds the curve was not fitted on
    config: str = ""  # the ensemble config the boxes came from
    version: int = VERSION

    def apply(self, scores: Any) -> np.ndarray:
        """The calibrated confidence of ``scores`` (clipped to the fitted range's ends)."""
        s = np.asarray(scores, dtype=np.float64)
        if not self.x:
            return s.copy()
        return np.interp(s, np.asarray(self.x), np.asarray(self.y))

    def reliability_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.reliability, columns=list(RELIABILITY_COLUMNS))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> Path:
        return io.atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")


RELIABILITY_COLUMNS = ("bin", "lo", "hi", "n", "mean_predicted", "observed")


def identity() -> Calibration:
    """No calibration (confidence = score), threshold 0.5: for a run without out-of-fold tables."""
    return Calibration(x=[0.0, 1.0], y=[0.0, 1.0], threshold=0.5, cross_fitted=False)


def load(path: Path) -> Calibration:
    """A ``calibration.json`` written by ``Calibration.save``."""
    raw = json.loads(Path(path).read_text())
    if raw.get("version") != VERSION:
        raise ConfigError(f"{path}: calibration version {raw.get('version')}, expected {VERSION}; "
                           "delete it to fit it again")
    fields = {f.name for f in dataclasses.fields(Calibration)}
    return Calibration(**{k: v for k, v in raw.items() if k in fields})


def match(preds: pd.DataFrame, truth: pd.DataFrame, iou_thr: float = IOU_MATCH) -> pd.DataFrame:
    """Per row of ``preds`` (same order): ``matched`` (found a truth box), ``correct`` (and its class),
    ``truth_class``, ``giou`` (signed, NaN when unmatched); greedy by score within each image."""
    n = len(preds)
    matched = np.zeros(n, bool)
    correct = np.zeros(n, bool)
    giou = np.full(n, np.nan)
    tclass = np.full(n, None, dtype=object)
    p = preds.reset_index(drop=True)
    t_groups = truth.groupby("NAME").indices if len(truth) else {}
    t_xyxy = truth[COORDS].to_numpy(np.float64) if len(truth) else np.zeros((0, 4))
    t_cls = truth["class"].astype(str).to_numpy(dtype=object) if len(truth) else np.zeros(0, dtype=object)
    p_xyxy = p[COORDS].to_numpy(np.float64)
    p_cls = p["class"].astype(str).to_numpy(dtype=object)
    score = p["score"].to_numpy(np.float64)
    for name, rows in (p.groupby("NAME").indices.items() if n else []):
        trows = t_groups.get(name)
        if trows is None or not len(trows):
            continue
        rows = rows[np.argsort(-score[rows], kind="stable")]
        iou = np.asarray(bx.iou_matrix(p_xyxy[rows], t_xyxy[trows]))
        taken = np.zeros(len(trows), bool)
        for i, r in enumerate(rows):
            cand = np.where(taken, -1.0, iou[i])
            j = int(np.argmax(cand))
            if cand[j] < iou_thr:
                continue
            taken[j] = True
            matched[r] = True
            tclass[r] = t_cls[trows[j]]
            correct[r] = p_cls[r] == t_cls[trows[j]]
            giou[r] = float(np.asarray(bx.giou_matrix(p_xyxy[r:r + 1], t_xyxy[trows[j]:trows[j] + 1],
                                                      signed=True))[0, 0])
    return pd.DataFrame({"matched": matched, "correct": correct, "truth_class": tclass, "giou": giou})


def fit(scores: Any, correct: Any) -> tuple[list[float], list[float]]:
    """The isotonic curve of ``correct`` on ``scores``: ``(x, y)`` knots for ``Calibration``."""
    from sklearn.isotonic import IsotonicRegression

    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=np.float64)
    if len(s) == 0:
        return [0.0, 1.0], [0.0, 1.0]
    if len(np.unique(s)) == 1:
        return [float(s[0])], [float(c.mean())]
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(s, c)
    return [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]


def reliability(conf: Any, correct: Any, bins: int = BINS) -> pd.DataFrame:
    """Per bin of confidence over [0, 1] (``bins`` equal widths; empty bins left out): the boxes, the
    mean predicted confidence and the observed fraction correct."""
    conf = np.clip(np.asarray(conf, dtype=np.float64), 0.0, 1.0)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.minimum(np.searchsorted(edges, conf, side="right") - 1, bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            rows.append({"bin": b, "lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(sel.sum()),
                         "mean_predicted": float(conf[sel].mean()), "observed": float(correct[sel].mean())})
    return pd.DataFrame(rows, columns=list(RELIABILITY_COLUMNS))


def expected_calibration_error(table: pd.DataFrame) -> float:
    """The box-weighted mean of |mean predicted - observed| over the reliability table's bins."""
    if table.empty:
        return float("nan")
    w = table["n"].to_numpy(np.float64)
    gap = np.abs(table["mean_predicted"].to_numpy() - table["observed"].to_numpy())
    return float((w * gap).sum() / w.sum())


def threshold_table(conf: Any, matched: pd.DataFrame, pred_class: Any, truth_class: Any) -> pd.DataFrame:
    """For each distinct confidence t (boxes with conf >= t kept): kept boxes, precision, recall,
    macro-F1 over the classes present, the GIoU term and the score (see the module docstring).

    ``matched``: ``match``'s table for the boxes; ``pred_class``: their classes; ``truth_class``: the
    class of every truth box (all images, found or not).
    """
    conf = np.asarray(conf, dtype=np.float64)
    order = np.argsort(-conf, kind="stable")
    conf = conf[order]
    ok = matched["correct"].to_numpy(bool)[order]
    found_giou = np.where(ok, (np.nan_to_num(matched["giou"].to_numpy(np.float64)[order], nan=-1.0) + 1) / 2,
                          0.0)
    ids = pd.Series(np.asarray(pred_class, dtype=object)[order]).map(classes.CLASS_TO_ID)
    ids = ids.fillna(-1).to_numpy(np.int64)
    n_cls = classes.NUM_CLASSES
    onehot = np.zeros((len(conf), n_cls))
    valid = ids >= 0
    onehot[np.flatnonzero(valid), ids[valid]] = 1.0
    pred_cum = np.cumsum(onehot, axis=0)
    tp_cum = np.cumsum(onehot * ok[:, None], axis=0)
    t_ids = pd.Series(np.asarray(truth_class, dtype=object)).map(classes.CLASS_TO_ID).dropna()
    support = np.bincount(t_ids.to_numpy(np.int64), minlength=n_cls).astype(np.float64)
    n_truth = max(int(support.sum()), 1)
    last = np.r_[np.flatnonzero(np.diff(conf) != 0), len(conf) - 1] if len(conf) else np.zeros(0, int)
    pred, tp = pred_cum[last], tp_cum[last]
    denom = pred + support[None, :]
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.where(present, denom, 1.0), 0.0)
    macro = f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    kept = last + 1
    tp_all = tp.sum(axis=1)
    giou_term = np.cumsum(found_giou)[last] / n_truth if len(conf) else np.zeros(0)
    return pd.DataFrame({
        "threshold": conf[last], "kept": kept, "precision": tp_all / kept, "recall": tp_all / n_truth,
        "f1": macro, "giou_term": giou_term, "score": GIOU_WEIGHT * giou_term + F1_WEIGHT * macro,
    })


def best_threshold(table: pd.DataFrame) -> float:
    """The threshold of the highest score (the highest threshold among ties: fewer boxes); 0.5 when empty."""
    if table.empty:
        return 0.5
    best = table["score"].max()
    return float(table.loc[table["score"] >= best - 1e-12, "threshold"].max())


def calibrate(preds: pd.DataFrame, truth: pd.DataFrame, folds: pd.Series | None = None,
              config: str = "") -> Calibration:
    """The calibration of a fused out-of-fold table ``preds`` against ``truth`` (NAME,x1,y1,x2,y2,class).

    ``folds``: NAME -> fold; with two folds or more the reliability table is cross-fitted.
    """
    m = match(preds, truth)
    scores = preds["score"].to_numpy(np.float64)
    correct = m["correct"].to_numpy()
    x, y = fit(scores, correct)
    cal = Calibration(x=x, y=y, n_boxes=len(preds), n_images=int(truth["NAME"].nunique()), config=config)
    fold_of = preds["NAME"].map(folds).to_numpy() if folds is not None else None
    if fold_of is not None and pd.Series(fold_of).nunique() >= 2 and not pd.isna(fold_of).any():
        held = np.zeros(len(preds))
        for f in pd.unique(fold_of):
            out = fold_of == f
            held[out] = Calibration(*fit(scores[~out], correct[~out])).apply(scores[out])
    else:
        held, cal.cross_fitted = cal.apply(scores), False
    cal.reliability = reliability(held, correct).to_dict(orient="records")
    conf = cal.apply(scores)
    table = threshold_table(conf, m, preds["class"].to_numpy(dtype=object),
                            truth["class"].to_numpy(dtype=object))
    cal.threshold = best_threshold(table)
    if len(table):
        best = int(np.argmin(np.abs(table["threshold"].to_numpy() - cal.threshold)))
        pick = sorted({0, len(table) - 1, best, *np.linspace(0, len(table) - 1, 9).astype(int).tolist()})
        cal.thresholds = table.iloc[pick].to_dict(orient="records")
    return cal


def oof_table(cfg: Any, ds: Any, max_images: int = 0, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tuned ensemble's fused, classified out-of-fold table on the run's dataset ``ds`` and the truth;
    ``max_images`` > 0: a fixed random subset of that many out-of-fold images (``oof_eval.load_oof``)."""
    from infer import oof_eval

    data = ds.data
    oof = oof_eval.load_oof(cfg, data, max_images, seed)
    classifier = oof_eval.classifier_for(cfg, ds, quiet=True)
    ev = oof_eval.Evaluator(oof, classifier, cfg.skip_box_thr, cfg.max_det)
    settings = oof_eval.config_settings(cfg, sorted(set(oof.preds["view"])), classifier is not None,
                                        oof_eval.crop_members(classifier))
    s = max(settings, key=lambda x: ev.result(x).total) if len(settings) > 1 else settings[0]
    table = ev.table(s)
    if classifier is not None and s.blend.weight > 0 and len(table):
        # the submission only classifies each image's top-N; new images have every box classified
        from infer import blend

        fused = ev.fused(s.fuse)
        every = {name: len(fused) + 1 for name in pd.unique(fused["NAME"])}  # no top-N, no single cells
        probs = classifier.probs(fused, s.blend.tta, every)
        table = blend.blend_table(fused, probs, s.blend.weight, s.blend.full_weight, dict(s.blend.members))
    return table, oof.truth_boxes


def fit_run(cfg: Any, ds: Any, out: Path, config: str = "") -> Calibration:
    """Fit the calibration of the ensemble ``cfg`` on ``ds``'s out-of-fold tables and write it to ``out``:
    on the images tuning scored (``tune.max_images``, its seed), whose crops tuning classified. Every box
    of each is classified (new images have no top-N); at full scale all ~48k out-of-fold images took
    tens of minutes of crops on the CPU for a curve that a few thousand images already fix."""
    grid = cfg.tune_grid()
    table, truth = oof_table(cfg, ds, grid.max_images, grid.seed)
    folds = ds.images().set_index("NAME")["fold"]
    cal = calibrate(table, truth, folds, config)
    cal.save(out)
    log.info("calibration: %d out-of-fold boxes on %d images; threshold %.3f", cal.n_boxes, cal.n_images,
             cal.threshold)
    log.info("calibration written to %s", out)
    return cal


def current(out: Path, config: Path) -> Calibration | None:
    """The calibration in ``out`` when it was fitted for ``config`` after its last change, else None."""
    out, config = Path(out), Path(config)
    if not out.exists() or out.stat().st_mtime < config.stat().st_mtime:
        return None
    try:
        cal = load(out)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s: %s; fitting it again", out, exc)
        return None
    return cal if cal.config and Path(cal.config).resolve() == config.resolve() else None


def ensure(cfg: Any, ds: Any, config: Path, out: Path) -> Calibration:
    """``current(out, config)``, else fitted on ``ds``'s out-of-fold tables (``fit_run``) and written."""
    return current(out, config) or fit_run(cfg, ds, out, str(Path(config).resolve()))
