"""Where the report reads each step's outputs: the one module that knows the work-folder layout.

Every path comes from ``cytocore.paths`` / ``cytocore.dataset`` (never composed here), so a change of
layout (runs and predictions under a dataset id) is a change of these few functions.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pandas as pd

from cytocore import dataset, paths, predictions
from train import runs


@dataclasses.dataclass(frozen=True)
class Source:
    """The prepared dataset a report is about: the data folder and, when it was prepared several
    times, its K and SEED (``cytocore.dataset.resolve``)."""

    data: Path
    k_asked: int | None = None
    seed_asked: int | None = None

    @functools.cached_property
    def ds(self) -> dataset.Dataset:
        return dataset.resolve(self.data, self.k_asked, self.seed_asked)

    @property
    def k(self) -> int:
        return self.ds.k

    @property
    def seed(self) -> int:
        return self.ds.seed

    @property
    def key(self) -> str:
        return self.ds.id

    @property
    def root(self) -> Path:
        return self.ds.root

    def meta(self) -> dict:
        return self.ds.meta

    def images(self) -> pd.DataFrame:
        """``NAME,width,height,fold,group`` of every train image."""
        return self.ds.images()

    def boxes(self) -> pd.DataFrame:
        """The cleaned boxes (``NAME,x1,y1,x2,y2,class,width,height``)."""
        return pd.read_csv(self.root / "boxes.csv")

    def fold(self, fold: int):
        return self.ds.fold(fold)

    def cleaning(self) -> dict:
        """``make folds``' cleaning report (steps, duplicates, repaired images); {} when absent."""
        fold_file = paths.fold_file(self.key)
        report = fold_file.with_name(fold_file.stem + "_report.json")
        return json.loads(report.read_text()) if report.is_file() else {}

    def run_names(self, first: list[str]) -> list[str]:
        """The run folders' names (members) of the dataset: ``first`` (the ensemble's members) in their
        order, then every other folder under ``work/runs/<dataset id>/``, sorted."""
        root = paths.dataset_runs(self.ds.id)
        found = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
        return list(dict.fromkeys([*first, *found]))

    def run_dir(self, model: str, fold: int) -> Path:
        return self.ds.run_dir(model, fold)

    def preds_dir(self, model: str, fold: int) -> Path:
        return self.ds.preds_dir(model, fold)

    def oof_file(self, model: str, fold: int) -> Path | None:
        """The fold's out-of-fold table: make infer's (TTA views) when there, else training's."""
        folder = self.preds_dir(model, fold)
        return next((folder / f for f in predictions.OOF_FILES if (folder / f).is_file()), None)

    def trained(self, models: list[str]) -> dict[str, list[int]]:
        """For each model, the folds whose run folder holds a metrics.csv or done.json."""
        out = {}
        for m in models:
            folds = [f for f in range(self.k) if any((self.run_dir(m, f) / n).is_file()
                                                     for n in (runs.METRICS, runs.DONE))]
            if folds:
                out[m] = folds
        return out

    def submission(self) -> Path:
        """The last submission of ``make submission`` (``submissions/submission.csv``)."""
        return paths.submissions_dir() / "submission.csv"

    def report_path(self) -> Path:
        return paths.reports_dir("pages") / f"{self.key}.html"

    def cache_dir(self) -> Path:
        """Where the report keeps what is slow to recompute (the classifier's out-of-fold probabilities)."""
        return paths.reports_dir("pages") / f"{self.key}_cache"
