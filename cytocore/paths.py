"""Every path of the kit, anchored in one place: no other module composes an output path.

The repo root is found from this file; the work folder (all generated outputs)
is ``<root>/work`` unless ``CYTOKIT_WORK`` says otherwise. Raw data is only
ever read. Layout under the work folder::

    work/cache/<images>-<digest>/  per-file facts of an image folder (sizes, content hashes,
                                   perceptual hashes, repaired copies), keyed by file size and times
    work/folds/<dataset id>/       folds.csv, its sidecar, report, count table, plot and config
    work/datasets/<dataset id>/    the prepared dataset (cytocore.dataset: meta.json, exports)
    work/runs/<dataset id>/<name>/fold<k>/    training runs (config, metrics, weights, plots)
    work/preds/<dataset id>/<name>/fold<k>/   predictions in the prediction contract
                                   (<name>: the member's name, default its model; cytocore.members)
    work/masks/<dataset id>/       UNet label maps
    work/tuned/<name>.yaml         tuned ensemble configs
    work/reports/<name>/           reports (classifier vs detector, ...)
    work/submissions/              submissions, when CYTOKIT_WORK is set (else <root>/submissions)
    work/predict/<stamp>/          make predict on new images: predictions.csv/.json, annotated/
    work/config/                   ultralytics / matplotlib config dirs (offline set-up)
    work/locks/<data>-<digest>.lock  held by the make all / make demo running on that data folder
    work/<name>/                   a nested work folder of a self-contained run (make demo, BCCD)
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DEFAULT_DATA = ROOT / "data" / "raw"
DEMO_DATA = ROOT / "data" / "demo"


# The files of a run folder (train.runs and the trainers write them; every reader names them from here)
BEST, LAST = "best.pt", "last.pt"  # the best epoch's checkpoint, the latest one (what --resume continues)
DONE, TRAINED = "done.json", "trained.json"  # finished with its out-of-fold table; training finished
CONFIG, METRICS, CURVES = "config.yaml", "metrics.csv", "curves.png"  # resolved config, per-epoch rows, plot


def work_dir() -> Path:
    """The folder of all generated outputs (``$CYTOKIT_WORK`` or ``<root>/work``)."""
    env = os.environ.get("CYTOKIT_WORK")
    return Path(env).resolve() if env else ROOT / "work"


def nested_work_dir(name: str) -> Path:
    """A work folder inside this one for a self-contained run (``demo``, ``bccd``)."""
    return work_dir() / name


def demo_dir() -> Path:
    """The work folder of ``make demo``."""
    return nested_work_dir("demo")


def submissions_dir() -> Path:
    """Where submissions are written: ``<root>/submissions``, or ``$CYTOKIT_WORK/submissions`` so that
    two work folders never write into one submissions folder."""
    return work_dir() / "submissions" if os.environ.get("CYTOKIT_WORK") else ROOT / "submissions"


def predict_dir(stamp: str) -> Path:
    """The output folder of one ``make predict`` (``infer.predict_images``) without OUT=."""
    return work_dir() / "predict" / stamp


def tuned_config(name: str = "ensemble") -> Path:
    """The tuned ensemble config written by ``make tune-ensemble``."""
    return work_dir() / "tuned" / f"{name}.yaml"


def reports_dir(name: str) -> Path:
    """The folder of one report (``cls_<detector>``, ``cls_bccd``, ...)."""
    return work_dir() / "reports" / name


def cache_dir() -> Path:
    return work_dir() / "cache"


def _digest(text: str, n: int = 10) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def image_cache(images_dir: Path) -> Path:
    """The cache folder of one image folder: ``<data folder name>-<digest of its absolute path>``."""
    images_dir = Path(images_dir).resolve()
    return cache_dir() / f"{images_dir.parent.name or 'root'}-{_digest(str(images_dir))}"


def folds_dir() -> Path:
    return work_dir() / "folds"


def fold_file(dataset_id: str) -> Path:
    """The fold assignment artifact of a prepared dataset: columns ``NAME,fold,group``.

    Siblings: ``folds.json`` (its input fingerprint), ``folds_report.json``,
    ``folds_counts.csv``/``.png`` and ``folds_config.yaml``.
    """
    return folds_dir() / dataset_id / "folds.csv"


def datasets_dir() -> Path:
    return work_dir() / "datasets"


def dataset_root(dataset_id: str) -> Path:
    """The prepared dataset's folder (``cytocore.dataset``)."""
    return datasets_dir() / dataset_id


def dataset_runs(dataset_id: str) -> Path:
    """Every training run on the prepared dataset ``dataset_id``."""
    return work_dir() / "runs" / dataset_id


def run_dir(dataset_id: str, name: str, fold: int | str) -> Path:
    """Training run of the member ``name`` (``cytocore.members``: default its model) on fold ``fold`` of
    the prepared dataset ``dataset_id``."""
    return dataset_runs(dataset_id) / name / f"fold{fold}"


def preds_dir(dataset_id: str, name: str, fold: int | str) -> Path:
    """Prediction tables of the member ``name`` fold ``fold`` (``fold`` may be a name, e.g. ``all``)."""
    return work_dir() / "preds" / dataset_id / name / f"fold{fold}"


def masks_dir(dataset_id: str) -> Path:
    """UNet label maps of the prepared dataset ``dataset_id``."""
    return work_dir() / "masks" / dataset_id


def data_copy(name: str) -> Path:
    """A data folder the kit builds itself (e.g. BCCD in the challenge layout)."""
    return work_dir() / "data" / name


def config_dir() -> Path:
    """Project-local config folder (ultralytics settings, matplotlib cache)."""
    return work_dir() / "config"


def shared_dir() -> Path:
    """``../shared`` beside the repo root: the real annotation files and BCCD (may be absent)."""
    return ROOT.parent / "shared"


def cytologia_dir() -> Path:
    """The challenge's real train.csv / test.csv (``../shared/cytologia``)."""
    return shared_dir() / "cytologia"


def bccd_dir() -> Path:
    """The small real BCCD smear set (``../shared/data/bccd``)."""
    return shared_dir() / "data" / "bccd"


def data_files(data: Path) -> dict[str, Path]:
    """The challenge layout of a data folder: train.csv, test.csv, images/, test_labels.csv."""
    data = Path(data)
    return {
        "train": data / "train.csv",
        "test": data / "test.csv",
        "images": data / "images",
        "test_labels": data / "test_labels.csv",
    }


def weights_dir() -> Path:
    """Downloaded pretrained weights (``make weights``): ``$CYTOKIT_WEIGHTS`` or ``<root>/weights``."""
    env = os.environ.get("CYTOKIT_WEIGHTS")
    return Path(env).resolve() if env else ROOT / "weights"


def logs_dir(dataset_id: str) -> Path:
    """Logs of the training jobs of ``make all`` / ``make train JOBS=`` and the run report, per dataset."""
    return work_dir() / "logs" / dataset_id


def run_report(dataset_id: str) -> Path:
    """``report.json`` of the last ``make all`` / ``make demo`` on a dataset: every step's time and score."""
    return logs_dir(dataset_id) / "report.json"


def lock_file(data: Path) -> Path:
    """The lock of ``make all`` on the data folder ``data`` in this work folder (``pipeline.lock``):
    ``work/locks/<data folder name>-<digest of its absolute path>.lock``."""
    data = Path(data).resolve()
    return work_dir() / "locks" / f"{data.name or 'root'}-{_digest(str(data))}.lock"


@contextlib.contextmanager
def using_work_dir(root: Path) -> Iterator[Path]:
    """Point ``CYTOKIT_WORK`` at ``root`` (the demo's work folder, a run's nested one; children inherit
    it), then restore it."""
    old = os.environ.get("CYTOKIT_WORK")
    os.environ["CYTOKIT_WORK"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("CYTOKIT_WORK", None)
        else:
            os.environ["CYTOKIT_WORK"] = old


def shown(path: Path | str) -> str:
    """``path`` as a message shows it: relative to the current folder when inside it (short log lines)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)
