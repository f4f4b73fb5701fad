"""Does the second-stage classifier pay? Detector-only vs blended classes, on out-of-fold images.

    python -m infer.cls_report --data DATA [--k 5 --seed 42] [--config ENSEMBLE.yaml] [--detector yolov8]
                               [--classifier cls ...] [--weight 0.5] [--full-weight 0.5] [--device cpu]
                               [--no-tta] [--out DIR] [key=value ...]

Unset flags come from the ensemble config (the last ``make all``'s tuned one, ``cytocore.lastrun``):
its first member, its classifier members, blend weight, full-image share, flip TTA and device.

For every fold with both the detector's ``work/preds/<detector>/fold<k>/oof.parquet``
and the classifiers' ``work/runs/<classifier>/fold<k>/best.pt``, the detector's
top-N boxes of each validation image are classified by the classifiers trained
without that image (``infer.blend``). The challenge score (through the
submission writer, ``submit.oof``), its macro-F1 term and balanced accuracy are
printed side by side for: the detector alone, the classifier alone, the blend
at ``--weight`` and the blend at the weight of the grid with the best challenge
score on these same rows (optimistic: it is chosen on what it is scored on;
``make tune-ensemble`` chooses it with the fusion, ``infer.tune``). Per-class F1
and the confusion-matrix PNGs of the detector and the last blend go to ``--out``
(default ``work/reports/cls_<detector>/``). ``--detector gt`` measures the
classification alone: the GT boxes stand in for detections and the "detector"
gives each the fold's most frequent training class.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import env, io, paths

log = logging.getLogger(__name__)
GT = "gt"  # --detector gt: the GT boxes stand in for detections, with the fold's most frequent class


@dataclasses.dataclass
class Comparison:
    """Scores of the variants side by side, with what is needed to print and plot them."""

    table: pd.DataFrame  # variant, weight, score, giou_term, f1_term, balanced_accuracy
    per_class: pd.DataFrame  # label, support, f1 of each variant
    results: dict  # variant -> cytocore.metric.ScoreResult
    tune: pd.DataFrame  # weight, score, f1_term of each blend weight of the grid (empty when not tuned)
    best_weight: float | None  # the grid's best weight (None when not tuned)


def gt_as_detections(boxes: pd.DataFrame, label: str) -> pd.DataFrame:
    """GT boxes (NAME, x1..y2, width, height) as a prediction table: class ``label``, score 1."""
    from cytocore import predictions

    out = boxes[["NAME", "x1", "y1", "x2", "y2", "width", "height"]].copy()
    out = out.assign(score=1.0, **{"class": label}, model="gt_boxes", fold=-1, view="identity")
    return predictions.validate(out, "GT boxes as detections")


def compare(preds: pd.DataFrame, truth_boxes: pd.DataFrame, images: pd.DataFrame, probs, weight: float,
            full_weight: float = 0.5, detector_label: str = "detector", tune: bool = True,
            shares: dict[str, float] | None = None) -> Comparison:
    """Score ``preds`` alone and blended with classifier ``probs`` (``infer.blend.ClassifierProbs``), each
    through the submission writer and the metric; with ``tune``, also at the grid weight scoring best
    here (``blend w=... (tuned here)``), else the blend at ``weight`` is labelled the fixed default.
    ``shares``: the crop members' relative shares (the ensemble's, as tuning chose them; None: equal)."""
    from cytocore.submission import oof_score
    from infer import blend

    preds = preds.reset_index(drop=True)
    grid, best = pd.DataFrame(columns=["weight", "score", "f1_term"]), None
    if tune:
        rows = []
        for w in blend.WEIGHT_GRID:
            table = blend.blend_table(preds, probs, float(w), full_weight, shares)
            res = oof_score(table, truth_boxes, images)
            rows.append({"weight": float(w), "score": res.total, "f1_term": res.f1_term})
        grid = pd.DataFrame(rows)
        best = float(grid.loc[grid["score"].idxmax(), "weight"])
    variants = {detector_label: None, "classifier": 1.0}
    variants[f"blend w={weight:g}" + ("" if tune else " (fixed default)")] = weight
    if tune:
        variants[f"blend w={best:g} (tuned here)"] = best
    results, lines = {}, []
    for name, w in variants.items():
        table = preds if w is None else blend.blend_table(preds, probs, w, full_weight, shares)
        res = results[name] = oof_score(table, truth_boxes, images)
        lines.append({"variant": name, "weight": np.nan if w is None else w, "score": res.total,
                      "giou_term": res.giou_term, "f1_term": res.f1_term,
                      "balanced_accuracy": res.balanced_accuracy})
    per_class = None
    for name, res in results.items():
        part = res.per_class[["label", "support", "f1"]].rename(columns={"f1": name})
        if per_class is not None:
            part = per_class.merge(part.drop(columns="support"), on="label", how="outer")
        per_class = part
    per_class = per_class[per_class["support"].fillna(0) > 0].sort_values("support", ascending=False)
    return Comparison(pd.DataFrame(lines), per_class.reset_index(drop=True), results, grid, best)


def save(comp: Comparison, out: Path) -> list[Path]:
    """summary.csv, per_class.csv, tune.csv and the confusion PNGs of the detector and the last blend."""
    from cytocore.metric import save_confusion

    out = Path(out)
    written = [io.atomic_write_df(comp.table, out / "summary.csv"),
               io.atomic_write_df(comp.per_class, out / "per_class.csv"),
               io.atomic_write_df(comp.tune, out / "tune.csv")]
    names = list(comp.results)
    for i, name in ((0, names[0]), (len(names) - 1, names[-1])):
        res = comp.results[name]
        slug = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")
        written.append(save_confusion(res, out / f"confusion_{i}_{slug}.png"))
    return written


def render(comp: Comparison) -> str:
    """The side-by-side summary and per-class F1 as text."""
    from cytocore.io import format_table

    text = format_table(comp.table) + "\n\nper-class F1 (support = GT boxes)\n" + format_table(comp.per_class)
    if comp.best_weight is None:
        return text + "\n\nblend weight: the fixed default, not chosen on these images"
    return text + f"\n\nbest blend weight on these images: {comp.best_weight:g}"


def finished(run_dir: Path) -> bool:
    """True when training in ``run_dir`` is over (``train.runs``' done.json or trained.json)."""
    from train import runs

    return runs.is_done(run_dir) or (Path(run_dir) / runs.TRAINED).exists()


def oof_inputs(data: Path, k: int | None, seed: int | None, detector: str, classifiers: list[str],
               device: str, tta: bool):
    """The detector's OOF table, truth boxes, image sizes and classifier probabilities, all folds found
    (each image classified by the folds that did not see it: ``infer.oof_cls.OOFClassifier``, whose
    per-crop cache tuning and the report share)."""
    from cytocore import dataset, predictions
    from cytocore.submission import one_view
    from infer.oof_cls import OOFClassifier

    ds = dataset.resolve(data, k, seed)
    preds, truth, sizes, found, used = [], [], [], [], []
    for fold in range(ds.k):
        oof = ds.preds_dir(detector, fold) / predictions.OOF_FILE
        weights = [ds.run_dir(c, fold) / paths.BEST for c in classifiers]
        if not (detector == GT or oof.exists()) or not all(w.exists() for w in weights):
            continue
        unfinished = [str(w.parent) for w in weights if not finished(w.parent)]
        if unfinished:
            log.warning("fold %d skipped: run(s) still training: %s", fold, ", ".join(unfinished))
            continue
        fd = ds.fold(fold)
        if detector == GT:
            p = gt_as_detections(fd.val_boxes, fd.train_boxes["class"].value_counts().idxmax())
        else:
            p = one_view(predictions.read(oof))
            p = p[p["NAME"].isin(fd.val_images["NAME"])].reset_index(drop=True)
        found += [(c, fold, w) for c, w in zip(classifiers, weights)]
        preds.append(p), truth.append(fd.val_boxes), sizes.append(fd.val_images), used.append(fold)
    if not used:
        raise FileNotFoundError(f"no fold has both {ds.preds_dir(detector, 0).parent}/fold<k>/oof.parquet "
                                f"and {ds.run_dir(classifiers[0], 0).parent}/fold<k>/best.pt")
    preds, truth = pd.concat(preds, ignore_index=True), pd.concat(truth, ignore_index=True)
    n_cells = truth.groupby("NAME").size().to_dict()
    probs = OOFClassifier(ds, found, device).probs(preds, tta, n_cells)
    return preds, truth, pd.concat(sizes, ignore_index=True), probs, used


def settings(args: argparse.Namespace) -> tuple[str, list[str], float, float, str, bool, dict[str, float]]:
    """Detector, classifiers, blend weight, full-image share, device, flip TTA and the crop members'
    shares: each flag given, else the ensemble config's (the last make all's tuned one by default,
    ``cytocore.lastrun``) with its ``key=value`` overrides, else the flag's old default. A classifier
    named by ``--classifier`` keeps its share in the config, 1 when the config has no such member."""
    from cytocore import lastrun
    from infer.config import device, load_config

    k, seed = args.k, args.seed
    choice = lastrun.ensemble(args.data, k, seed, given=args.config)
    print(choice.line())
    cfg = load_config(choice.path, args.overrides)
    section = cfg.classifier_section()
    members = [m.name for m in cfg.member_list()]
    detector = args.detector or (members[0] if members else "yolov8")
    classifiers = args.classifier or ([c.name for c in section.members] if section else ["cls"])
    weight = args.weight if args.weight is not None else (section.weight if section else 0.5)
    full = args.full_weight if args.full_weight is not None else (section.full_weight if section else 0.5)
    tta = not args.no_tta and (section.tta if section else True)
    known = section.shares() if section else {}
    shares = {c: known.get(c, 1.0) for c in classifiers}
    return detector, classifiers, weight, full, device(cfg.device, args.device), tta, shares


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infer.cls_report", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path,
                        help="ensemble config whose classifier settings are the defaults below "
                             "(default: the last make all's tuned one)")
    parser.add_argument("--data", type=Path, default=paths.DEFAULT_DATA, help="challenge data folder")
    parser.add_argument("--k", type=int, help="folds of the prepared dataset (default: as prepared)")
    parser.add_argument("--seed", type=int, help="fold seed of the prepared dataset (default: as prepared)")
    parser.add_argument("--detector",
                        help="member (name) whose OOF boxes are classified (default: the ensemble's first); "
                             "'gt': GT boxes, majority class")
    parser.add_argument("--classifier", nargs="+", help="classifier run names (default: the ensemble's)")
    parser.add_argument("--weight", type=float, help="classifier blend weight (default: the ensemble's)")
    parser.add_argument("--full-weight", type=float, help="share of full-image classifiers (the ensemble's)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: the ensemble's device)")
    parser.add_argument("--no-tta", action="store_true", help="no flip test-time augmentation")
    parser.add_argument("--out", type=Path, help="report folder (default work/reports/cls_<detector>)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="ensemble config overrides (device=cuda, ...)")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    detector, classifiers, weight, full_weight, device, tta, shares = settings(args)
    preds, truth, sizes, probs, folds = oof_inputs(args.data, args.k, args.seed, detector,
                                                    classifiers, device, tta)
    comp = compare(preds, truth, sizes, probs, weight, full_weight, f"{detector} only", shares=shares)
    out = args.out or paths.reports_dir(f"cls_{detector}")
    save(comp, out)
    mixed = " : ".join(f"{c} {shares[c]:g}" for c in classifiers) if len(classifiers) > 1 else classifiers[0]
    print(f"out-of-fold, folds {folds}: {detector} boxes, classes from the detector vs {mixed} "
          f"({len(truth)} GT boxes)")
    print(render(comp))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
