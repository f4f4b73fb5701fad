"""torchvision adapters: Faster R-CNN (ResNet50-FPN v2, MobileNetV3-FPN) and RetinaNet (ResNet50-FPN v2).

Models are built with ``weights=None, weights_backbone=None`` (nothing is ever
downloaded): 24 outputs for Faster R-CNN (background + the 23 classes, label =
class id + 1), 23 for RetinaNet (label = class id). ``imgsz``/``max_size`` are
torchvision's ``min_size``/``max_size`` (it would otherwise upscale every image
to 800 px). ``weights=path`` initialises from a local state dict (or one of the
kit's checkpoints), loaded with ``torch.load(weights_only=True)``; tensors whose
shape differs (a COCO head) are skipped and counted. Training is the shared loop
of ``train.tv.engine``; prediction returns boxes in input-image pixels
(torchvision maps them back from its resized input). No per-class scores.
"""
from __future__ import annotations

import dataclasses
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cytokit import classes
from cytokit.config import ConfigError
from train.base import Adapter, Detections, Predictor

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TvConfig:
    """Settings of a torchvision detector (configs/fasterrcnn*.yaml, configs/retinanet.yaml)."""

    epochs: int = 24
    batch: int = 8
    imgsz: int = 384
    max_size: int = 640
    device: str = ""
    workers: int = 4
    threads: int = 0
    weights: Path | None = None
    seed: int = 0
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    clip_grad: float = 10.0
    amp: bool = True
    sync_bn: bool = False
    augment: str = "default"
    balanced: bool = False
    val_every: int = 1
    conf: float = 0.001
    nms_iou: float = 0.5
    max_det: int = 30
    predict_batch: int = 8

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer={self.optimizer!r}: valid values are sgd, adamw")


@dataclasses.dataclass
class FasterRCNNConfig(TvConfig):
    """TvConfig + the Faster R-CNN sampling sizes that set its CPU cost (configs/fasterrcnn*.yaml)."""

    roi_samples: int = 128
    rpn_proposals: int = 500


def build_model(arch: str, cfg: TvConfig):
    """An untrained torchvision detector of ``arch`` sized for the kit's 23 classes."""
    from torchvision.models import detection

    common = dict(weights=None, weights_backbone=None, min_size=cfg.imgsz, max_size=cfg.max_size)
    if arch.startswith("fasterrcnn"):
        rpn = getattr(cfg, "rpn_proposals", None)
        sizes = {} if rpn is None else dict(
            box_batch_size_per_image=cfg.roi_samples, rpn_pre_nms_top_n_train=2 * rpn,
            rpn_pre_nms_top_n_test=2 * rpn, rpn_post_nms_top_n_train=rpn, rpn_post_nms_top_n_test=rpn)
        return getattr(detection, arch)(
            num_classes=classes.NUM_CLASSES + 1, box_score_thresh=cfg.conf, box_nms_thresh=cfg.nms_iou,
            box_detections_per_img=cfg.max_det, **sizes, **common)
    if arch.startswith("retinanet"):
        return getattr(detection, arch)(
            num_classes=classes.NUM_CLASSES, score_thresh=cfg.conf, nms_thresh=cfg.nms_iou,
            detections_per_img=cfg.max_det, **common)
    raise ConfigError(f"unknown torchvision architecture {arch!r}")


def read_state_dict(path: Path) -> dict:
    """A state dict from ``path``: a plain one, or the ``model`` entry of a kit checkpoint."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights={path}: no such file (weights are local files; nothing is downloaded)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ConfigError(f"{path}: not a torchvision state dict readable with weights_only=True "
                          f"(an ultralytics .pt or another format?): {str(exc).splitlines()[0]}") from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    tensors = isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())
    if not tensors:
        raise ConfigError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    return state


def load_matching(model, state: dict, source: Path, strict: bool) -> None:
    """Copy the tensors of ``state`` whose name and shape fit ``model``; ``strict`` requires all of them."""
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if strict and len(fits) != len(own):
        missing = [k for k in own if k not in fits][:5]
        raise ConfigError(f"{source}: does not fit this model ({len(own) - len(fits)} tensors missing or "
                          f"of another shape, e.g. {', '.join(missing)}); wrong model name?")
    if not fits:
        raise ConfigError(f"{source}: no tensor fits this model's parameters; wrong file or model?")
    model.load_state_dict(fits, strict=False)
    log.info("%s: loaded %d of %d tensors (%d skipped)", source, len(fits), len(own), len(state) - len(fits))


class TvPredictor(Predictor):
    """Batched inference of a torchvision detector on RGB uint8 images (input-image pixels out)."""

    def __init__(self, model, cfg: TvConfig, device: str, label_offset: int):
        import torch

        self.model = model.to(device).eval()
        self.device, self.offset = torch.device(device), label_offset
        self.batch = max(1, int(cfg.predict_batch))

    def _set_conf(self, conf: float) -> None:
        target = getattr(self.model, "roi_heads", self.model)
        target.score_thresh = conf

    def predict(self, images: list[np.ndarray], conf: float = 0.001) -> list[Detections]:
        import torch

        self._set_conf(conf)
        out: list[Detections] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch):
                part = [torch.from_numpy(np.require(im, np.uint8, ["C", "W"])).to(self.device)
                        .permute(2, 0, 1).float().div_(255.0) for im in images[start:start + self.batch]]
                for det in self.model(part):
                    out.append(Detections(
                        xyxy=det["boxes"].float().cpu().numpy().astype(np.float64),
                        scores=det["scores"].float().cpu().numpy().astype(np.float64),
                        labels=det["labels"].cpu().numpy().astype(np.int64) - self.offset,
                    ))
        return out


class TvAdapter(Adapter):
    """Trains a torchvision detector ``arch`` with the shared loop of ``train.tv.engine``."""

    arch: str = ""
    label_offset: int = 1
    config_cls = TvConfig

    def build(self, cfg: TvConfig):
        return build_model(self.arch, cfg)

    def train(self, cfg: TvConfig, fold_data: Any, run_dir: Path, resume: bool = False) -> Path:
        import torch

        from train import dist, oof
        from train.tv import engine as tv_engine
        from train.tv.data import CocoDetection

        device = dist.resolve_device(cfg.device)
        if device == "cpu":
            log.info("training on CPU with %d thread(s)", dist.set_cpu_threads(cfg.threads))
        if len(dist.gpu_ids(cfg.device)) > 1 and device != "cpu" and dist.world_size() == 1:
            raise ConfigError(f"device={cfg.device}: several GPUs need one process each; run "
                              f"`torchrun --nproc_per_node {len(dist.gpu_ids(cfg.device))} -m train ...`")
        torch.manual_seed(cfg.seed)
        model = self.build(cfg)
        if cfg.weights and not resume:
            load_matching(model, read_state_dict(cfg.weights), Path(cfg.weights), strict=False)
        if cfg.sync_bn and dist.world_size() > 1 and device.startswith("cuda"):
            # built without weights, the backbones train ordinary BatchNorm: per-GPU batches are small
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        dataset = CocoDetection(fold_data.coco_train, fold_data.export_images_dir, self.label_offset,
                                cfg.augment)

        def evaluate(net) -> dict[str, float]:
            predictor = TvPredictor(net, cfg, device, self.label_offset)
            preds = oof.predict_fold(predictor, fold_data, self.name, cfg.conf, progress=False)
            return oof.evaluate(preds, fold_data)

        return tv_engine.fit(model, cfg, dataset, run_dir, device, self.arch, evaluate, resume=resume)

    def load(self, weights: Path, cfg: TvConfig, device: str = "cpu") -> Predictor:
        from train.dist import resolve_device

        model = self.build(cfg)
        load_matching(model, read_state_dict(weights), Path(weights), strict=True)
        return TvPredictor(model, cfg, resolve_device(device), self.label_offset)


class FasterRCNNAdapter(TvAdapter):
    """Faster R-CNN, ResNet50-FPN v2 backbone."""

    name = "fasterrcnn"
    arch = "fasterrcnn_resnet50_fpn_v2"
    config_cls = FasterRCNNConfig


class FasterRCNNMobileAdapter(TvAdapter):
    """Faster R-CNN, MobileNetV3-Large-FPN backbone: the CPU-friendly variant."""

    name = "fasterrcnn_mobilenet"
    arch = "fasterrcnn_mobilenet_v3_large_fpn"
    config_cls = FasterRCNNConfig


class RetinaNetAdapter(TvAdapter):
    """RetinaNet, ResNet50-FPN v2 backbone (focal loss; 23 outputs, no background)."""

    name = "retinanet"
    arch = "retinanet_resnet50_fpn_v2"
    label_offset = 0
