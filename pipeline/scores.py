"""Score tables of a ``make all`` run: each member against the ensemble.

``test_table`` scores, on DATA/test_labels.csv, each detector x fold alone, each
detector over its folds, the same with the classifier blended in (the exact
hook of the submission, ``infer.ensemble.classify``), the ensemble without the
classifier (with several members), the classifier alone on the true boxes (the ceiling of the second
stage: what a perfect detector would score with it; detected boxes shift the
crops a little, so on few cells their F1 can land slightly above it), and the
submitted ensemble. The fusion settings are the tuned ones throughout, so each
difference is what that part adds. Every row carries its per-class F1. ``oof_check`` reads the
out-of-fold table of ``infer.tune`` (``infer.oof_table``): is the ensemble at least its best member?
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from cytocore.tables import COORDS


def oof_check(table: pd.DataFrame) -> dict | None:
    """The ensemble's out-of-fold score vs the best single member's, from the tuned out-of-fold table
    (``infer.oof_table``: its one owner)."""
    from infer import oof_table

    return oof_table.check(table)


CEILING = "classifier on the true boxes (ceiling)"  # the row of the second stage's upper bound


def _row(label: str, result: Any) -> dict:
    f1 = {str(r.label): round(float(r.f1), 4) for r in result.per_class.itertuples()}
    return {"member": label, "score": result.total, "giou": result.giou_term, "f1": result.f1_term,
            "per_class_f1": f1}  # the out-of-fold table's words (infer.oof_table.COLUMNS)


def truth_as_fused(truth: pd.DataFrame, sizes: pd.DataFrame) -> pd.DataFrame:
    """The true boxes as a fused prediction table (score 1); their class is the first code, a
    placeholder the classifier replaces (weight 1), so nothing of the true class leaks in."""
    from cytocore import classes, predictions

    wh = sizes.drop_duplicates("NAME").set_index("NAME").loc[truth["NAME"]]
    table = pd.DataFrame({"NAME": truth["NAME"].to_numpy(), **{c: truth[c].to_numpy(float) for c in COORDS},
                          "score": 1.0, "class": classes.CLASSES[0], "width": wh["width"].to_numpy(),
                          "height": wh["height"].to_numpy(), "model": "truth", "fold": -1, "view": "fused"})
    return predictions.validate(table)


def ceiling(truth: pd.DataFrame, test: pd.DataFrame, sizes: pd.DataFrame,
            classify: Callable[[pd.DataFrame], pd.DataFrame]) -> Any:
    """The challenge score of ``classify`` (the classifier alone) on the true boxes: GIoU term 1, so
    the F1 term is the best the second stage can do with this classifier."""
    from cytocore.metric import score
    from cytocore.submission import make_submission

    return score(truth, make_submission(classify(truth_as_fused(truth, sizes)), test, sizes))


def test_table(ens: Any, data: Path, fusion: str, submitted: Any) -> list[dict]:
    """Each member vs the ensemble on the test labels (see the module doc); ``submitted`` is the
    submission's ``ScoreResult`` (the last row)."""
    from cytocore import paths, predictions, tables
    from cytocore.metric import score
    from cytocore.submission import image_sizes, make_submission
    from infer import fuse
    from infer.config import bind
    from infer.ensemble import classify

    ens, ds = bind(ens, data)
    files = paths.data_files(data)
    test, truth = tables.read(files["test"], "test"), tables.read(files["test_labels"], "submission")
    sizes = image_sizes(test["NAME"], files["images"])
    n_cells = test.groupby("NAME").size().to_dict()
    params = ens.fuse_params(fusion)
    alone = dataclasses.replace(params, weights={})
    has_cls = ens.classifier_section() is not None

    def scored(table: pd.DataFrame, p: Any, with_cls: bool = False) -> Any:
        fused = fuse.fuse(table[table["view"].isin(ens.tta)], p, progress=False)
        if with_cls:
            fused = classify(ens, fused, files["images"], n_cells, ds)
        return score(truth, make_submission(fused, test, sizes))

    rows, every = [], []
    for m in ens.member_list():
        frames = [predictions.read(ds.preds_dir(m.name, f) / predictions.TEST_FILE).assign(model=m.name)
                  for f in m.folds]  # the member's key: its fusion weight
        every.extend(frames)
        if len(frames) > 1:
            rows += [_row(f"{m.name} fold{f}", scored(t, alone)) for f, t in zip(m.folds, frames)]
        both = pd.concat(frames, ignore_index=True)
        rows.append(_row(f"{m.name} (folds {','.join(map(str, m.folds))})", scored(both, alone)))
        if has_cls:
            rows.append(_row(f"{m.name} + classifier", scored(both, alone, with_cls=True)))
    if len(ens.member_list()) > 1:  # one member: its own row above is the ensemble without classifier
        rows.append(_row("ensemble, no classifier" if has_cls else "ensemble",
                         scored(pd.concat(every, ignore_index=True), params)))
    if has_cls:
        alone_cls = dataclasses.replace(ens, classifier={**ens.classifier, "weight": 1.0})
        rows.append(_row(CEILING, ceiling(truth, test, sizes, lambda t: classify(
            alone_cls, t, files["images"], n_cells, ds))))
    rows.append(_row("ensemble (submission)", submitted))
    return rows
