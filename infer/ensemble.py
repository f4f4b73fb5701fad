"""The ensemble at inference: every member with TTA, fusion, the classifier, the submission.

``run(cfg, data)`` is ``make infer``; ``run(cfg, data, submission=True)`` is
``make submission`` (see ``python -m infer``). For each member (model x fold of
the config; weights ``work/runs/<dataset id>/<model>/fold<k>/best.pt`` unless set) it writes,
in the prediction contract with every TTA view in the ``view`` column:

- ``work/preds/<model>/fold<k>/test.parquet``    -- the test images of DATA/test.csv
- ``work/preds/<model>/fold<k>/oof_tta.parquet`` -- the fold's validation images (``predict_oof``)

A table is reused while its inputs are unchanged (``infer.cache``). With
``submission`` it then resolves ``fusion: auto`` on the out-of-fold tables,
fuses the test tables over views, folds and models (``infer.fuse``), blends in
the classifier (every trained fold of its members; one line and the detectors'
classes when none is trained), writes ``work/preds/ensemble/test.parquet``,
writes and validates the submission (``submit.writer``), draws a PNG of boxes
beside it, and scores it when DATA has test_labels.csv.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pandas as pd

from cytokit import io, paths, predictions, tables
from infer import cache, fuse, predict, tta
from infer.config import EnsembleConfig, bind

log = logging.getLogger("infer")


@dataclasses.dataclass
class Result:
    """What one ``python -m infer`` run produced."""

    test_preds: pd.DataFrame
    fusion: str | None = None
    fused: pd.DataFrame | None = None
    submission: Path | None = None
    score: object | None = None  # cytokit.metric.ScoreResult when test_labels.csv exists
    seconds_per_image: float = float("nan")  # member prediction time per test image (all members, views)


def predict_members(cfg: EnsembleConfig, data: Path, force: bool = False, progress: bool = True) -> Result:
    """Predict (or reuse) every member's test and out-of-fold tables; returns the test tables together."""
    cfg, ds = bind(cfg, data)
    files = paths.data_files(data)
    test = tables.read(files["test"], "test")
    names = pd.unique(test["NAME"]).tolist()
    views = tta.get_views(cfg.tta)
    frames, spent = [], 0.0
    for m in cfg.member_list():
        for fold in m.folds:
            weights = predict.member_weights(ds, m.model, fold, m.weights)
            loaded: dict = {}

            def run(image_names: list[str], images_dir: Path, what: str, model=m, fold=fold, weights=weights):
                if "p" not in loaded:
                    loaded["p"] = predict.load_member(model.model, fold, weights, cfg.device, model.overrides,
                                                      cfg.backend)
                return predict.predict_files(loaded["p"], images_dir, image_names, views, model.model, fold,
                                             cfg.conf, cfg.max_det, cfg.batch, progress,
                                             desc=f"{model.model} fold{fold} {what}")

            out = ds.preds_dir(m.model, fold)
            start = time.perf_counter()
            meta = cache.member_meta(weights, cfg.tta, cfg.conf, cfg.max_det, names, files["images"])
            frames.append(cache.cached_table(out / predictions.TEST_FILE, meta,
                                               lambda: run(names, files["images"], "test"), force))
            if "p" in loaded:
                spent += time.perf_counter() - start
            if cfg.predict_oof:
                fd = ds.fold(fold)
                val = fd.val_images["NAME"].tolist()
                meta = cache.member_meta(weights, cfg.tta, cfg.conf, cfg.max_det, val, fd.images_dir)
                cache.cached_table(out / predictions.OOF_TTA_FILE, meta,
                                     lambda: run(val, fd.images_dir, "oof"), force)
    preds = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) \
        else predictions.empty()
    per_image = spent / len(names) if spent and names else float("nan")
    return Result(test_preds=preds, seconds_per_image=per_image)


def resolve_fusion(cfg: EnsembleConfig, data: Path) -> str:
    """``cfg.fusion``, or for ``auto`` the mode with the better out-of-fold score of a submission made
    with the config's settings, classifier included (wbf without OOF tables)."""
    if cfg.fusion != "auto":
        return cfg.fusion
    from infer import oof_eval

    try:
        oof = oof_eval.load_oof(cfg, data, cfg.tune_grid().max_images, cfg.tune_grid().seed)
    except (FileNotFoundError, ValueError) as exc:
        log.warning("fusion auto: no out-of-fold predictions to choose with (%s); using wbf", exc)
        return "wbf"
    bound, ds = bind(cfg, data)
    classifier = oof_eval.classifier_for(bound, ds, quiet=True)
    ev = oof_eval.Evaluator(oof, classifier, cfg.skip_box_thr, cfg.max_det)
    settings = oof_eval.config_settings(bound, sorted(set(oof.preds["view"])), classifier is not None)
    scores = {s.fuse.mode: ev.result(s).total for s in settings}
    best = max(scores, key=lambda mode: scores[mode])
    print("fusion auto, out-of-fold scores: " + ", ".join(f"{k} {v:.6f}" for k, v in scores.items())
          + f" -> {best}")
    return best


def classify(cfg: EnsembleConfig, fused: pd.DataFrame, images_dir: Path, n_cells: dict, ds) -> pd.DataFrame:
    """The classifier: blend every trained fold of the classifier members into the fused table. With
    none trained, one line says how to train them (or switch the classifier off) and the detectors'
    classes stay. ``ds``: the prepared dataset (``cytokit.dataset.Dataset``) whose runs hold them."""
    section = cfg.classifier_section()
    if section is None:
        return fused
    from infer import blend, oof_eval
    from infer.config import classifier_weights

    found, missing = classifier_weights(section, ds)
    if not found:
        log.warning(oof_eval.missing_message(section, ds, missing))
        return fused
    if missing:
        log.warning("classifier: %d of %d fold(s) not trained (first: %s); using the %d found",
                    len(missing), len(missing) + len(found), missing[0], len(found))
    weights = list(dict.fromkeys(path for _, _, path in found))
    return blend.apply_classifier(fused, images_dir, [(w, None) for w in weights], section.weight,
                                  device=cfg.device, tta=section.tta, n_cells=n_cells,
                                  full_weight=section.full_weight, backend=cfg.backend)


def write_submission(cfg: EnsembleConfig, data: Path, result: Result, out_dir: Path,
                     progress: bool = True) -> Result:
    """Fuse, classify, write, validate, draw and (with test_labels.csv) score the submission."""
    from cytokit import submission
    from infer import viz
    from submit import writer

    cfg, ds = bind(cfg, data)
    files = paths.data_files(data)
    test = tables.read(files["test"], "test")
    n_cells = test.groupby("NAME").size().to_dict()
    result.fusion = resolve_fusion(cfg, data)
    fused = fuse.fuse(result.test_preds, cfg.fuse_params(result.fusion), progress=progress)
    fused = classify(cfg, fused, files["images"], n_cells, ds)
    predictions.write(fused, ds.preds_dir("ensemble", "all") / predictions.TEST_FILE)
    result.fused = fused
    sizes = submission.image_sizes(test["NAME"], files["images"], fused)
    sub = submission.make_submission(fused, test, sizes)
    result.submission = writer.write_submission(sub, files["test"], out_dir, images_dir=files["images"])
    if cfg.viz_images:
        png_path = result.submission.with_name(result.submission.stem + "_boxes.png")
        png = viz.draw_grid(fused, files["images"], png_path, cfg.viz_images, n_cells)
        if png:
            print(f"boxes drawn on {min(cfg.viz_images, len(n_cells))} test images: {png}")
    print(f"submission: {result.submission} ({len(sub)} rows, fusion={result.fusion})")
    if files["test_labels"].exists():
        from cytokit.metric import format_result, score

        result.score = score(tables.read(files["test_labels"], "submission"), sub)
        print(f"local score against {files['test_labels']}:")
        print(format_result(result.score))
    return result


def run(cfg: EnsembleConfig, data: Path, submission: bool = False, out_dir: Path | None = None,
        force: bool = False, progress: bool = True) -> Result:
    """Predict every member (``make infer``); with ``submission``, fuse and write (``make submission``)."""
    if not cfg.members:
        raise io.DataError("the ensemble config lists no members")
    result = predict_members(cfg, data, force, progress)
    if result.seconds_per_image == result.seconds_per_image:
        print(f"member predictions: {1000 * result.seconds_per_image:.0f} ms per test image "
              f"({len(cfg.tta)} view(s), all members)")
    if submission:
        write_submission(cfg, data, result, Path(out_dir or cfg.out_dir or paths.submissions_dir()), progress)
    return result
