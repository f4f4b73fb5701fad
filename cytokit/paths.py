"""Every path of the kit, anchored in one place.

The repo root is found from this file; the work folder (all generated outputs)
is ``<root>/work`` unless ``CYTOKIT_WORK`` says otherwise. Raw data is only
ever read. Layout under the work folder::

    work/cache/            image sizes, repaired copies, hashes (keyed by data folder)
    work/folds/<data>/     folds_k{K}_s{SEED}.csv, its report, count table and plot
    work/datasets/<key>/   generated exports (YOLO labels + per-fold lists, COCO json)
    work/runs/<dataset id>/<model>/fold<k>/    training runs (config, metrics, weights, plots)
    work/preds/<dataset id>/<model>/fold<k>/   predictions in the prediction contract
    work/config/           ultralytics / matplotlib config dirs (offline set-up)
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DEFAULT_DATA = ROOT / "data" / "raw"
DEMO_DATA = ROOT / "data" / "demo"
SUBMISSIONS = ROOT / "submissions"


def work_dir() -> Path:
    """The folder of all generated outputs (``$CYTOKIT_WORK`` or ``<root>/work``)."""
    env = os.environ.get("CYTOKIT_WORK")
    return Path(env).resolve() if env else ROOT / "work"


def cache_dir() -> Path:
    return work_dir() / "cache"


def folds_dir() -> Path:
    return work_dir() / "folds"


def fold_file(data: Path, k: int, seed: int) -> Path:
    """The fold assignment artifact of a data folder: columns ``NAME,fold,group``.

    One sub-folder per data folder name, so ``DATA=data/demo`` and ``DATA=data/raw``
    keep their own folds.
    """
    return folds_dir() / Path(data).resolve().name / f"folds_k{k}_s{seed}.csv"


def datasets_dir() -> Path:
    return work_dir() / "datasets"


def dataset_root(dataset_id: str) -> Path:
    """The prepared dataset's folder (``cytokit.dataset``)."""
    return datasets_dir() / dataset_id


def run_dir(dataset_id: str, model: str, fold: int | str) -> Path:
    """Training run of ``model`` on fold ``fold`` of the prepared dataset ``dataset_id``."""
    return work_dir() / "runs" / dataset_id / model / f"fold{fold}"


def preds_dir(dataset_id: str, model: str, fold: int | str) -> Path:
    """Prediction tables of ``model`` fold ``fold`` (``fold`` may be a name, e.g. ``ensemble``)."""
    return work_dir() / "preds" / dataset_id / model / f"fold{fold}"


def config_dir() -> Path:
    """Project-local config folder (ultralytics settings, matplotlib cache)."""
    return work_dir() / "config"


def data_files(data: Path) -> dict[str, Path]:
    """The challenge layout of a data folder: train.csv, test.csv, images/, test_labels.csv."""
    data = Path(data)
    return {
        "train": data / "train.csv",
        "test": data / "test.csv",
        "images": data / "images",
        "test_labels": data / "test_labels.csv",
    }


def logs_dir(dataset_id: str) -> Path:
    """Logs of the training jobs of ``make all`` / ``make train JOBS=`` and the run report, per dataset."""
    return work_dir() / "logs" / dataset_id
