"""The kit's Python API: use a trained run anywhere, score a submission, read a recipe.

    from cytokit import load_ensemble
    ens = load_ensemble()                      # the newest make all / make demo run (or run="<dataset id>")
    boxes = ens.predict("data/demo/images")    # a DataFrame: image, x1..y2, class, confidence, p_<class>
    ens.draw(boxes, "annotated/")              # one JPEG per image with its boxes

Everything here is imported on first use (``import cytokit`` loads nothing heavy)
and is quiet: progress and notes go to the standard ``logging`` loggers
(``logging.basicConfig(level=logging.INFO)`` to see them), nothing is printed.
The command-line twin is ``cytokit`` (``cytokit.cli``) and ``make predict``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from infer.predict_images import Ensemble, Run, find_run, find_runs

__all__ = ["Ensemble", "Run", "draw", "find_runs", "load_ensemble", "load_recipe", "predict",
           "reliability_table", "score"]


def load_ensemble(run: str | Path | None = None, device: str | None = None, conf: float | None = None,
                  backend: str | None = None) -> Ensemble:
    """The tuned ensemble of a trained run: ``run`` is its dataset id or logs folder (default: the newest
    run under the work folder, ``$CYTOKIT_WORK`` or ``work/``, demo runs included). ``device``
    (``cpu``, ``cuda``...) and ``backend`` (``torch``, ``onnx``, ``openvino``, ``auto``) replace the
    run's; ``conf`` replaces the out-of-fold threshold on the calibrated confidence. Its calibration
    is fitted out of fold on first use and kept in the run's ``calibration.json``."""
    from cytocore import env

    env.apply()
    return Ensemble(find_run(run), device=device, conf=conf, backend=backend)


def predict(images: str | Path | Sequence[str | Path], run: str | Path | None = None,
            conf: float | None = None, device: str | None = None) -> pd.DataFrame:
    """``load_ensemble(run, device).predict(images, conf)`` in one call."""
    return load_ensemble(run, device=device).predict(images, conf=conf)


def draw(preds: pd.DataFrame, out_dir: str | Path, images: Sequence[str] | None = None) -> list[Path]:
    """One annotated JPEG per image of ``preds`` (``Ensemble.predict``'s table) under ``out_dir``: each box
    in its class colour with its class and confidence; returns the files written."""
    from infer.predict_images import draw as _draw

    return _draw(preds, Path(out_dir), images)


def score(submission: pd.DataFrame | str | Path, truth: pd.DataFrame | str | Path):
    """The challenge score (``cytocore.metric.ScoreResult``: ``total``, ``giou_term``, ``f1_term``,
    ``per_class``...) of a submission against the truth, each a DataFrame or a CSV path with
    ``trustii_id,NAME,x1,y1,x2,y2,class``."""
    from cytocore import metric, tables

    if not isinstance(submission, pd.DataFrame):
        from submit.score import read_submission_lenient

        submission = read_submission_lenient(Path(submission))
    if not isinstance(truth, pd.DataFrame):
        truth = tables.read(Path(truth), "submission")
    return metric.score(truth, submission)


def load_recipe(path: str | Path | None = None, overrides: Sequence[str] | dict = ()):
    """A ``make all`` recipe (``pipeline.recipe.RecipeConfig``; default ``configs/recipe.yaml``) with
    ``key=value`` overrides; unknown keys are an error naming the valid ones."""
    from cytocore import paths
    from pipeline import recipe

    return recipe.load(Path(path) if path else paths.CONFIGS / "recipe.yaml",
                       list(overrides) if not isinstance(overrides, dict) else overrides)


def reliability_table(run: str | Path | None = None) -> pd.DataFrame:
    """The reliability of a run's calibrated confidence, measured out of fold: per confidence bin the
    boxes (``n``), the ``mean_predicted`` confidence and the ``observed`` fraction correct."""
    from pipeline.report.calibration import reliability_table as table

    return table(run)
