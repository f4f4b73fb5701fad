"""Prediction with an ultralytics detection model: letterbox, forward, NMS, original pixels.

``UltraPredictor`` keeps the raw per-class scores of every box NMS keeps (the
``p_<CODE>`` columns of the prediction table: independent sigmoid scores, their
maximum is the box score). Checkpoints load with ``torch.load(weights_only=True)``
through ultralytics' allow-list of its own classes; anything else is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

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


class UltraPredictor(Predictor):
    """Batched letterbox inference of an ultralytics detection model on RGB uint8 images."""

    def __init__(self, model: torch.nn.Module, cfg: Any, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.imgsz = int(cfg.imgsz)
        self.batch = max(1, int(cfg.predict_batch))
        self.iou, self.max_det, self.agnostic = float(cfg.nms_iou), int(cfg.max_det), bool(cfg.agnostic_nms)
        self.stride = int(max(getattr(model, "stride", torch.tensor([32])).max().item(), 32))

    @torch.no_grad()
    def predict(self, images: list[np.ndarray], conf: float = 0.001) -> list[Detections]:
        from ultralytics.data.augment import LetterBox
        from ultralytics.utils.nms import non_max_suppression
        from ultralytics.utils.ops import scale_boxes

        size = self.imgsz
        letterbox = LetterBox((size, size), auto=False, stride=self.stride)
        out: list[Detections] = []
        for start in range(0, len(images), self.batch):
            part = images[start:start + self.batch]
            x = np.stack([letterbox(image=np.ascontiguousarray(im)) for im in part])
            t = torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            with torch.autocast("cuda", enabled=self.device.type == "cuda"):
                raw = self.model(t)
            raw = (raw[0] if isinstance(raw, (list, tuple)) else raw).float()
            dets, keep = non_max_suppression(
                raw, conf, self.iou, agnostic=self.agnostic, max_det=self.max_det, return_idxs=True
            )
            for image, det, idx, r in zip(part, dets, keep, raw):
                if not len(det):
                    out.append(Detections.empty(with_probs=True))
                    continue
                xyxy = scale_boxes((size, size), det[:, :4].clone(), image.shape[:2])
                probs = r[4:, idx.view(-1).long()].T
                out.append(Detections(
                    xyxy=xyxy.cpu().numpy().astype(np.float64),
                    scores=det[:, 4].cpu().numpy().astype(np.float64),
                    labels=det[:, 5].cpu().numpy().astype(np.int64),
                    probs=probs.float().cpu().numpy().astype(np.float64),
                ))
        return out
