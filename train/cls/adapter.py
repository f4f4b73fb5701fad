"""``MODEL=cls``: the second-stage leukocyte classifier (timm backbone on crops), one per fold.

    python -m train --model cls --fold 0 --data DATA backbone=resnet18 imgsz=128

Trains on the fold's GT boxes cropped with a margin (``mode: crop``), or on
the whole images of single-cell images (``mode: full``, the full-image
classifier). Validation crops come from a detector's out-of-fold boxes matched
to their GT box by best GIoU (``val_detector``, when its oof.parquet exists),
otherwise from the GT boxes. The best epoch is chosen by validation macro-F1.
Run folder: config.yaml, metrics.csv, best.pt, last.pt (``--resume`` continues
from last.pt). At inference ``infer.blend`` classifies the fused boxes' crops.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from cytocore import classes, config, predictions
from train import checkpoint
from train.base import Adapter
from train.cls import data as cls_data
from train.cls import model as cls_model
from train.cls.config import MODES, SELECT, ClassifierConfig  # noqa: F401 (the adapter's config, re-exported)
from train.cls.predictor import ClassifierPredictor, load_predictor
from train.weights import resolve

log = logging.getLogger(__name__)
def training_tables(cfg: ClassifierConfig, fold_data: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) box tables: NAME, x1..y2, class (+ width, height) per crop."""
    train, val = fold_data.train_boxes, fold_data.val_boxes
    if cfg.mode == "full":
        return cls_data.single_cell_table(train), cls_data.single_cell_table(val)
    if cfg.val_detector:
        oof = fold_data.preds_dir(cfg.val_detector) / predictions.OOF_FILE
        if oof.exists():
            from cytocore.submission import one_view

            matched = cls_data.match_truth(val, one_view(predictions.read(oof)))
            log.info("validation crops: %s boxes matched to GT by best GIoU (%d boxes, mean GIoU %.3f)",
                     cfg.val_detector, len(matched), matched["giou"].mean() if len(matched) else float("nan"))
            return train, matched
        log.warning("%s not found: validating on GT crops instead of %s's boxes", oof, cfg.val_detector)
    return train, val


def _schedule(cfg: ClassifierConfig, steps_per_epoch: int):
    """Linear warm-up then cosine decay to 1% of lr, per optimisation step."""
    total = max(cfg.epochs * steps_per_epoch, 1)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(total - warm, 1)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def evaluate(model: torch.nn.Module, loader, device: str, amp: bool = True) -> dict[str, float]:
    """Validation loss, accuracy, balanced accuracy and macro-F1 over a crop loader (``amp``: fp16
    autocast on CUDA, as in training)."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    model.eval()
    losses, preds, labels = [], [], []
    with torch.no_grad():
        for x, size, y in loader:
            with cls_model.autocast(device, amp):
                logits = cls_model.forward(model, x.to(device), size).float()
            losses.append(torch.nn.functional.cross_entropy(logits, y.to(device), reduction="sum").item())
            preds.append(logits.argmax(1).cpu().numpy())
            labels.append(y.numpy())
    if not labels:
        return dict.fromkeys(("val_loss", "val_acc", "val_bacc", "val_f1"), float("nan"))
    y_true, y_pred = np.concatenate(labels), np.concatenate(preds)
    codes = np.asarray(classes.CLASSES)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected early on
        warnings.simplefilter("ignore", UserWarning)
        bacc = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "val_loss": sum(losses) / len(y_true),
        "val_acc": float((y_true == y_pred).mean()),
        "val_bacc": bacc,
        # the metric's macro-F1: over the union of true and predicted labels
        "val_f1": float(f1_score(codes[y_true], codes[y_pred], average="macro", zero_division=0)),
    }


def seed_epoch(seed: int, epoch: int, dataset: cls_data.CropDataset, sampler: Any,
               loader_rng: torch.Generator) -> np.random.Generator:
    """Seed every random stream of epoch ``epoch`` from (``seed``, ``epoch``): torch's (dropout), the
    sampler's draws, the loader's shuffling and worker seeds, the crops' jitter and augmentation
    (``CropDataset.generator``); returns the batch-mixing generator. A resumed run draws exactly what the
    straight run drew in the same epoch (``cls_data.epoch_seed``), with nothing to save in last.pt."""
    torch.manual_seed(cls_data.epoch_seed(seed, epoch, 0))
    loader_rng.manual_seed(cls_data.epoch_seed(seed, epoch, 1))
    if sampler is not None:
        sampler.generator.manual_seed(cls_data.epoch_seed(seed, epoch, 2))
    dataset.set_epoch(epoch)
    return np.random.default_rng(cls_data.epoch_seed(seed, epoch, 3))


def fit(cfg: ClassifierConfig, train_table: pd.DataFrame, val_table: pd.DataFrame, images_dir: Path,
        run_dir: Path, resume: bool = False) -> Path:
    """Train a classifier on crops of ``train_table``; select on ``val_table``; return best.pt."""
    from tqdm import tqdm

    from train import progress, runs

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.save_config(cfg, run_dir)
    device = cls_model.resolve_device(cfg.device)
    torch.backends.cudnn.benchmark = device.startswith("cuda")  # fixed imgsz: let cuDNN pick its kernels
    torch.manual_seed(cfg.seed)
    full, t0 = cfg.mode == "full", time.perf_counter()
    budget = cls_data.cache_budget() if cfg.cache else 0
    ds_train = cls_data.CropDataset(train_table, images_dir, cfg.imgsz, cfg.margin, cfg.augment,
                                    cfg.jitter, full, cfg.seed, budget, cfg.color_aug, cfg.hed_strength)
    ds_val = cls_data.CropDataset(val_table, images_dir, cfg.imgsz, cfg.margin, "none", 0.0, full, cfg.seed,
                                  max(budget - ds_train.cached_bytes, 0) if cfg.cache else 0)
    if cfg.cache:
        log.info("crop cache: %.2f GiB of pixels of %d crops in %.1f s", (ds_train.cached_bytes
                 + ds_val.cached_bytes) / 2**30, len(ds_train) + len(ds_val), time.perf_counter() - t0)
    if len(ds_train) == 0:
        raise ValueError(f"no training crops ({cfg.mode} mode) in this fold")
    sampler = cls_data.make_sampler(ds_train.labels, cfg.sampler, cfg.balance_power, cfg.seed)
    workers = cls_data.loader_workers(cfg.workers, cfg.batch, cfg.imgsz)
    loader_args = {"batch_size": cfg.batch, "num_workers": workers, "pin_memory": device.startswith("cuda")}
    loader_rng = torch.Generator()  # shuffling (random sampler) and the workers' torch seeds
    train_loader = torch.utils.data.DataLoader(ds_train, sampler=sampler, shuffle=sampler is None,
                                               drop_last=len(ds_train) > cfg.batch, generator=loader_rng,
                                               **loader_args)
    val_loader = torch.utils.data.DataLoader(ds_val, shuffle=False, **loader_args)

    init = None if resume and (run_dir / runs.LAST).exists() else resolve(
        cfg.pretrained, f"cls:{cfg.backbone}", f"{cfg.mode} classifier {cfg.backbone}", record=run_dir)
    model = cls_model.build_model(cfg.backbone, drop_rate=cfg.drop_rate, weights=init, box_size=cfg.box_size)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, len(train_loader)))
    amp = cfg.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start, best = 0, -math.inf
    last_path, best_path = run_dir / runs.LAST, run_dir / runs.BEST
    if resume and last_path.exists():
        start, best = checkpoint.restore(last_path, "classifier", model, optimizer, scheduler, scaler)
        log.info("resuming %s at epoch %d/%d", run_dir, start + 1, cfg.epochs)
    cfg_dict = config.to_dict(cfg)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        rng = seed_epoch(cfg.seed, epoch, ds_train, sampler, loader_rng)
        model.train()
        total, seen = 0.0, 0
        bar = tqdm(train_loader, desc=f"cls epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None)
        every = progress.Every(30.0)  # without a terminal (a job's log): one line every 30 s instead
        for step, (x, size, y) in enumerate(bar, 1):
            if bar.disable and every.due():
                log.info("cls epoch %d/%d: %s", epoch + 1, cfg.epochs,
                         progress.batch_text(step, len(train_loader), every.elapsed()))
            x, size = x.to(device, non_blocking=True), size.to(device, non_blocking=True)
            target = torch.nn.functional.one_hot(y, classes.NUM_CLASSES).float().to(device)
            if rng.random() < cfg.mix_prob:  # box sizes mixed as the labels are (the same share)
                x, mixed = cls_data.mix_batch(x, torch.cat([target, size], 1), cfg.mixup, cfg.cutmix, rng)
                target, size = mixed[:, :classes.NUM_CLASSES], mixed[:, classes.NUM_CLASSES:]
            with cls_model.autocast(device, amp):
                logits = cls_model.forward(model, x, size)
            loss = cls_model.soft_loss(logits, target, cfg.loss, cfg.focal_gamma, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += loss.item() * len(x)
            seen += len(x)
        val = evaluate(model, val_loader, device, amp)
        row = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), **val,
               "lr": optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - t0}
        runs.append_metrics(run_dir, row)
        score = val["val_f1"] if np.isfinite(val["val_f1"]) else -val["val_loss"]
        if cfg.select == "last" or not np.isfinite(score) or score > best:
            best = score if np.isfinite(score) else best
            checkpoint.save(best_path, model, cfg_dict, epoch, metric=val["val_f1"])
        checkpoint.save(last_path, model, cfg_dict, epoch, metric=val["val_f1"], best=best,
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        scaler=scaler.state_dict())
        log.info("cls epoch %d/%d: loss %.4f val macro-F1 %.4f acc %.4f", epoch + 1, cfg.epochs,
                 row["train_loss"], val["val_f1"], val["val_acc"])
    if not best_path.exists():
        checkpoint.save(best_path, model, cfg_dict, -1, metric=float("nan"))
    return best_path


class ClassifierAdapter(Adapter):
    """Registry adapter ``cls``: trains ``ClassifierConfig`` models per fold; loads predictors."""

    name: ClassVar[str] = "cls"
    config_cls: ClassVar[type] = ClassifierConfig

    def pretrained_key(self, cfg: ClassifierConfig) -> str:
        return f"cls:{cfg.backbone}"

    def train(self, cfg: ClassifierConfig, fold_data: Any, run_dir: Path, resume: bool = False) -> Path:
        train_table, val_table = training_tables(cfg, fold_data)
        log.info("cls fold %s: %d training and %d validation crops (%s mode)",
                 fold_data.fold, len(train_table), len(val_table), cfg.mode)
        return fit(cfg, train_table, val_table, fold_data.images_dir, run_dir, resume)

    def load(self, weights: Path, cfg: Any = None, device: str = "cpu") -> ClassifierPredictor:
        """A predictor from ``best.pt``. The architecture (backbone, mode, imgsz, margin) always
        comes from the checkpoint; ``cfg`` (a config, a dict of keys or a YAML path) may
        override only ``tta`` and ``batch``."""
        return load_predictor(weights, cfg, device)

    def oof_predictions(self, predictor: ClassifierPredictor, cfg: ClassifierConfig, fold_data: Any):
        """``val_detector``'s out-of-fold boxes with this classifier's classes (``train.cls.oof``)."""
        from train.cls import oof

        return oof.oof_table(predictor, cfg, fold_data, self.name)


class FullImageAdapter(ClassifierAdapter):
    """Registry adapter ``cls_full``: the same classifier, ``mode: full`` by default
    (configs/cls.yaml, models.cls_full), in its own run folder so it never overwrites ``cls``."""

    name: ClassVar[str] = "cls_full"
