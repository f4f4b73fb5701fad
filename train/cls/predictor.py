"""A trained crop / full-image classifier as a predictor: crops in, class probabilities out.

``ClassifierAdapter.load`` (train/cls/adapter.py) builds one from ``best.pt``;
``infer.blend`` (submissions), ``infer.oof_cls`` (tuning), ``train.cls.oof``
(the out-of-fold table), ``infer.cls_report`` and ``infer.export`` use it.
A ``box_size`` model also takes each crop's box size (``train.cls.data.
box_size_features``): the box's in crop mode, the whole image's in full mode,
as in training; every method here passes it along, so callers never need to.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.base import Detections, Predictor
from train.cls import data as cls_data
from train.cls import model as cls_model


class ClassifierPredictor(Predictor):
    """A trained classifier. ``classify_boxes`` classifies crops of given boxes (what
    ``infer.blend`` uses); ``predict`` (the registry contract) treats each WHOLE image
    as one crop and returns one full-image box ``(0, 0, W-1, H-1)`` per image with
    score = top probability, label = argmax and the 23 probabilities."""

    def __init__(self, model: torch.nn.Module, cfg: Any, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.cfg, self.device = cfg, device

    @property
    def takes_size(self) -> bool:
        """Whether the network needs the crops' box sizes (a ``box_size`` model)."""
        return cls_model.takes_size(self.model)

    def classify(self, crops: np.ndarray, tta: bool | None = None,
                 sizes: np.ndarray | None = None) -> np.ndarray:
        """Probabilities ``(B, 23)`` of uint8 crops already at ``imgsz``; ``sizes``: their ``(B, 2)``
        ``box_size_features`` (required by a ``box_size`` model, ignored by others)."""
        tta = self.cfg.tta if tta is None else tta
        return cls_model.predict_probs(self.model, crops, self.device, tta, self.cfg.batch, sizes,
                                       getattr(self.cfg, "amp", True))

    def view_probs(self, crops: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
        """``(3, B, 23)`` float32 softmax of each flip view (identity first); ``classify`` = their mean."""
        return cls_model.view_probs(self.model, crops, self.device, self.cfg.batch, sizes, True,
                                    getattr(self.cfg, "amp", True))

    def crops(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        """The margin crops ``(N, imgsz, imgsz, 3)`` of boxes ``(N, 4)`` of one RGB image."""
        s = self.cfg.imgsz
        out = [cls_data.extract_crop(image, b, self.cfg.margin, s) for b in np.asarray(xyxy).reshape(-1, 4)]
        return np.stack(out) if out else np.zeros((0, s, s, 3), dtype=np.uint8)

    def image_crops(self, images: list[np.ndarray]) -> np.ndarray:
        """Whole images resized to ``(B, imgsz, imgsz, 3)`` (the full-image classifier's input)."""
        s = self.cfg.imgsz
        crops = [cls_data.extract_crop(im, None, 0, s) for im in images]
        return np.stack(crops) if crops else np.zeros((0, s, s, 3), np.uint8)

    def classify_boxes(self, images: list[np.ndarray], xyxy: list[np.ndarray],
                       tta: bool | None = None) -> list[np.ndarray]:
        """Per image, the ``(N_i, 23)`` probabilities of its boxes' crops."""
        if not images:
            return []
        boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in xyxy]
        crops = np.concatenate([self.crops(im, b) for im, b in zip(images, boxes)])
        probs = self.classify(crops, tta, cls_data.box_size_features(np.concatenate(boxes)))
        return np.split(probs, np.cumsum([len(b) for b in boxes])[:-1])

    def classify_images(self, images: list[np.ndarray], tta: bool | None = None) -> np.ndarray:
        """``(B, 23)`` probabilities of whole images (the full-image classifier; its size input is
        the image's size, as in training)."""
        return self.classify(self.image_crops(images), tta, cls_data.image_size_features(images))

    def predict(self, images: list[np.ndarray], conf: float = 0.001) -> list[Detections]:
        probs = self.classify_images(images)
        out = []
        for im, p in zip(images, probs):
            h, w = im.shape[:2]
            out.append(Detections(np.array([[0.0, 0.0, w - 1.0, h - 1.0]]), np.array([p.max()]),
                                  np.array([int(p.argmax())]), p[None]))
        return out

def load_predictor(weights: Path, cfg: Any = None, device: str = "cpu") -> ClassifierPredictor:
    """A predictor from a classifier's ``best.pt``. The architecture (backbone, mode, imgsz, margin)
    always comes from the checkpoint; ``cfg`` (a config, a dict of keys or a YAML path) may override
    only ``tta`` and ``batch``."""
    import dataclasses
    import logging

    from cytocore import config
    from train import checkpoint
    from train.cls.config import ClassifierConfig

    log = logging.getLogger("train.cls.adapter")
    ckpt = checkpoint.read(Path(weights), "classifier")
    saved = config.from_dict(ClassifierConfig, ckpt["config"], str(weights))
    if cfg is not None:
        given = cfg if isinstance(cfg, ClassifierConfig) else (
            config.from_dict(ClassifierConfig, cfg) if isinstance(cfg, dict)
            else config.load(ClassifierConfig, Path(cfg)))
        saved = dataclasses.replace(saved, tta=given.tta, batch=given.batch)
    # the weights say whether the head takes box sizes: a checkpoint from before box_size has
    # no such key in its config (read as the YAML's default) and a plain head
    sized = cls_model.size_aware_state(ckpt["model"])
    if "box_size" in ckpt["config"] and bool(ckpt["config"]["box_size"]) != sized:
        log.warning("%s: config says box_size %s but the weights are %s", weights,
                    ckpt["config"]["box_size"], "size-aware" if sized else "plain")
    saved = dataclasses.replace(saved, box_size=sized)
    model = cls_model.build_model(saved.backbone, drop_rate=saved.drop_rate, box_size=sized)
    model.load_state_dict(ckpt["model"])
    return ClassifierPredictor(model, saved, cls_model.resolve_device(device))
