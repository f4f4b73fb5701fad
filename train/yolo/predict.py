"""Prediction with an ultralytics detection model: letterbox, forward, NMS, original pixels.

``UltraPredictor`` keeps the raw per-class scores of every box NMS keeps (the
``p_<CODE>`` columns of the prediction table: independent sigmoid scores, their
maximum is the box score). Checkpoints load with ``torch.load(weights_only=True)``
through ultralytics' allow-list of its own classes; anything else is refused.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from train.base import Detections, Predictor


def load_ultra_checkpoint(path: Path) -> torch.nn.Module:
    """The fp32 model (EMA weights when present) of an ultralytics ``.pt``, in eval mode.

    Raises ``WeightsError`` naming the file when it is not an ultralytics checkpoint.
    """
    from ultralytics.nn.tasks import torch_safe_load

    from train.weights.errors import WeightsError, first_line
    from train.weights.load import sniff

    path = Path(path)
    if path.suffix != ".pt":
        raise WeightsError(path, "ultralytics weights are .pt files")
    sniff(path, "ultralytics")
    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=True)
    except Exception as exc:  # ultralytics raises TypeError/RuntimeError/UnpicklingError for bad files
        raise WeightsError(path, f"not a loadable ultralytics checkpoint ({type(exc).__name__}: "
                                 f"{first_line(exc).removeprefix('ERROR ❌️ ')})") from None
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, torch.nn.Module):
        raise WeightsError(path, "not an ultralytics checkpoint (no 'model'/'ema' module inside; "
                                 "a state dict?)")
    return model.float().eval()


def channels_last_helps() -> bool:
    """True where channels-last convolutions are faster on the CPU (x86 with oneDNN), as ultralytics
    decides."""
    import platform

    return platform.machine() in ("AMD64", "x86_64") and torch.backends.mkldnn.is_available() \
        and torch.backends.mkldnn.enabled


def letterbox_params(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """``(new_w, new_h, left, top)`` of ultralytics' centred letterbox of an image into ``size`` x ``size``
    (``LetterBox(auto=False)``: each side rounded, padding split with the -0.1 rounding rule)."""
    r = min(size / height, size / width)
    new_w, new_h = max(round(width * r), 1), max(round(height * r), 1)
    return new_w, new_h, round((size - new_w) / 2 - 0.1), round((size - new_h) / 2 - 0.1)


def letterbox_batch(images: list[np.ndarray], size: int) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """RGB uint8 images letterboxed into one ``(B, size, size, 3)`` array (grey 114 padding), as
    ultralytics' ``LetterBox`` does, and each image's ``letterbox_params``."""
    out = np.full((len(images), size, size, 3), 114, dtype=np.uint8)
    params = []
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        new_w, new_h, left, top = letterbox_params(h, w, size)
        if (new_w, new_h) != (w, h):
            im = cv2.resize(im, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        out[i, top:top + new_h, left:left + new_w] = im
        params.append((h, w, new_w, new_h, left, top))
    return out, params


def unletterbox(xyxy: np.ndarray, params: tuple[int, ...]) -> np.ndarray:
    """Boxes in the letterboxed image -> the original image's pixels (ultralytics' ``scale_boxes``)."""
    h, w, new_w, new_h, left, top = params
    out = (xyxy - np.array([left, top, left, top], dtype=xyxy.dtype)) / np.array(
        [new_w / w, new_h / h, new_w / w, new_h / h], dtype=xyxy.dtype)
    return np.clip(out, 0, [w, h, w, h])


class UltraPredictor(Predictor):
    """Batched letterbox inference of an ultralytics detection model on RGB uint8 images.

    ``runner`` replaces the torch forward pass (an exported ONNX / OpenVINO model, see
    ``infer.backends``): it takes the ``(B, 3, S, S)`` float32 batch and returns the raw
    ``(B, 4 + 23, anchors)`` head output; pre- and post-processing stay the same.
    """

    def __init__(self, model: torch.nn.Module | None, cfg: Any, device: str = "cpu", runner: Any = None,
                 frozen: bool = True):
        self.device = torch.device(device)
        self.model = None
        if model is not None:
            self.model = model.to(device).eval()
        if model is not None and frozen:
            # As ultralytics' loader and AutoBackend: no autograd state, in-place activations, channels-last
            # convolutions (oneDNN) on x86 CPUs. Not for a model still training (frozen=False: the EMA).
            self.model.requires_grad_(False)
            for m in self.model.modules():
                if hasattr(m, "inplace"):
                    m.inplace = True
            if self.device.type == "cpu" and channels_last_helps():
                self.model.to(memory_format=torch.channels_last)
        self.runner = runner
        self.imgsz = int(cfg.imgsz)
        self.batch = max(1, int(cfg.predict_batch))
        self.iou, self.max_det, self.agnostic = float(cfg.nms_iou), int(cfg.max_det), bool(cfg.agnostic_nms)
        self.amp = bool(getattr(cfg, "amp", True))  # fp16 autocast on CUDA; ``amp: false`` keeps fp32

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """The raw head output ``(B, 4 + nc, anchors)`` of a normalised batch."""
        if self.runner is not None:
            return torch.as_tensor(self.runner(t))
        with torch.autocast("cuda") if self.device.type == "cuda" and self.amp else contextlib.nullcontext():
            raw = self.model(t)
        return (raw[0] if isinstance(raw, (list, tuple)) else raw).float()

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray], conf: float = 0.001) -> list[Detections]:
        from ultralytics.utils.nms import non_max_suppression

        out: list[Detections] = []
        for start in range(0, len(images), self.batch):
            part = images[start:start + self.batch]
            x, params = letterbox_batch(part, self.imgsz)
            t = torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            raw = self.forward(t)
            dets, keep = non_max_suppression(
                raw, conf, self.iou, agnostic=self.agnostic, max_det=self.max_det, return_idxs=True
            )
            for det, idx, r, prm in zip(dets, keep, raw, params):
                if not len(det):
                    out.append(Detections.empty(with_probs=True))
                    continue
                det = det.float().cpu().numpy().astype(np.float64)
                probs = r[4:, idx.view(-1).long()].T
                out.append(Detections(
                    xyxy=unletterbox(det[:, :4], prm),
                    scores=det[:, 4],
                    labels=det[:, 5].astype(np.int64),
                    probs=probs.float().cpu().numpy().astype(np.float64),
                ))
        return out
