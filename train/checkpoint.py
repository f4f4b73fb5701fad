"""Checkpoints of the kit's own epoch loops (UNet, crop classifier, torchvision detectors): one format.

A checkpoint is a dict, written atomically and read with ``torch.load(weights_only=True)``
(``train.weights.load``)::

    model    the state dict (CPU tensors)
    config   the resolved config as a dict
    classes  the 23 codes in order
    epoch    0-based index of the epoch it records (-1: none); metrics.csv and the logs number
             epochs from 1 (index + 1), as torchvision's references and ultralytics do
    metric   that epoch's selection metric (challenge score; the classifier's macro-F1); nan: not scored
    format   FORMAT

``last.pt`` adds ``best`` (the best metric so far), ``optimizer``, ``scheduler`` and ``scaler``;
the torchvision loop adds ``arch``. ``keep`` writes both files at the end of an epoch, ``restore``
resumes from ``last.pt``, also from format 1 (no ``format`` key), whose torchvision checkpoints
counted epochs from 1 and called the metric ``score``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from cytocore import classes
from cytocore.io import atomic_write
from cytocore.paths import BEST, LAST

log = logging.getLogger(__name__)

FORMAT = 2
RESUME_STATE = ("optimizer", "scheduler", "scaler", "best")


def save(path: Path, model: torch.nn.Module, config: dict, epoch: int, **state: Any) -> Path:
    """Write ``model``'s weights, its config and ``state`` to ``path`` atomically."""
    ckpt = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "config": config,
            "classes": list(classes.CLASSES), "epoch": int(epoch), "format": FORMAT, **state}
    with atomic_write(Path(path), suffix=".tmp.pt") as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def read(path: Path, what: str) -> dict:
    """A checkpoint written by ``save``; ``what`` names the model kind in the ``WeightsError`` if bad."""
    from train.weights import WeightsError
    from train.weights.load import torch_load

    path = Path(path)
    ckpt = torch_load(path, what)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise WeightsError(path, f"not a {what} checkpoint of this kit (expected keys model, config)")
    if list(ckpt.get("classes", [])) != list(classes.CLASSES):
        raise WeightsError(path, "trained with another class list/order than cytocore.classes.CLASSES")
    return ckpt


def first_epoch(ckpt: dict) -> int:
    """The 0-based index of the epoch to run after the one ``ckpt`` records."""
    epoch = int(ckpt["epoch"])
    if "format" not in ckpt and "arch" in ckpt:  # format 1 of the torchvision loop: epochs counted from 1
        epoch -= 1
    return epoch + 1


def restore(path: Path, what: str, model: torch.nn.Module, optimizer: Any, scheduler: Any,
            scaler: Any) -> tuple[int, float]:
    """Load a ``last.pt`` into the training objects; return (first epoch index to run, best metric).

    Raises ``ValueError`` (one line, naming the file) when the file cannot continue this run.
    """
    ckpt = read(path, what)
    missing = [k for k in RESUME_STATE if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: cannot resume from it (no {', '.join(missing)}: not a last.pt); "
                         "start the run again with --force")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        load_scaler(scaler, ckpt.get("scaler"), path)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: does not fit the model or optimizer of this config (changed since the "
                         f"run started?): {str(exc).splitlines()[0]}; start again with --force") from None
    start = first_epoch(ckpt)
    if "format" not in ckpt:
        log.info("%s: a checkpoint of format 1; resuming at epoch %d", path, start + 1)
    return start, float(ckpt["best"])


def scored(metric: float | None) -> bool:
    """True for a finite metric (an epoch that was scored and can be selected)."""
    return metric is not None and math.isfinite(metric)


def keep(run_dir: Path, model: torch.nn.Module, config: dict, epoch: int, metric: float | None, best: float,
         optimizer: Any, scheduler: Any, scaler: Any, **meta: Any) -> float:
    """End of epoch ``epoch``: ``best.pt`` when ``metric`` beats ``best``, then ``last.pt``; the new best.

    ``metric`` None (or nan) marks an epoch that was not scored: never a candidate for best.pt.
    """
    run_dir = Path(run_dir)
    value = float(metric) if scored(metric) else math.nan
    if scored(metric) and value > best:
        best = value
        save(run_dir / BEST, model, config, epoch, metric=value, **meta)
    training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict()}
    save(run_dir / LAST, model, config, epoch, metric=value, best=float(best), **training, **meta)
    return best


def finish(run_dir: Path, model: torch.nn.Module, config: dict, epoch: int, **meta: Any) -> Path:
    """``best.pt``; when no epoch was scored, the weights of the last one (metric nan)."""
    best = Path(run_dir) / BEST
    if not best.exists():
        log.warning("no epoch of %s was scored: best.pt holds the last epoch's weights", run_dir)
        save(best, model, config, epoch, metric=math.nan, **meta)
    return best


def load_scaler(scaler: Any, state: dict | None, source: Path | str = "") -> None:
    """Restore a ``GradScaler``'s state, unless it is empty: a run saved with AMP off (on a CPU, or
    ``amp=false``) holds ``{}``, which an enabled scaler refuses; it then starts afresh."""
    if state:
        scaler.load_state_dict(state)
    elif scaler.is_enabled():
        log.info("%s: saved without mixed precision; the AMP loss scale starts afresh", source)
