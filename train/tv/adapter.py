"""torchvision adapters: Faster R-CNN (ResNet50-FPN v2, MobileNetV3-FPN) and RetinaNet (ResNet50-FPN v2).

Models are built with ``weights=None, weights_backbone=None`` (nothing is ever
downloaded): 24 outputs for Faster R-CNN (background + the 23 classes, label =
class id + 1), 23 for RetinaNet (label = class id). ``imgsz``/``max_size`` are
torchvision's ``min_size``/``max_size`` (it would otherwise upscale every image
to 800 px). ``pretrained`` (``auto``: torchvision's COCO checkpoint in weights/,
from ``make weights``, when present; ``none``; or a local state dict or kit
checkpoint) initialises the model through ``train.weights``: tensors whose shape
differs (the 91-class COCO head) keep their fresh initialisation. Training is the shared loop
of ``train.tv.engine``; prediction returns boxes in input-image pixels
(torchvision maps them back from its resized input). No per-class scores.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cytocore import classes
from cytocore.config import ConfigError
from train.base import Adapter, Detections, Predictor
from train.weights import normalise, resolve
from train.weights.load import load_matching, read_tensors

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TvConfig:
    """Settings of a torchvision detector; configs/tv.yaml holds the default and meaning of each key."""

    DEFAULTS: ClassVar[str] = "tv.yaml"
    # the kit's name of each idea (old name -> new name)
    RENAMED: ClassVar[dict[str, str]] = {"min_lr_ratio": "lrf", "weights": "pretrained"}

    epochs: int
    batch: int
    imgsz: int
    max_size: int
    device: str
    workers: int
    threads: int
    pretrained: str | None  # auto | none | a local file (see the YAML)
    seed: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: float
    lrf: float
    clip_grad: float
    amp: bool
    sync_bn: bool
    augment: str
    balanced: bool
    val_every: int
    conf: float
    nms_iou: float
    max_det: int
    predict_batch: int


    def __post_init__(self) -> None:
        self.pretrained = normalise(self.pretrained)
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer={self.optimizer!r}: valid values are sgd, adamw")
        # Ranges, checked before a run folder exists (a bad value must not leave one behind).
        for ok, rule in (
            (self.epochs >= 1, f"epochs={self.epochs}: must be >= 1"),
            (self.batch >= 1 and self.predict_batch >= 1, "batch and predict_batch must be >= 1"),
            (32 <= self.imgsz <= self.max_size, (f"imgsz={self.imgsz}, max_size={self.max_size}: "
                                                "32 <= imgsz <= max_size")),
            (self.workers >= 0 and self.threads >= 0, "workers and threads must be >= 0"),
            (self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0,
             (f"lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}: "
             "lr > 0, 0 <= momentum < 1, weight_decay >= 0")),
            (self.warmup_epochs >= 0 and 0 < self.lrf <= 1 and self.clip_grad >= 0,
             "warmup_epochs >= 0, 0 < lrf <= 1 and clip_grad >= 0 are required"),
            (self.val_every >= 1, f"val_every={self.val_every}: must be >= 1"),
            (0 <= self.conf <= 1 and 0 < self.nms_iou <= 1, (f"conf={self.conf}, nms_iou={self.nms_iou}: "
                                                            "must be in [0, 1]")),
            (self.max_det >= 1, f"max_det={self.max_det}: must be >= 1"),
        ):
            if not ok:
                raise ConfigError(rule)


@dataclasses.dataclass
class FasterRCNNConfig(TvConfig):
    """TvConfig + the Faster R-CNN sampling sizes that set its CPU cost (configs/tv.yaml: models)."""

    SECTION: ClassVar[str] = "fasterrcnn"

    roi_samples: int
    rpn_proposals: int


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

    def pretrained_key(self, cfg: TvConfig) -> str:
        return f"tv:{self.arch}"

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
        what = f"{self.name} fold {fold_data.fold}"
        init = None if resume else resolve(cfg.pretrained, self.pretrained_key(cfg), what, record=run_dir)
        if init:
            load_matching(model, read_tensors(init, "torchvision"), init, self.name)
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
        load_matching(model, read_tensors(weights, "torchvision"), weights, self.name, strict=True)
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
