"""``MODEL=unet``: a segmentation-models-pytorch UNet on box-made masks, one per fold.

    make masks DATA=... [MEDSAM_CKPT=auto|medsam_vit_b.pth]   # masks from boxes (train.unet.masks)
    python -m train --model unet --fold 0 --data DATA epochs=20 imgsz=256

Input: the fold's images stretched to ``imgsz`` and their cached label maps
(``work/masks/<dataset key>/``; made with the classical fallback when absent).
Output: 24 channels (background + the 23 classes), softmax, trained with
cross-entropy + Dice. Predictions: connected components of the foreground
become boxes with class probabilities (``train.unet.post``), optionally refined
by MedSAM (``refine_ckpt``), in original-image pixels.

Each epoch is validated on the fold's validation images at their original size:
foreground Dice and class mIoU against their masks (``seg_dice``, ``seg_miou``),
and the challenge score of the boxes (``train.oof.evaluate``); best.pt keeps
the epoch of the best challenge score. Run folder: config.yaml, metrics.csv,
curves.png, best.pt, last.pt (``--resume`` continues from last.pt).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cytocore import config, resources
from train import checkpoint, runs
from train.base import Adapter
from train.unet.post import N_LABELS, UnetPredictor, confusion, seg_metrics
from train.weights import normalise, resolve
from train.weights.load import load_matching, read_tensors

log = logging.getLogger(__name__)


@dataclasses.dataclass
class UnetConfig:
    """Settings of the UNet; configs/unet.yaml holds the default and meaning of each key."""

    DEFAULTS: ClassVar[str] = "unet.yaml"
    # the kit's name of each idea (old name -> new name)
    RENAMED: ClassVar[dict[str, str]] = {"eval_every": "val_every", "weights": "pretrained"}

    encoder: str
    pretrained: str | None  # auto | none | a local file (see the YAML)
    decoder_channels: list[int]
    imgsz: int
    epochs: int
    batch: int
    lr: float
    weight_decay: float
    dice_weight: float
    fg_thr: float
    min_area: float
    conf: float
    val_every: int
    refine_ckpt: str
    refine_arch: str
    refine_preprocess: str
    device: str
    amp: bool
    workers: int
    seed: int


    def __post_init__(self) -> None:
        self.pretrained = normalise(self.pretrained)
        step = 2 ** len(self.decoder_channels)
        if self.imgsz < step or self.imgsz % step:
            raise config.ConfigError(f"imgsz={self.imgsz} must be a positive multiple of {step}")
        # Ranges, checked before a run folder exists (a bad value must not leave one behind).
        for ok, rule in (
            (self.epochs >= 1, f"epochs={self.epochs}: must be >= 1"),
            (self.lr > 0 and self.weight_decay >= 0 and self.dice_weight >= 0,
             (f"lr={self.lr}, weight_decay={self.weight_decay}, dice_weight={self.dice_weight}: "
             "lr > 0, the others >= 0")),
            (0 <= self.fg_thr < 1 and 0 <= self.min_area < 1 and 0 <= self.conf <= 1,
             "0 <= fg_thr < 1, 0 <= min_area < 1 and conf in [0, 1] are required"),
            (self.workers >= 0, f"workers={self.workers}: must be >= 0"),
        ):
            if not ok:
                raise config.ConfigError(rule)
        if self.epochs < 0 or self.batch < 1 or self.val_every < 1:
            raise config.ConfigError("epochs >= 0, batch >= 1 and val_every >= 1 are required")


ARCH_KEYS = ("encoder", "decoder_channels", "imgsz")  # what a checkpoint fixes for prediction


def build_model(cfg: UnetConfig, init: Path | None = None) -> torch.nn.Module:
    """An untrained UNet (no download: ``encoder_weights=None``), initialised from ``init`` if given:
    a UNet checkpoint (every tensor) or an encoder state dict (e.g. torchvision's ImageNet ResNet)."""
    import segmentation_models_pytorch as smp

    model = smp.Unet(encoder_name=cfg.encoder, encoder_weights=None, encoder_depth=len(cfg.decoder_channels),
                     decoder_channels=tuple(cfg.decoder_channels), in_channels=3, classes=N_LABELS)
    if init:
        state = read_tensors(init, "UNet")
        if any(k.startswith(("encoder.", "decoder.")) for k in state):  # a whole UNet (e.g. a best.pt)
            load_matching(model, state, init, "UNet", strict=True)
        else:
            load_matching(model.encoder, state, init, f"{cfg.encoder} encoder")
    return model


def loss_fn(logits: torch.Tensor, target: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Cross-entropy + ``dice_weight`` x soft multi-class Dice loss (labels present in the batch)."""
    ce = F.cross_entropy(logits, target)
    if dice_weight <= 0:
        return ce
    probs = logits.float().softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (total + 1.0)
    return ce + dice_weight * (1 - dice[present].mean())


def validate(predictor: UnetPredictor, fold_data: Any, masks_dir: Path) -> tuple[dict, pd.DataFrame]:
    """Segmentation metrics (original size) and the challenge score of the validation boxes."""
    from cytocore import predictions
    from cytocore.images import load_rgb
    from train.unet.masks import read_mask

    conf_mat = np.zeros((N_LABELS, N_LABELS), dtype=np.int64)
    frames = []
    names = fold_data.val_images["NAME"].tolist()
    for start in range(0, len(names), predictor.cfg.batch):
        part = names[start:start + predictor.cfg.batch]
        images = [load_rgb(Path(fold_data.images_dir) / n) for n in part]
        probs = predictor.probabilities(images)
        for name, image, p in zip(part, images, probs):
            conf_mat += confusion(read_mask(masks_dir, name), p.argmax(0))
            det = predictor.detect(image, p)
            h, w = image.shape[:2]
            frames.append(predictions.make(name, det.xyxy, det.scores, det.labels, w, h, "unet",
                                           fold_data.fold, probs=det.probs))
    table = predictions.validate(pd.concat(frames, ignore_index=True)) if frames else predictions.empty(True)
    seg = seg_metrics(conf_mat)
    from train.oof import evaluate

    return {"seg_dice": seg["dice"], "seg_miou": seg["miou"], **evaluate(table, fold_data)}, table


def fit(cfg: UnetConfig, fold_data: Any, masks_dir: Path, run_dir: Path, resume: bool = False) -> Path:
    """Train on the fold's training images; validate on its validation images; return best.pt."""
    from tqdm import tqdm

    from train.dist import single_device
    from train.unet.data import MaskDataset

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.save_config(cfg, run_dir)
    device = single_device(cfg.device, "the UNet")
    torch.backends.cudnn.benchmark = device.startswith("cuda")  # fixed imgsz: let cuDNN pick its kernels
    torch.manual_seed(cfg.seed)
    ds = MaskDataset(fold_data.train_images["NAME"].tolist(), fold_data.images_dir, masks_dir, cfg.imgsz,
                     train=True, seed=cfg.seed)
    if len(ds) == 0:
        raise ValueError("no training images in this fold")
    workers = resources.capped_workers(  # float32 image + mask: about 4 channels of imgsz^2
        cfg.workers, shm_per_worker=resources.loader_shm_bytes(cfg.batch, cfg.imgsz, channels=4), what="UNet")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch, shuffle=True, num_workers=workers, drop_last=len(ds) > cfg.batch,
        generator=torch.Generator().manual_seed(cfg.seed), pin_memory=device.startswith("cuda"))
    init = None if resume and (run_dir / runs.LAST).exists() else resolve(
        cfg.pretrained, f"unet:{cfg.encoder}", f"unet fold {fold_data.fold}", record=run_dir)
    model = build_model(cfg, init).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = max(cfg.epochs * len(loader), 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s / total_steps, 1.0))))
    amp = cfg.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start, best = 0, -math.inf
    if resume and (run_dir / checkpoint.LAST).exists():
        start, best = checkpoint.restore(run_dir / checkpoint.LAST, "UNet", model, optimizer, scheduler,
                                         scaler)
        log.info("resuming %s at epoch %d/%d", run_dir, start + 1, cfg.epochs)
    cfg_dict = config.to_dict(cfg)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        ds.epoch = epoch
        total, seen = 0.0, 0
        for x, y in tqdm(loader, desc=f"unet epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast("cuda", enabled=amp):
                loss = loss_fn(model(x), y, cfg.dice_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += loss.item() * len(x)
            seen += len(x)
        row = {"epoch": epoch + 1, "train_loss": total / max(seen, 1)}
        score = None
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
            metrics, _ = validate(UnetPredictor(model, cfg, device), fold_data, masks_dir)
            row.update(metrics)
            score = metrics.get("challenge", float("nan"))
            score = score if np.isfinite(score) else metrics["seg_miou"]
        row.update({"lr": optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - t0})
        runs.append_metrics(run_dir, row)
        best = checkpoint.keep(run_dir, model, cfg_dict, epoch, score, best, optimizer, scheduler, scaler)
        log.info("unet epoch %d/%d: %s", epoch + 1, cfg.epochs,
                 " ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
    return checkpoint.finish(run_dir, model, cfg_dict, cfg.epochs - 1)


class UnetAdapter(Adapter):
    """Registry adapter ``unet``: trains ``UnetConfig`` models per fold; loads predictors."""

    name: ClassVar[str] = "unet"
    config_cls: ClassVar[type] = UnetConfig

    def pretrained_key(self, cfg: UnetConfig) -> str:
        return f"unet:{cfg.encoder}"

    def train(self, cfg: UnetConfig, fold_data: Any, run_dir: Path, resume: bool = False) -> Path:
        from train.unet.masks import ensure_masks

        masks_dir = ensure_masks(fold_data.root)
        log.info("unet fold %s: %d training, %d validation images; masks %s", fold_data.fold,
                 len(fold_data.train_images), len(fold_data.val_images), masks_dir)
        return fit(cfg, fold_data, masks_dir, run_dir, resume)

    def load(self, weights: Path, cfg: Any = None, device: str = "cpu") -> UnetPredictor:
        """A predictor from ``best.pt``: the architecture (encoder, decoder_channels, imgsz)
        comes from the checkpoint, everything else (thresholds, refinement) from ``cfg``."""
        from train.dist import resolve_device

        ckpt = checkpoint.read(Path(weights), "UNet")
        saved = config.from_dict(UnetConfig, config.upgrade(UnetConfig, ckpt["config"], str(weights)),
                                 str(weights))
        use = cfg if isinstance(cfg, UnetConfig) else saved
        use = dataclasses.replace(use, pretrained="none", **{k: getattr(saved, k) for k in ARCH_KEYS})
        model = build_model(use)
        model.load_state_dict(ckpt["model"])
        return UnetPredictor(model, use, resolve_device(device))
