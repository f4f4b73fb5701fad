"""``MODEL=unet``: a segmentation-models-pytorch UNet on box-made masks, one per fold.

    make masks DATA=... [MEDSAM_CKPT=medsam_vit_b.pth]     # masks from boxes (train.unet.masks)
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

from cytokit import config
from train import checkpoint, runs
from train.base import Adapter
from train.unet.post import N_LABELS, UnetPredictor, confusion, seg_metrics

log = logging.getLogger(__name__)


@dataclasses.dataclass
class UnetConfig:
    """Settings of the UNet (configs/unet.yaml documents each key)."""

    encoder: str = "resnet18"  # smp encoder name
    weights: str = ""  # local weights: a UNet checkpoint or an encoder state dict
    decoder_channels: list[int] = dataclasses.field(default_factory=lambda: [256, 128, 64, 32, 16])
    imgsz: int = 256  # network input side (multiple of 32)
    epochs: int = 20
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0  # loss = CE + dice_weight * Dice
    fg_thr: float = 0.5  # foreground where 1 - p_background > fg_thr
    min_area: float = 0.005  # smallest component kept, fraction of the image area
    eval_every: int = 1  # epochs between validations (the last epoch is always validated)
    conf: float = 0.001  # boxes scored below are dropped from the out-of-fold predictions
    refine_ckpt: str = ""  # MedSAM checkpoint: refine each predicted box (box -> mask -> tight box)
    refine_arch: str = "vit_b"
    refine_preprocess: str = "medsam"
    device: str = ""  # "" / auto, cpu, 0, cuda:1
    amp: bool = True  # mixed precision on CUDA
    workers: int = 0  # DataLoader workers
    seed: int = 0

    def __post_init__(self) -> None:
        step = 2 ** len(self.decoder_channels)
        if self.imgsz < step or self.imgsz % step:
            raise config.ConfigError(f"imgsz={self.imgsz} must be a positive multiple of {step}")
        if self.epochs < 0 or self.batch < 1 or self.eval_every < 1:
            raise config.ConfigError("epochs >= 0, batch >= 1 and eval_every >= 1 are required")


ARCH_KEYS = ("encoder", "decoder_channels", "imgsz")  # what a checkpoint fixes for prediction


def build_model(cfg: UnetConfig) -> torch.nn.Module:
    """An untrained UNet (no download: ``encoder_weights=None``), then ``cfg.weights`` if given."""
    import segmentation_models_pytorch as smp

    model = smp.Unet(encoder_name=cfg.encoder, encoder_weights=None, encoder_depth=len(cfg.decoder_channels),
                     decoder_channels=tuple(cfg.decoder_channels), in_channels=3, classes=N_LABELS)
    if cfg.weights:
        _load_weights(model, Path(cfg.weights))
    return model


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: UNet weights not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        model.load_state_dict(state["model"])
        return
    target = model.encoder.state_dict()
    fits = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
    if not fits:
        kind = type(model.encoder).__name__
        raise config.ConfigError(f"{path}: neither a UNet checkpoint nor weights of encoder {kind}")
    model.encoder.load_state_dict(fits, strict=False)
    log.info("encoder weights from %s: %d of %d tensors", path, len(fits), len(target))


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
    from cytokit import predictions
    from cytokit.images import load_rgb
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
    loader = torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch, shuffle=True, num_workers=cfg.workers, drop_last=len(ds) > cfg.batch,
        generator=torch.Generator().manual_seed(cfg.seed), pin_memory=device.startswith("cuda"))
    model = build_model(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = max(cfg.epochs * len(loader), 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s / total_steps, 1.0))))
    amp = cfg.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    start, best = 0, -math.inf
    if resume and last_path.exists():
        start, best = checkpoint.restore(last_path, "UNet", model, optimizer, scheduler, scaler)
        log.info("resuming %s at epoch %d/%d", run_dir, start + 1, cfg.epochs)
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
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            metrics, _ = validate(UnetPredictor(model, cfg, device), fold_data, masks_dir)
            row.update(metrics)
            score = metrics.get("challenge", float("nan"))
            score = score if np.isfinite(score) else metrics["seg_miou"]
            if np.isfinite(score) and score > best:
                best = score
                checkpoint.save(best_path, model, config.to_dict(cfg), epoch, metric=float(score))
        row.update({"lr": optimizer.param_groups[0]["lr"], "time": time.perf_counter() - t0})
        runs.append_metrics(run_dir, row)
        checkpoint.save(last_path, model, config.to_dict(cfg), epoch, best=best, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), scaler=scaler.state_dict())
        log.info("unet epoch %d/%d: %s", epoch + 1, cfg.epochs,
                 " ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
    if not best_path.exists():
        checkpoint.save(best_path, model, config.to_dict(cfg), -1, metric=float("nan"))
    return best_path


class UnetAdapter(Adapter):
    """Registry adapter ``unet``: trains ``UnetConfig`` models per fold; loads predictors."""

    name: ClassVar[str] = "unet"
    config_cls: ClassVar[type] = UnetConfig

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
        saved = config.from_dict(UnetConfig, ckpt["config"], str(weights))
        use = cfg if isinstance(cfg, UnetConfig) else saved
        use = dataclasses.replace(use, weights="", **{k: getattr(saved, k) for k in ARCH_KEYS})
        model = build_model(use)
        model.load_state_dict(ckpt["model"])
        return UnetPredictor(model, use, resolve_device(device))
