"""Checkpoints of the kit's own epoch loops (UNet, crop classifier): one format, one reader.

A checkpoint is a dict ``{"model": state dict (CPU tensors), "config": the resolved
config as a dict, "classes": the 23 codes in order, "epoch": 0-based index of the
last finished epoch, ...}`` plus optional state (``metric``, ``best``, ``optimizer``,
``scheduler``, ``scaler``). It is written atomically and read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from cytokit import classes
from cytokit.io import atomic_write

log = logging.getLogger(__name__)


def save(path: Path, model: torch.nn.Module, config: dict, epoch: int, **state: Any) -> Path:
    """Write ``model``'s weights, its config and ``state`` to ``path`` atomically."""
    ckpt = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "config": config,
            "classes": list(classes.CLASSES), "epoch": int(epoch), **state}
    with atomic_write(Path(path)) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def read(path: Path, what: str) -> dict:
    """A checkpoint written by ``save``; ``what`` names the model kind in error messages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} weights not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: one line, not a traceback
        raise ValueError(f"{path}: not a {what} checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a {what} checkpoint (expected keys model, config)")
    if list(ckpt.get("classes", [])) != list(classes.CLASSES):
        raise ValueError(f"{path}: trained with another class list/order than cytokit.classes.CLASSES")
    return ckpt


def restore(path: Path, what: str, model: torch.nn.Module, optimizer: Any, scheduler: Any,
            scaler: Any) -> tuple[int, float]:
    """Load a ``last.pt`` into the training objects; return (first epoch to run, best metric)."""
    ckpt = read(path, what)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    load_scaler(scaler, ckpt.get("scaler"), path)
    return int(ckpt["epoch"]) + 1, float(ckpt["best"])


def load_scaler(scaler: Any, state: dict | None, source: Path | str = "") -> None:
    """Restore a ``GradScaler``'s state, unless it is empty: a run saved with AMP off (on a CPU, or
    ``amp=false``) holds ``{}``, which an enabled scaler refuses; it then starts afresh."""
    if state:
        scaler.load_state_dict(state)
    elif scaler.is_enabled():
        log.info("%s: saved without mixed precision; the AMP loss scale starts afresh", source)
