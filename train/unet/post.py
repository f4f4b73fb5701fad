"""UNet outputs to detections, and the segmentation metrics of a fold.

Masks to boxes (``detections_from_probs``): the foreground is where
``1 - p_background > fg_thr``; each 8-connected component of at least
``min_area`` (a fraction of the image area) becomes one box, its tight pixel
extent (a component covering columns 3..7 gives x1 = 3, x2 = 8). Its class
probabilities are the mean of the 23 class channels over the component,
renormalised to sum to one; its class is their argmax; its score is the mean
foreground probability over the component.

``UnetPredictor`` runs a trained UNet on images of any size and returns these
detections in original-image pixels; with ``refine_ckpt`` each box is refined by
MedSAM (the box as prompt, the tight box of its mask; a box whose mask is empty
is kept as it was).

Metrics (``confusion`` / ``seg_metrics``), pooled over every pixel of a fold's
validation images:

- ``dice`` -- foreground Dice (= pixel F1 of cell vs background):
  ``2 TP / (2 TP + FP + FN)`` with TP the pixels that are cell in both.
- ``miou`` -- per-class IoU ``|P_c & T_c| / |P_c | T_c|`` averaged over the cell
  classes present in the truth (background excluded).
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cytocore.classes import NUM_CLASSES
from train.base import Detections, Predictor

N_LABELS = NUM_CLASSES + 1  # background + 23 classes


def detections_from_probs(probs: np.ndarray, fg_thr: float = 0.5, min_area: float = 0.0) -> Detections:
    """Boxes from (24, H, W) softmax probabilities (channel 0 = background), in those pixels."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] != N_LABELS:
        raise ValueError(f"probabilities must have shape ({N_LABELS}, H, W), got {probs.shape}")
    _, height, width = probs.shape
    fg_prob = 1.0 - probs[0]
    fg = (fg_prob > fg_thr).astype(np.uint8)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    xyxy, scores, cls_probs = [], [], []
    for i in range(1, n):
        x, y, w, h, pixels = (int(v) for v in stats[i])
        if pixels < min_area * height * width:
            continue
        inside = comp[y:y + h, x:x + w] == i
        class_mean = probs[1:, y:y + h, x:x + w][:, inside].mean(axis=1)
        total = float(class_mean.sum())
        cls_probs.append(class_mean / total if total > 0 else np.full(NUM_CLASSES, 1.0 / NUM_CLASSES))
        scores.append(float(fg_prob[y:y + h, x:x + w][inside].mean()))
        xyxy.append((x, y, x + w, y + h))
    if not xyxy:
        return Detections.empty(with_probs=True)
    p = np.asarray(cls_probs, dtype=np.float64)
    return Detections(
        xyxy=np.asarray(xyxy, dtype=np.float64),
        scores=np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0),
        labels=p.argmax(axis=1).astype(np.int64),
        probs=p,
    )


def confusion(truth: np.ndarray, pred: np.ndarray, n: int = N_LABELS) -> np.ndarray:
    """(n, n) pixel counts, rows = true label, columns = predicted label."""
    truth = np.asarray(truth, dtype=np.int64).reshape(-1)
    pred = np.asarray(pred, dtype=np.int64).reshape(-1)
    if truth.shape != pred.shape:
        raise ValueError(f"truth and prediction differ in size: {truth.size} vs {pred.size}")
    return np.bincount(truth * n + pred, minlength=n * n).reshape(n, n)


def seg_metrics(conf: np.ndarray) -> dict[str, float]:
    """Foreground Dice and mean IoU over the cell classes present in the truth (see module doc)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = conf[1:, 1:].sum()
    fp = conf[0, 1:].sum()
    fn = conf[1:, 0].sum()
    dice = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) > 0 else float("nan")
    ious = []
    for c in range(1, conf.shape[0]):
        if conf[c].sum() == 0:
            continue
        union = conf[c].sum() + conf[:, c].sum() - conf[c, c]
        ious.append(conf[c, c] / union)
    return {"dice": float(dice), "miou": float(np.mean(ious)) if ious else float("nan")}


def refine_boxes(segmenter: Any, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
    """Each box replaced by the tight box of ``segmenter``'s mask for it (unchanged if empty)."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    if not len(xyxy):
        return xyxy
    masks = segmenter.segment([image], [xyxy])[0]
    out = xyxy.copy()
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return out


_REFINERS: dict[tuple, Any] = {}  # the MedSAM refiner in use, keyed by its file, arch, device, preprocess


def load_refiner(ckpt: str, arch: str, device: str, preprocess: str) -> Any:
    """The MedSAM segmenter of ``ckpt`` on ``device``, loaded once per process and kept while the file is
    unchanged: each validation of a training run makes a new predictor, and ViT-B takes seconds to load."""
    from pathlib import Path

    from train.unet import medsam

    path = Path(ckpt)
    key = (str(path.resolve()), path.stat().st_mtime_ns if path.exists() else 0, arch, device, preprocess)
    if key not in _REFINERS:
        _REFINERS.clear()  # one ViT-B at a time on the device
        _REFINERS[key] = medsam.MedSam.from_checkpoint(ckpt, medsam.SPECS[arch], device=device,
                                                       preprocess=preprocess)
    return _REFINERS[key]


class UnetPredictor(Predictor):
    """A trained UNet: RGB images in, per-pixel probabilities and detections out."""

    def __init__(self, model: torch.nn.Module, cfg: Any, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.cfg, self.device = cfg, device
        self._refiner = None

    @torch.no_grad()
    def probabilities(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image, (24, H, W) float32 softmax probabilities at the image's own size."""
        from train.unet.data import to_input

        out = []
        for start in range(0, len(images), self.cfg.batch):
            part = images[start:start + self.cfg.batch]
            x = torch.stack([to_input(im, self.cfg.imgsz) for im in part]).to(self.device)
            with torch.autocast("cuda", enabled=self.cfg.amp and self.device.startswith("cuda")):
                logits = self.model(x)
            for im, lg in zip(part, logits.float()):
                up = F.interpolate(lg[None], im.shape[:2], mode="bilinear", align_corners=False)[0]
                out.append(up.softmax(0).cpu().numpy())
        return out

    def refiner(self):
        """The MedSAM model of ``refine_ckpt``, or None; loaded once per process (``load_refiner``)."""
        if self.cfg.refine_ckpt and self._refiner is None:
            self._refiner = load_refiner(self.cfg.refine_ckpt, self.cfg.refine_arch, str(self.device),
                                         self.cfg.refine_preprocess)
        return self._refiner

    def detect(self, image: np.ndarray, probs: np.ndarray) -> Detections:
        """Detections of one image from its probabilities (refined when configured)."""
        det = detections_from_probs(probs, self.cfg.fg_thr, self.cfg.min_area)
        segmenter = self.refiner()
        if segmenter is not None and len(det.xyxy):
            det = Detections(refine_boxes(segmenter, image, det.xyxy), det.scores, det.labels, det.probs)
        return det

    def predict(self, images: list[np.ndarray], conf: float = 0.001) -> list[Detections]:
        out = []
        for image, probs in zip(images, self.probabilities(images)):
            det = self.detect(image, probs)
            keep = det.scores >= conf
            out.append(Detections(det.xyxy[keep], det.scores[keep], det.labels[keep], det.probs[keep]))
        return out
