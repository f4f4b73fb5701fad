"""The classifier's settings (``ClassifierConfig``: configs/cls.yaml documents every key), apart from
the training code so that loading a predictor (``train.cls.predictor.load``) needs no trainer."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from cytocore import config
from train.cls import data as cls_data
from train.cls import model as cls_model
from train.stain import check_color_aug
from train.weights import normalise

MODES = ("crop", "full")
SELECT = ("best", "last")


@dataclasses.dataclass
class ClassifierConfig:
    """Settings of the crop / full-image classifier: defaults and meanings in configs/cls.yaml."""

    DEFAULTS: ClassVar[str] = "cls.yaml"
    # the kit's name of each idea (old name -> new name)
    RENAMED: ClassVar[dict[str, str]] = {"weights": "pretrained"}

    mode: str
    backbone: str
    pretrained: str | None  # auto | none | a local file (see the YAML)
    drop_rate: float
    box_size: bool
    imgsz: int
    margin: int
    jitter: float
    epochs: int
    batch: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    loss: str
    focal_gamma: float
    label_smoothing: float
    sampler: str
    balance_power: float
    augment: str
    color_aug: str
    hed_strength: float
    mixup: float
    cutmix: float
    mix_prob: float
    val_detector: str
    select: str
    tta: bool
    conf: float
    device: str
    amp: bool
    workers: int
    cache: bool
    seed: int

    def __post_init__(self) -> None:
        self.pretrained = normalise(self.pretrained)
        for key, valid in (("mode", MODES), ("select", SELECT), ("loss", cls_model.LOSSES),
                           ("sampler", cls_data.SAMPLERS), ("augment", cls_data.AUGMENTS)):
            if getattr(self, key) not in valid:
                raise config.ConfigError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(valid)}")
        try:
            check_color_aug(self.color_aug, self.hed_strength)
            cls_model.check_backbone(self.backbone, self.imgsz)
        except ValueError as exc:
            raise config.ConfigError(str(exc)) from None
        # Ranges, checked before a run folder exists (a bad value must not leave one behind).
        for ok, rule in (
            (self.epochs >= 1, f"epochs={self.epochs}: must be >= 1"),
            (
                self.lr > 0 and self.weight_decay >= 0 and self.warmup_epochs >= 0,
                (
                    f"lr={self.lr}, weight_decay={self.weight_decay}, warmup_epochs={self.warmup_epochs}: "
                    "lr > 0, the others >= 0"
                ),
            ),
            (
                0 <= self.label_smoothing < 1
                and 0 <= self.mix_prob <= 1
                and self.mixup >= 0
                and self.cutmix >= 0,
                "0 <= label_smoothing < 1, 0 <= mix_prob <= 1, mixup and cutmix >= 0 are required",
            ),
            (
                0 <= self.conf <= 1 and 0 <= self.drop_rate < 1,
                "conf in [0, 1] and drop_rate in [0, 1) are required",
            ),
            (self.workers >= 0, f"workers={self.workers}: must be >= 0"),
        ):
            if not ok:
                raise config.ConfigError(rule)
        if self.imgsz < 8 or self.epochs < 0 or self.batch < 1 or self.margin < 0:
            raise config.ConfigError("imgsz >= 8, epochs >= 0, batch >= 1 and margin >= 0 are required")
