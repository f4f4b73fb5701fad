"""The adapter contract every model of the registry obeys.

An adapter knows how to train one kind of model on one fold and how to load
trained weights into a ``Predictor``. Everything model-specific (ultralytics
result parsing, torchvision target dicts, UNet masks) stays inside its adapter;
the rest of the kit sees only this interface and the prediction table
(``cytocore.predictions``).
"""
from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cytocore.classes import NUM_CLASSES


@dataclasses.dataclass
class Detections:
    """One image's detections, in the pixel coordinates of the image given to ``predict``."""

    xyxy: np.ndarray  # (N, 4) float, absolute
    scores: np.ndarray  # (N,) float in [0, 1]
    labels: np.ndarray  # (N,) int class ids (cytocore.classes order)
    probs: np.ndarray | None = None  # (N, 23) per-class probabilities, when the model has them

    @classmethod
    def empty(cls, with_probs: bool = False) -> Detections:
        return cls(
            np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64),
            np.zeros((0, NUM_CLASSES)) if with_probs else None,
        )


class Predictor(abc.ABC):
    """A loaded model: RGB uint8 images in, detections out (no file I/O)."""

    @abc.abstractmethod
    def predict(self, images: list[np.ndarray], conf: float = 0.001) -> list[Detections]:
        """Detect on a batch of ``(H, W, 3)`` uint8 RGB images of any sizes."""


class Adapter(abc.ABC):
    """Trains one model kind per fold; loads its weights for prediction."""

    name: ClassVar[str]  # registry name, e.g. "yolov8"
    config_cls: ClassVar[type]  # the dataclass of its config (configs/<name>.yaml)

    @abc.abstractmethod
    def train(self, cfg: Any, fold_data: Any, run_dir: Path, resume: bool = False) -> Path:
        """Train on ``fold_data`` (``cytocore.dataset.FoldData``) into ``run_dir``; return best weights."""

    @abc.abstractmethod
    def load(self, weights: Path, cfg: Any, device: str = "cpu") -> Predictor:
        """A predictor from trained weights."""

    def pretrained_key(self, cfg: Any) -> str:
        """``<kind>:<architecture>`` of ``cfg``'s model in ``train.weights.catalog`` ("" = none)."""
        return ""

    def oof_predictions(self, predictor: Predictor, cfg: Any, fold_data: Any) -> Any:
        """The fold's out-of-fold prediction table, or None: every validation image through
        ``predictor.predict`` (``train.oof.predict_fold``). A second-stage model overrides it to
        return another model's boxes with its own classes."""
        return None
