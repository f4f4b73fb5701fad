"""The ONE training loop of the torchvision detectors (Faster R-CNN, RetinaNet).

Both obey ``model(images, targets) -> loss_dict`` in train mode, so one
``train_one_epoch`` serves both (in the style of torchvision's
references/detection ``engine.py``): AMP (``torch.autocast`` + ``GradScaler``)
on CUDA, gradient clipping, a per-iteration linear warm-up then cosine learning
rate, a tqdm bar. ``fit`` runs the epochs: it evaluates the challenge score on
the fold's validation images (``evaluate`` callback), writes ``last.pt``
(model, optimizer, scheduler, scaler, epoch, best score, config) every epoch and
``best.pt`` when the score improves, appends ``metrics.csv``, resumes from
``last.pt``, and runs under torchrun with DDP (``train.dist``).
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cytokit import classes
from cytokit.config import to_dict
from cytokit.io import atomic_write
from train import checkpoint, dist, runs
from train.tv.data import collate

log = logging.getLogger(__name__)


def lr_factor(it: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier at iteration ``it``: linear warm-up from 0.001, then cosine down to
    ``min_ratio``."""
    if it < warmup:
        return 0.001 + (1 - 0.001) * it / warmup
    progress = min(1.0, (it - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_one_epoch(model, optimizer, scheduler, scaler, loader, device: str, epoch: int, epochs: int,
                    clip_grad: float = 0.0, use_amp: bool = False) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each loss (``train_<name>``) and ``train_loss``."""
    model.train()
    sums: dict[str, float] = defaultdict(float)
    seen = 0
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not dist.is_main(),
               leave=False)
    for images, targets in bar:
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with torch.autocast(device_type="cuda", enabled=use_amp):
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            parts = {k: round(float(v), 4) for k, v in loss_dict.items()}
            raise FloatingPointError(f"epoch {epoch + 1}: loss is {float(loss)} ({parts}); stopping")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        seen += 1
        sums["train_loss"] += float(loss.detach())
        for k, v in loss_dict.items():
            sums[f"train_{k}"] += float(v.detach())
        bar.set_postfix(loss=f"{sums['train_loss'] / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    return {k: v / max(seen, 1) for k, v in sums.items()}


def save_checkpoint(path: Path, **state: Any) -> Path:
    """``torch.save`` of a dict of tensors and plain values, atomically (loads with weights_only=True)."""
    with atomic_write(Path(path), suffix=".tmp.pt") as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def fit(model: torch.nn.Module, cfg: Any, dataset, run_dir: Path, device: str, arch: str,
        evaluate: Callable[[torch.nn.Module], dict[str, float]], resume: bool = False) -> Path:
    """Train ``model`` on ``dataset`` for ``cfg.epochs`` into ``run_dir``; return ``best.pt``."""
    run_dir = Path(run_dir)
    dist.init(device)
    model.to(device)
    net = dist.wrap(model, device)
    weights = dataset.balanced_weights() if cfg.balanced else None
    sampler = dist.make_sampler(dataset, shuffle=True, weights=weights, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch, sampler=sampler, num_workers=cfg.workers,
        collate_fn=collate, pin_memory=device.startswith("cuda"), persistent_workers=cfg.workers > 0,
    )
    optimizer = make_optimizer(model, cfg)
    total, warmup = cfg.epochs * len(loader), int(cfg.warmup_epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, warmup, cfg.min_lr_ratio))
    use_amp = bool(cfg.amp) and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start, best = 0, -math.inf
    if resume:
        ckpt = load_checkpoint(run_dir / "last.pt")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        checkpoint.load_scaler(scaler, ckpt.get("scaler"), run_dir / "last.pt")
        start, best = int(ckpt["epoch"]), float(ckpt["best"])
        log.info("resuming %s at epoch %d of %d (best challenge so far %.4f)", run_dir, start + 1,
                 cfg.epochs, best)
    meta = {"arch": arch, "config": to_dict(cfg), "classes": list(classes.CLASSES)}
    for epoch in range(start, cfg.epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update(train_one_epoch(net, optimizer, scheduler, scaler, loader, device, epoch, cfg.epochs,
                                   cfg.clip_grad, use_amp))
        row["lr"] = optimizer.param_groups[0]["lr"]
        if dist.is_main():
            last_epoch = epoch + 1 == cfg.epochs
            if (epoch + 1) % max(1, cfg.val_every) == 0 or last_epoch:
                row.update(evaluate(model))
                model.train()
            score = row.get("challenge", math.nan)
            score = -1.0 if score != score and "challenge" in row else score
            if score > best or not (run_dir / "best.pt").exists():
                best = max(best, score) if score == score else best
                save_checkpoint(run_dir / "best.pt", model=model.state_dict(), epoch=epoch + 1,
                                score=float(score), **meta)
            save_checkpoint(run_dir / "last.pt", model=model.state_dict(), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), epoch=epoch + 1,
                            best=float(best), **meta)
            runs.append_metrics(run_dir, row)
            log.info("epoch %d/%d: loss %.4f, challenge %s", epoch + 1, cfg.epochs, row["train_loss"],
                     f"{row['challenge']:.4f}" if "challenge" in row else "-")
        dist.barrier()
    return run_dir / "best.pt"
