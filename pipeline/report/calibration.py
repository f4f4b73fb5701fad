"""The report's calibration section: is a predicted confidence of 0.8 right 80 % of the time?

``make predict`` gives each box a confidence calibrated on the run's out-of-fold boxes and keeps
those above a threshold chosen out of fold (``infer.calibrate``). This section shows the
reliability table -- per confidence bin, the boxes, the mean predicted confidence and the observed
fraction of boxes that found a truth box (IoU >= 0.5) of their class, measured on folds the
calibration was not fitted on -- and the threshold search. ``reliability_table(run)`` returns the
table of a trained run (``cytokit.reliability_table``).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cytocore import paths
from pipeline.report import page as p


def for_config(ds, config: Path):
    """The calibration of the ensemble ``config`` on the prepared dataset ``ds`` (fitted when missing)."""
    from infer import calibrate
    from infer.config import load_config

    cfg = load_config(config, {"k": ds.k, "seed": ds.seed})
    return calibrate.ensure(cfg, ds, config, paths.logs_dir(ds.id) / calibrate.FILE)


def reliability_table(run: str | Path | None = None) -> pd.DataFrame:
    """Per confidence bin: ``lo``, ``hi``, ``n`` boxes, ``mean_predicted``, ``observed`` (out of fold) of the
    run ``run`` (dataset id or logs folder; default the newest)."""
    from infer import predict_images

    r = predict_images.find_run(run)
    with predict_images.in_work(r):
        from cytocore import dataset

        meta = dataset.load_meta(paths.dataset_root(r.id))
        ds = dataset.Dataset(r.id, paths.dataset_root(r.id), int(meta["k"]), int(meta["seed"]))
        return for_config(ds, r.config).reliability_table()


def section(src, config: Path) -> str:
    """The HTML of the section for the report's dataset and ensemble config."""
    from infer import calibrate

    try:
        cal = for_config(src.ds, Path(config))
    except FileNotFoundError as exc:
        return p.note(f"no out-of-fold predictions to calibrate on (make infer, or make all): {exc}")
    rel = cal.reliability_table()
    if rel.empty:
        return p.note("no out-of-fold boxes to calibrate on (make infer, or make all)")
    shown = rel.assign(bin=[f"{lo:.1f}-{hi:.1f}" for lo, hi in zip(rel["lo"], rel["hi"])])
    shown = shown[["bin", "n", "mean_predicted", "observed"]]
    ece = calibrate.expected_calibration_error(rel)
    out = [p.cards([("out-of-fold boxes", cal.n_boxes), ("images", cal.n_images),
                    ("threshold", f"{cal.threshold:.3f}"), ("calibration error", f"{ece:.3f}")]),
           p.help_text("confidence = the fused score mapped by an isotonic fit on out-of-fold boxes "
                       "(correct: IoU >= 0.5 with a truth box of the same class); "
                       + ("measured on folds the fit did not see" if cal.cross_fitted
                          else "measured on the boxes it was fitted on (one fold only)")
                       + "; calibration error: box-weighted mean |predicted - observed|"),
           "<h3>Reliability</h3>" + p.table(shown)]
    if cal.thresholds:
        out.append("<h3>Threshold (make predict keeps boxes at or above it)</h3>"
                   + p.table(pd.DataFrame(cal.thresholds)))
    return "\n".join(out)
