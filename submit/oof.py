"""Out-of-fold scoring: the leaderboard's metric on each fold's validation images.

Each fold's truth is its cleaned validation boxes (``cytocore.dataset.load_fold``)
with synthetic trustii_ids; the fold's out-of-fold predictions go through the
SAME writer as a real submission (top-N per image, full-image fillers, nudged
repeats), then through ``cytocore.metric``. So the local CV number is computed
exactly as the leaderboard would compute it.

    python -m submit.oof --data DATA [--k K --seed SEED] [--model NAME ...] [--json OUT.json]

reads ``work/preds/<dataset>/<model>/fold<k>/oof.parquet`` for every model found
(or those given) and prints a model x fold table with the overall out-of-fold
score (all folds concatenated); the classifier ``cls`` is its detector's boxes
with its classes (``train.cls.oof``), so its line compares with theirs. Then,
when ``make tune-ensemble`` has run, the tuned ensemble's table: each member
with and without TTA and the classifier, and the ensemble, as the tuner
computed and saved it (``infer.oof_table``; read, not scored again). Beside
each row: its difference to the tuned ensemble with the paired bootstrap 95 %
interval over images (in the first table: ``vs_best``, to the best model among
models scored on the same images). ``make score`` runs it.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import env, io, paths, predictions
from cytocore.submission import one_view, oof_score
from infer.oof_eval import intervals

log = logging.getLogger(__name__)


def find_models(ds) -> list[str]:
    """Members (their names) with at least one ``oof.parquet`` in the prepared dataset ``ds``'s
    prediction folders."""
    root = ds.preds_dir("x", 0).parent.parent
    return sorted({p.parent.parent.name for p in root.glob("*/fold*/oof.parquet")}) if root.exists() else []


def score_models(ds, models: list[str]) -> pd.DataFrame:
    """One row per model: the score of each fold found, the overall OOF score and its two terms, and
    ``vs_best``: the interval of its difference to the best model scored on all folds."""
    return _score_models(ds, models)[0]


def _score_models(ds, models: list[str]) -> tuple[pd.DataFrame, dict]:
    k = ds.k
    folds: dict[int, object] = {}
    rows, results = [], {}
    for model in models:
        row: dict = {"member": model}
        preds_all, boxes_all, images_all = [], [], []
        for fold in range(k):
            path = ds.preds_dir(model, fold) / predictions.OOF_FILE
            if not path.exists():
                row[f"fold{fold}"] = np.nan
                continue
            if fold not in folds:
                folds[fold] = ds.fold(fold)
            fd = folds[fold]
            preds = one_view(predictions.read(path))
            row[f"fold{fold}"] = oof_score(preds, fd.val_boxes, fd.val_images).total
            preds_all.append(preds)
            boxes_all.append(fd.val_boxes)
            images_all.append(fd.val_images)
        if preds_all:
            result = oof_score(pd.concat(preds_all, ignore_index=True),
                               pd.concat(boxes_all, ignore_index=True),
                               pd.concat(images_all, ignore_index=True))
            row.update(score=result.total, giou=result.giou_term, f1=result.f1_term, folds=len(preds_all))
            if len(preds_all) == k:
                results[model] = result
        rows.append(row)
    table = pd.DataFrame(rows)
    if results:
        ci = intervals(results, max(results, key=lambda m: results[m].total))
        table["vs_best"] = table["member"].map(ci).fillna("")
    return table, results


def score_ensemble(ds) -> tuple[pd.DataFrame, dict] | None:
    """The tuned ensemble's out-of-fold table as ``infer.tune`` computed it (``infer.oof_table``: read, not
    scored again, so the same cells as the terminal and the report) and its meta. None when tuning has
    not run."""
    from infer import oof_table

    found = oof_table.find(ds)
    if found is None:
        return None
    table, meta = found
    return table.drop(columns="reference"), meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submit.oof", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=paths.DEFAULT_DATA, help="challenge data folder")
    parser.add_argument("--k", type=int, help="folds of the prepared dataset (default: as prepared)")
    parser.add_argument("--seed", type=int, help="fold seed of the prepared dataset (default: as prepared)")
    parser.add_argument("--model", nargs="*", default=None, help="models to score (default: every one found)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="device= only (scoring is on the CPU)")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    from cytocore import dataset, lastrun, makevars
    from cytocore.io import format_table

    ds = dataset.resolve(args.data, args.k, args.seed)
    where = ds.preds_dir("x", 0).parent.parent
    models = args.model or find_models(ds)
    variants = ds.preds_dir("ensemble", "oof") / "variants.json"
    if variants.is_file() and not args.model:  # the first line, before any scoring
        tuned = lastrun.display(Path(json.loads(variants.read_text())["config"]))
        print(f"ensemble settings: {tuned} (the last tuning on {ds.id}, "
              "whose out-of-fold tables are scored below; make tune-ensemble ENSEMBLE= tunes another)")
    else:
        print(f"ensemble settings: none tuned on {ds.id} yet (make all or make tune-ensemble); each model "
              "alone below")
    makevars.scoring_overrides(args.overrides, "make score" if makevars.under_make() else "submit.oof")
    ensemble = score_ensemble(ds) if not args.model else None
    if not models and ensemble is None:
        raise FileNotFoundError(f"{where}: no out-of-fold predictions "
                                "(<model>/fold<k>/oof.parquet); train and predict first")
    table = score_models(ds, models) if models else pd.DataFrame()
    if models and ("score" not in table.columns or table["score"].isna().all()):
        raise FileNotFoundError(f"no oof.parquet for model(s) {', '.join(models)} under {where}")
    print(f"out-of-fold scores (challenge metric), dataset {ds.id} "
          f"(data={args.data} k={ds.k} seed={ds.seed})")
    if models:
        if "vs_best" in table.columns:
            print("vs_best: difference to the best model on all folds, paired bootstrap 95 % interval "
                  "over images")
        print(format_table(table))
    if ensemble is not None:
        etable, meta = ensemble
        print(f"\ntuned ensemble ({meta['config']}) on {len(meta['images'])} out-of-fold images")
        print("  (diff [lo, hi]: minus the ensemble's, paired bootstrap 95 % interval over images)")
        print(format_table(etable))
    if args.json:
        out = {"models": _records(table), "ensemble": _records(ensemble[0]) if ensemble else None}
        io.atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    return 0


def _records(table: pd.DataFrame) -> list[dict]:
    return table.astype(object).where(table.notna(), None).to_dict(orient="records")


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
