"""The out-of-fold table of the report: every member without and with TTA, with the classifier, the
ensemble, each scored with the challenge metric on the same out-of-fold truth, and each compared with
its baseline by a paired bootstrap over images (``cytokit.compare.paired_bootstrap``).

Fusion follows the ensemble config (``make tune-ensemble``'s when there): a member alone is its
identity view fused with the config's WBF settings (as ``make tune-ensemble`` scores it), with TTA
its views fused, the ensemble every member's views (``fusion: auto`` takes the better mode, as
``make submission`` does). The classifier blends into a fused table with the config's weight, each
image classified by the fold's classifier trained without it (``infer.blend.oof_classifier_probs``);
its probabilities are cached beside the report.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import numpy as np
import pandas as pd

from cytokit import predictions
from cytokit.compare import Difference, paired_bootstrap
from cytokit.metric import ScoreResult, score
from cytokit.submission import make_submission, synthetic_truth
from pipeline.report.sources import Source

log = logging.getLogger(__name__)
CLASSIFIERS = ("cls",)  # crop classifiers blended into fused boxes
NOT_DETECTORS = ("cls", "cls_full")


@dataclasses.dataclass
class Setting:
    """One row of the table: a fused out-of-fold table and its score."""

    label: str  # e.g. "yolov8 + TTA"
    table: pd.DataFrame  # the fused predictions (one view)
    result: ScoreResult
    submission: pd.DataFrame  # the rows the metric scored (top-N per image, fillers)
    baseline: str = ""  # label of the setting it is compared with
    diff: Difference | None = None


@dataclasses.dataclass
class OOFTable:
    """Every setting, on ``truth`` (the out-of-fold boxes of ``images``)."""

    settings: list[Setting]
    truth: pd.DataFrame  # trustii_id,NAME,x1,y1,x2,y2,class (synthetic ids, as the scoring uses)
    images: pd.DataFrame  # NAME,width,height
    notes: list[str]
    fusion: str = ""

    @property
    def best(self) -> Setting | None:
        return max(self.settings, key=lambda s: s.result.total) if self.settings else None

    def frame(self) -> pd.DataFrame:
        """The table as shown: score, terms, and the difference to the baseline with its interval."""
        rows = []
        for s in self.settings:
            d = s.diff
            rows.append({"setting": s.label, "score": s.result.total, "GIoU term": s.result.giou_term,
                         "F1 term": s.result.f1_term, "vs": s.baseline,
                         "difference [95% CI]": str(d) if d else "",
                         "P(better)": d.p_better if d else np.nan})
        return pd.DataFrame(rows)


def _fuse_params(cfg, mode: str, models: list[str]):
    from infer.fuse import FuseParams

    weights = {m.get("model"): float(m.get("weight", 1.0)) for m in cfg.members if isinstance(m, dict)}
    return FuseParams(mode=mode, iou_thr=cfg.iou_thr, skip_box_thr=cfg.skip_box_thr, conf_type=cfg.conf_type,
                      max_det=cfg.max_det, weights={m: weights.get(m, 1.0) for m in models})


def _fused(table: pd.DataFrame, params) -> pd.DataFrame:
    from infer.fuse import fuse

    return fuse(table, params, progress=False)


def _score(label: str, table: pd.DataFrame, truth: pd.DataFrame, test: pd.DataFrame,
           images: pd.DataFrame) -> Setting:
    sub = make_submission(table[table["NAME"].isin(test["NAME"])], test, images)
    return Setting(label, table, score(truth, sub), sub)


def load_members(src: Source) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Each detector's out-of-fold table over all k folds; notes on those left out."""
    from train import registry

    tables, notes = {}, []
    for model in (m for m in registry.names() if m not in NOT_DETECTORS):
        files = [src.oof_file(model, f) for f in range(src.k)]
        found = [f for f in files if f is not None]
        if not found:
            continue
        if len(found) < src.k:
            notes.append(f"{model}: out-of-fold predictions for {len(found)} of {src.k} folds; left out of "
                         "the table (train the other folds: make train FOLD=all)")
            continue
        if not all(f.name == predictions.OOF_TTA_FILE for f in found):
            notes.append(f"{model}: no TTA views predicted out of fold (run make infer); scored without TTA")
        tables[model] = pd.concat([predictions.read(f) for f in found], ignore_index=True)
        if tables[model].empty:
            notes.append(f"{model}: no out-of-fold box at all (every image gets the full-image filler): "
                         "trained too briefly, or its conf threshold is too high?")
    return tables, notes


def _classifier_probs(src: Source, table: pd.DataFrame, n_cells: dict, tta: bool):
    """Out-of-fold classifier probabilities of ``table``'s rows (cached on the rows and the weights)."""
    from infer import blend

    weights = [src.run_dir(m, f) / "best.pt" for m in CLASSIFIERS for f in range(src.k)]
    h = hashlib.sha1(pd.util.hash_pandas_object(table[["NAME", "x1", "y1", "x2", "y2", "score"]],
                                                index=False).to_numpy().tobytes())
    h.update(json.dumps([[str(w), w.stat().st_mtime_ns] for w in weights] + [tta]).encode())
    path = src.cache_dir() / f"cls_{h.hexdigest()[:16]}.npy"
    if path.is_file():
        crop = np.load(path)
    else:
        from infer.oof_cls import OOFClassifier

        found = [(m, f, w) for (m, f), w in zip([(m, f) for m in CLASSIFIERS for f in range(src.k)], weights)]
        crop = OOFClassifier(src.ds, found).probs(table, tta, n_cells).crop
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, crop)
    return blend.ClassifierProbs(crop, None, np.zeros(len(table), bool))


def build(src: Source, cfg, classifier: bool = True, n_boot: int = 1000) -> OOFTable:
    """Score every setting on the out-of-fold truth; compare each with its baseline."""
    tables, notes = load_members(src)
    folds = [src.fold(f) for f in range(src.k)]
    boxes = pd.concat([fd.val_boxes for fd in folds], ignore_index=True)
    images = pd.concat([fd.val_images for fd in folds], ignore_index=True)
    truth, test = synthetic_truth(boxes)
    if not tables:
        notes.append("no detector has out-of-fold predictions for every fold yet "
                     "(make train MODEL=... FOLD=all)")
        return OOFTable([], truth, images, notes)
    models = list(tables)
    views = [v for v in cfg.tta if any(v in set(t["view"]) for t in tables.values())] or ["identity"]
    everything = pd.concat(tables.values(), ignore_index=True)
    modes = ("wbf", "agnostic") if cfg.fusion == "auto" else (cfg.fusion,)  # auto: the better, as infer does
    tried = {m: _score(f"ensemble ({m})", _fused(everything, dataclasses.replace(
        _fuse_params(cfg, m, models), views=tuple(views))), truth, test, images) for m in modes}
    mode = max(tried, key=lambda m: tried[m].result.total)
    params = _fuse_params(cfg, mode, models)
    settings: list[Setting] = []
    for m, t in tables.items():
        alone = dataclasses.replace(params, weights={})
        present = list(pd.unique(t["view"]))
        ident = t[t["view"] == ("identity" if "identity" in present else present[0])] if present else t
        settings.append(_score(m, _fused(ident, dataclasses.replace(alone, views=())), truth, test, images))
        if len(set(t["view"]) & set(views)) > 1:
            tta = _score(f"{m} + TTA", _fused(t, dataclasses.replace(alone, views=tuple(views))),
                         truth, test, images)
            tta.baseline = m
            settings.append(tta)
    bases = {m: max((s for s in settings if s.label in (m, f"{m} + TTA")), key=lambda s: s.result.total)
             for m in models}
    if len(models) > 1:
        ens = tried[mode]
        ens.baseline = max(bases.values(), key=lambda s: s.result.total).label
        settings.append(ens)
        bases["ensemble"] = ens
    missing = [f for f in range(src.k) if not (src.run_dir(CLASSIFIERS[0], f) / "best.pt").is_file()]
    if classifier and not missing:
        from infer import blend

        section = cfg.classifier_section()
        weight = float(section.weight) if section else 0.5
        cls_tta = bool(section.tta) if section else True
        n_cells = boxes.groupby("NAME").size().to_dict()
        for base in bases.values():
            probs = _classifier_probs(src, base.table, n_cells, cls_tta)
            blended = _score(f"{base.label} + classifier", blend.blend_table(base.table, probs, weight),
                             truth, test, images)
            blended.baseline = base.label
            settings.append(blended)
        notes.append(f"classifier rows: {CLASSIFIERS[0]} of each fold blended with weight {weight} "
                     + ("(the ensemble config's classifier section)" if section else
                        "(the ensemble config has no classifier section; its default)"))
    elif classifier:
        notes.append(f"no classifier rows: {CLASSIFIERS[0]} is not trained on fold(s) "
                     f"{', '.join(map(str, missing))} (make train MODEL=cls FOLD=all)")
    by_label = {s.label: s for s in settings}
    for s in settings:
        if s.baseline:
            s.diff = paired_bootstrap(s.result, by_label[s.baseline].result, n=n_boot)
    return OOFTable(settings, truth, images, notes, mode)


def describe(table: OOFTable) -> str:
    """One line of the best setting, for the terminal."""
    best = table.best
    if best is None:
        return "no out-of-fold scores"
    return f"best out-of-fold setting: {best.label} {best.result.total:.4f}"

