"""Run folders: ``work/runs/<dataset id>/<model>/fold<k>/``, their state and their records.

Every adapter leaves the same files in its run folder::

    config.yaml   the resolved config (defaults of configs/<family>.yaml <- overrides)
    metrics.csv   one row per epoch (losses, validation metrics, challenge score)
    curves.png    loss and metric curves drawn from metrics.csv
    last.pt       the latest checkpoint (what ``--resume`` continues from)
    best.pt       the weights of the epoch with the best challenge score
    trained.json  written when training is finished (the out-of-fold predictions may not be)
    done.json     written when training and the out-of-fold predictions are finished; it records the
                  dataset id and ``folds_sha256``, the digest of the fold assignment the run was
                  trained on (``folds_digest``), so a run on other folds is never reused

``prepare`` decides what a new ``python -m train`` call does with a folder: a
finished run is skipped unless ``--force`` (which clears the folder, and the
fold's stale predictions, explicitly); an unfinished one with a checkpoint must
be ``--resume``d or ``--force``d, never silently mixed with a new run; one left by
a start that failed before its first checkpoint is cleared with a warning. A
resumed run goes on with the settings its config.yaml records, ``RUNTIME_KEYS``
aside (``train.job.continued_config``): config.yaml never holds settings the run
did not train with.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from cytocore import config as kit_config
from cytocore import makevars
from cytocore.io import atomic_write, atomic_write_df, atomic_write_text
from cytocore.paths import BEST, CONFIG, CURVES, DONE, LAST, METRICS, TRAINED  # noqa: F401 (runs.DONE...)
from train import tracking

log = logging.getLogger(__name__)

# Settings that do not change what a run learns: a resumed run takes them from the new call, and a
# finished run is not trained again for them (val_every moves only which epochs are candidates for best.pt;
# predict_batch only batches the out-of-fold predictions).
RUNTIME_KEYS = frozenset({"device", "workers", "plots", "batch_infer", "predict_batch", "val_every"})


def is_done(run_dir: Path) -> bool:
    return (Path(run_dir) / DONE).exists()


def has_checkpoint(run_dir: Path) -> bool:
    """True when the run folder holds a ``last.pt`` to resume from."""
    return (Path(run_dir) / LAST).exists()


def prepare(run_dir: Path, resume: bool = False, force: bool = False, stale: tuple[Path, ...] = ()) -> str:
    """Get ``run_dir`` ready; return ``"done"``, ``"trained"`` (predictions still to make),
    ``"resume"`` or ``"fresh"``.

    ``stale`` are outputs of an old run that live elsewhere (the fold's OOF
    parquet): removed with the folder on ``--force``. Raises ``FileExistsError``
    for an unfinished run called without ``--resume`` or ``--force``.
    """
    run_dir = Path(run_dir)
    if force:
        if run_dir.exists():
            log.info("--force: removing the old run folder %s", run_dir)
            shutil.rmtree(run_dir)
        for path in stale:
            if Path(path).exists():
                log.info("--force: removing %s", path)
                Path(path).unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        return "fresh"
    if is_done(run_dir):
        return "done"
    if (run_dir / TRAINED).exists():
        return "trained"
    if resume and has_checkpoint(run_dir):
        return "resume"
    if resume:
        log.warning("--resume: %s has no last.pt; starting this run from scratch", run_dir)
    elif has_checkpoint(run_dir):
        raise FileExistsError(
            f"{run_dir}: holds an unfinished run; add {makevars.spell('--resume')} to continue it or "
            f"{makevars.spell('--force')} to start over"
        )
    elif run_dir.exists() and any(run_dir.iterdir()):
        # A start that failed before its first checkpoint (bad data, out of memory): nothing to resume.
        log.warning("%s: an earlier start stopped before its first checkpoint; starting over", run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return "fresh"


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key old -> new`` for each setting outside ``RUNTIME_KEYS`` that ``old`` (a run's config.yaml)
    holds and ``new`` changes; keys ``old`` lacks (added to the kit since) are not differences."""
    return [f"{k} {old[k]!r} -> {v!r}" for k, v in new.items()
            if k not in RUNTIME_KEYS and k in old and old[k] != v]


def recorded_differences(cfg: Any, run_dir: Path) -> list[str]:
    """``differences`` between ``run_dir``'s config.yaml and ``cfg``; [] when the folder has none."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return []
    return differences(kit_config.read_yaml(path), kit_config.to_dict(cfg))


def save_config(cfg: Any, run_dir: Path) -> Path:
    """Write the resolved config as ``config.yaml``; log keys changed since a previous save."""
    path = Path(run_dir) / CONFIG
    if path.exists():
        old = kit_config.read_yaml(path)
        new = kit_config.to_dict(cfg)
        changed = sorted(k for k in new if old.get(k) != new[k])
        if changed:
            log.warning("config changed since the run started: %s", ", ".join(changed))
    return kit_config.save(cfg, path)


def folds_digest(dataset_root: Path) -> str | None:
    """The sha256 of a prepared dataset's fold assignment (``images.csv``'s ``NAME,fold``, by name);
    None when the dataset has no images.csv. New folds (``make folds FORCE=1``) give another digest."""
    path = Path(dataset_root) / "images.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path, usecols=["NAME", "fold"], dtype={"NAME": str}).sort_values("NAME")
    lines = "".join(f"{n}\t{int(f)}\n" for n, f in zip(table["NAME"], table["fold"]))
    return hashlib.sha256(lines.encode()).hexdigest()


def folds_record(dataset_id: str, dataset_root: Path) -> dict[str, Any]:
    """What done.json records of the folds a run was trained on."""
    return {"dataset": dataset_id, "folds_sha256": folds_digest(dataset_root)}


def other_folds(run_dir: Path, dataset_root: Path) -> str | None:
    """Why the finished run in ``run_dir`` was trained on other folds than the dataset has now (one
    line), or None: same folds, or a done.json from before runs recorded their folds."""
    try:
        record = json.loads((Path(run_dir) / DONE).read_text())
    except (OSError, ValueError):
        return None
    old, new = record.get("folds_sha256"), folds_digest(dataset_root)
    if not old or not new or old == new:
        return None
    return f"trained on other folds (fold digest {old[:8]}, now {new[:8]}: make folds made new ones)"


def mark_done(run_dir: Path, info: dict[str, Any]) -> Path:
    """Write ``done.json`` (the finished-run marker) with ``info`` and a timestamp."""
    payload = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    return atomic_write_text(Path(run_dir) / DONE, json.dumps(payload, indent=2, default=str) + "\n")


def mark_trained(run_dir: Path) -> Path:
    """Write ``trained.json``: training is over, only the out-of-fold predictions are left."""
    payload = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return atomic_write_text(Path(run_dir) / TRAINED, json.dumps(payload) + "\n")


def read_metrics(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / METRICS
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def append_metrics(run_dir: Path, row: dict[str, Any]) -> pd.DataFrame:
    """Add one epoch's row to ``metrics.csv`` (replacing a row of the same epoch) and redraw the curves.
    The row is stamped with the wall clock (``time``, always: ``train.progress`` reads s/epoch and ETAs
    from it; a family's own epoch duration is ``epoch_s``)."""
    row = {**row, "time": round(time.time(), 1)}
    old = read_metrics(run_dir)
    if len(old) and "epoch" in old:
        old = old[old["epoch"] != row["epoch"]]
    table = pd.concat([old, pd.DataFrame([row])], ignore_index=True) if len(old) else pd.DataFrame([row])
    atomic_write_df(table, Path(run_dir) / METRICS)
    tracking.epoch(run_dir, row)
    try:
        plot_curves(table, Path(run_dir) / CURVES)
    except Exception as exc:  # a plot must never stop a training run
        log.warning("could not draw %s: %s", CURVES, exc)
    return table


def best_so_far(run_dir: Path, column: str = "challenge") -> float:
    """The best value of ``column`` in ``metrics.csv`` (-inf when there is none): for resumed runs."""
    table = read_metrics(run_dir)
    if column not in table or table[column].dropna().empty:
        return -math.inf
    return float(table[column].max())


def plot_curves(table: pd.DataFrame, path: Path) -> Path:
    """One panel per series against epoch (losses first, then the validation metrics), each on its
    own axis: losses of 0.01-5 and scores of 0-1 do not share a scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [c for c in table.columns if "loss" in c]
    metrics = [c for c in table.columns if c not in losses and c not in ("epoch", "lr", "time", "epoch_s")]
    series = [c for c in losses + metrics
              if pd.api.types.is_numeric_dtype(table[c]) and table[c].notna().any()] or ["(no series)"]
    cols = min(4, len(series))
    rows = -(-len(series) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel()[len(series):]:
        ax.axis("off")
    for ax, col in zip(axes.ravel(), series):
        if col in table:
            ax.plot(table["epoch"], table[col], marker="o", ms=3,
                    color="#d73027" if col in losses else "#4575b4")
        ax.set_title(col, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
