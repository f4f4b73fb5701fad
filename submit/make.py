"""The submission of an ensemble: its members' test predictions (``infer.ensemble``), fused and
classified, written as the challenge's CSV, validated, drawn and scored.

    python -m submit [--config ENSEMBLE.yaml] --data DATA [--out DIR] [--force] [key=value ...]

(``make submission``; ``python -m submit`` is this module's command line.) ``run`` predicts (or
reuses) every member's tables, fuses the test tables and blends the classifier (``infer.ensemble``),
makes one row per ``test.csv`` row (``cytocore.submission``), writes and validates the CSV
(``submit.writer``: ``submissions/submission_<timestamp>.csv``, ``submission.csv`` pointing at it),
draws the boxes of a sample of test images beside it, and scores it when DATA has test_labels.csv.
"""
from __future__ import annotations

from pathlib import Path

from cytocore import paths, tables
from infer import ensemble
from infer.config import EnsembleConfig


def run(cfg: EnsembleConfig, data: Path, out_dir: Path | None = None, force: bool = False,
        progress: bool = True, calibration: object | None = None) -> ensemble.Result:
    """Predict, fuse, classify, write, validate, draw and (with test_labels.csv) score the submission.
    ``calibration`` (``infer.calibrate.Calibration`` of this ensemble, when fitted): the picture shows
    calibrated confidences instead of raw fused scores (the CSV has no scores either way)."""
    from cytocore import submission
    from infer import viz
    from submit import writer

    result = ensemble.fuse_test(cfg, data, ensemble.run(cfg, data, force, progress), progress)
    out_dir = Path(out_dir or cfg.out_dir or paths.submissions_dir())
    files = paths.data_files(data)
    test = tables.read(files["test"], "test")
    n_cells = test.groupby("NAME").size().to_dict()
    sizes = submission.image_sizes(test["NAME"], files["images"], result.fused)
    sub = submission.make_submission(result.fused, test, sizes)
    result.submission = writer.write_submission(sub, files["test"], out_dir, images_dir=files["images"])
    if cfg.viz_images:
        png_path = result.submission.with_name(result.submission.stem + "_boxes.png")
        shown, note = result.fused, viz.SCORE_NOTE
        if calibration is not None and len(shown):
            calibrated = calibration.apply(shown["score"].to_numpy())
            shown, note = shown.assign(score=calibrated), viz.CONFIDENCE_NOTE
        png = viz.draw_grid(shown, files["images"], png_path, cfg.viz_images, n_cells, note=note)
        if png:
            print(f"boxes drawn on {min(cfg.viz_images, len(n_cells))} test images: {png}")
    print(f"submission: {result.submission} ({len(sub)} rows, fusion={result.fusion})")
    if files["test_labels"].exists():
        from cytocore.metric import format_result, score

        result.score = score(tables.read(files["test_labels"], "submission"), sub)
        print(f"local score against {files['test_labels']}:")
        print(format_result(result.score))
    return result
