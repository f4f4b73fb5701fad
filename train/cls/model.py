"""timm classifiers for leukocyte crops: building, local pretrained weights, checkpoints, losses, TTA.

Models are always built with ``timm.create_model(name, pretrained=False)`` (no
hub access); pretrained initialisation comes only from a local file (a state dict
or ``.safetensors``, e.g. timm's ImageNet weights that ``make weights`` puts in
weights/), read through ``train.weights``. A checkpoint (``best.pt`` /
``last.pt``) is a plain dict: ``model`` (state dict), ``config`` (the resolved
classifier config as a dict), ``classes`` (the 23 codes in order), ``epoch``,
``metric`` and, in ``last.pt``, the optimizer/scheduler/scaler states for resume.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cytocore import classes
from train.cls.data import to_tensor

log = logging.getLogger(__name__)

TTA_VIEWS = ("identity", "hflip", "vflip")  # cells have no orientation: flips are label-preserving
LOSSES = ("ce", "focal")


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A kit backbone name for a timm architecture built with arguments of its own (a fixed input size)."""

    arch: str  # the timm model
    kwargs: dict  # timm.create_model keyword arguments it was trained with
    imgsz: int  # the only crop size it takes (its position embedding is for this size)
    mean: tuple[float, float, float]  # the input normalisation it was trained with (checked against
    std: tuple[float, float, float]  # the kit's, train.cls.data.MEAN / STD, before training)
    about: str


# DinoBloom (Koch et al. 2024, arXiv 2404.05022): DINOv2 ViTs fine-tuned on 13 public sets of single blood and
# bone-marrow cells. Their code (marrlab/DinoBloom, get_dino_finetuned_downloaded and get_transforms) builds
# torch hub's dinov2_vits14 with a 257-token position embedding (224 px / patch 14 = 16 x 16, + the class
# token) and feeds 224 px crops normalised with ImageNet's mean and std: timm's vit_small_patch14_dinov2
# at img_size 224 is that network, key for key.
BACKBONES = {
    "dinobloom_s": Backbone("vit_small_patch14_dinov2", {"img_size": 224}, 224, (0.485, 0.456, 0.406),
                            (0.229, 0.224, 0.225), "DinoBloom-S, DINOv2 ViT-S/14 on single blood cells"),
}


def create_backbone(backbone: str, **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model`` of a timm name or a kit name of ``BACKBONES`` (never a download)."""
    import timm

    known = BACKBONES.get(backbone)
    arch, extra = (known.arch, known.kwargs) if known else (backbone, {})
    try:
        return timm.create_model(arch, pretrained=False, **extra, **kwargs)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ValueError(f"backbone {backbone!r}: {exc}") from None


def check_backbone(backbone: str, imgsz: int) -> None:
    """Refuse a crop size or a normalisation a kit backbone of ``BACKBONES`` was not trained with."""
    from train.cls.data import MEAN, STD

    known = BACKBONES.get(backbone)
    if known is None:
        return
    if imgsz != known.imgsz:
        raise ValueError(f"backbone {backbone} takes {known.imgsz} px crops (its position embedding), "
                         f"not imgsz={imgsz}")
    if not (np.allclose(known.mean, MEAN) and np.allclose(known.std, STD)):
        raise ValueError(f"backbone {backbone} was trained with mean {known.mean} and std {known.std}; "
                         "the kit normalises crops otherwise (train.cls.data.MEAN, STD)")


def resolve_device(device: str) -> str:
    """``''``/``auto`` -> ``cuda:0`` when available else ``cpu``; ``0`` -> ``cuda:0``; several ids
    (``0,1``) are refused: the classifier trains on one device (``train.dist.single_device``)."""
    from train.dist import single_device

    return single_device(device, "the classifier")


class SizeAwareClassifier(torch.nn.Module):
    """A timm backbone whose pooled features meet the box size before the head.

    A crop resized to ``imgsz`` loses the cell's absolute size, a strong cue
    (median boxes run from 80 px for Thromb to 190 px for MoB); the head sees
    ``concat(features, train.cls.data.box_size_features(box))`` and gets it back.
    """

    takes_size = True  # forward(x, size): what ``forward`` and the exports look for

    def __init__(self, backbone: torch.nn.Module, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.backbone = backbone  # its classifier removed: returns pooled features
        self.drop = torch.nn.Dropout(drop_rate)
        self.head = torch.nn.Linear(backbone.num_features + 2, num_classes)

    def forward(self, x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        return self.head(self.drop(torch.cat([features, size.to(features.dtype)], dim=1)))


def build_model(backbone: str, num_classes: int = classes.NUM_CLASSES, drop_rate: float = 0.0,
                weights: str | Path | None = None, box_size: bool = False) -> torch.nn.Module:
    """A timm ``backbone`` with a ``num_classes`` head, randomly initialised or from local ``weights``;
    with ``box_size`` a ``SizeAwareClassifier`` around it (the weights go to the backbone)."""
    model = create_backbone(backbone, num_classes=num_classes, drop_rate=0.0 if box_size else drop_rate)
    if weights:
        load_pretrained(model, Path(weights))
    if box_size:
        model.reset_classifier(0)
        return SizeAwareClassifier(model, num_classes, drop_rate)
    return model


def takes_size(model: Any) -> bool:
    """Whether ``model`` (a module or an export runner) needs the crops' box sizes."""
    return bool(getattr(model, "takes_size", False))


def size_aware_state(state: dict[str, Any]) -> bool:
    """Whether a state dict is a ``SizeAwareClassifier``'s (its keys: backbone.*, drop, head.*)."""
    return bool(state) and "head.weight" in state and all(
        k.startswith(("backbone.", "head.")) for k in state)


def forward(model: Any, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of a batch; ``size`` (``(B, 2)`` box-size features) is given to a size-aware model
    only, which refuses to run without it."""
    if takes_size(model):
        if size is None:
            raise ValueError("this classifier takes the box sizes of its crops (box_size: true)")
        return model(x, torch.as_tensor(size, dtype=torch.float32).to(x.device))
    return model(x)


def load_pretrained(model: torch.nn.Module, path: Path) -> None:
    """Load a local state dict into ``model``; the classifier head is skipped when its shape differs.

    Any other missing, unexpected or mis-shaped parameter is a ``WeightsError`` naming the file and
    the first offending keys (wrong backbone, wrong file).
    """
    from train.weights import WeightsError
    from train.weights.load import read_tensors

    path = Path(path)
    state = read_tensors(path, "timm")
    own = model.state_dict()
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_keys = {f"{n}.{p}" for n, m in model.named_modules() if m is head for p, _ in m.named_parameters()}
    # a head of another size is replaced, and so is none (a feature backbone's file, e.g. DinoBloom's)
    skipped = [k for k in head_keys if k not in state or state[k].shape != own[k].shape]
    for k in skipped:
        state.pop(k, None)
    missing = sorted(set(own) - set(state) - set(skipped))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if missing or unexpected or shape:
        found = (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shape))
        parts = [f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
                 for what, keys in found if keys]
        raise WeightsError(path, "weights do not fit this backbone; " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    log.info("loaded pretrained weights %s%s", path,
             f" (its head replaced by a new {classes.NUM_CLASSES}-class one)" if skipped else "")


def soft_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce", gamma: float = 2.0,
              smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy (``ce``) or focal loss (``focal``) against soft targets ``(B, C)``."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")
    if smoothing > 0:
        target = target * (1 - smoothing) + smoothing / target.shape[1]
    logp = F.log_softmax(logits.float(), dim=1)
    if kind == "focal":
        logp = (1 - logp.exp()).pow(gamma) * logp
    return -(target * logp).sum(dim=1).mean()


def tta_views(x: torch.Tensor, tta: bool) -> list[torch.Tensor]:
    """The flip views of a ``(B, 3, H, W)`` batch (identity only without TTA)."""
    if not tta:
        return [x]
    return [x, x.flip(-1), x.flip(-2)]


@torch.no_grad()
def predict_probs(model: torch.nn.Module, crops: np.ndarray, device: str, tta: bool = True,
                  batch: int = 64, sizes: np.ndarray | None = None, amp: bool = True) -> np.ndarray:
    """Softmax class probabilities ``(B, 23)`` of uint8 crops ``(B, H, W, 3)``, mean over flip views;
    ``sizes``: the crops' ``(B, 2)`` box-size features (``train.cls.data.box_size_features``), which
    a size-aware model needs and any other ignores."""
    views = view_probs(model, crops, device, batch, sizes, tta, amp)
    return combine(views, tta)


def combine(views: np.ndarray, tta: bool) -> np.ndarray:
    """float64 probabilities from ``(V, N, 23)`` float32 views: their mean with ``tta``, else the first."""
    if not tta:
        return views[0].astype(np.float64)
    return ((views[0] + views[1] + views[2]) / np.float32(3)).astype(np.float64)


def autocast(device: str, amp: bool):
    """fp16 autocast on CUDA when ``amp``: a config's ``amp: false`` keeps training, validation and
    prediction in fp32 alike."""
    return torch.autocast("cuda", enabled=bool(amp) and str(device).startswith("cuda"))


@torch.no_grad()
def view_probs(model: torch.nn.Module, crops: np.ndarray, device: str, batch: int = 64,
               sizes: np.ndarray | None = None, tta: bool = True, amp: bool = True) -> np.ndarray:
    """``(V, B, 23)`` softmax of uint8 crops under each flip view (identity first; V = 3 with ``tta``,
    else 1), float32 until the caller sums them (see ``predict_probs``); ``amp``: see ``autocast``."""
    model.eval()
    out = []
    for start in range(0, len(crops), batch):
        x = to_tensor(crops[start:start + batch]).to(device)
        size = None if sizes is None else np.asarray(sizes[start:start + batch], np.float32)
        with autocast(device, amp):
            out.append(np.stack([F.softmax(forward(model, v, size).float(), dim=1).cpu().numpy()
                                 for v in tta_views(x, tta)]))
    if not out:
        return np.zeros((len(TTA_VIEWS) if tta else 1, 0, classes.NUM_CLASSES), dtype=np.float32)
    return np.concatenate(out, axis=1)
