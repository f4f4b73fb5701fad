"""The ONE training loop of the torchvision detectors (Faster R-CNN, RetinaNet).

Both obey ``model(images, targets) -> loss_dict`` in train mode, so one
``train_one_epoch`` serves both (in the style of torchvision's
references/detection ``engine.py``): AMP (``torch.autocast`` + ``GradScaler``)
on CUDA, gradient clipping, a per-iteration linear warm-up then cosine learning
rate, a tqdm bar. ``fit`` runs the epochs: it evaluates the challenge score on
the fold's validation images (``evaluate`` callback) every ``val_every`` epochs,
writes ``last.pt`` every epoch and ``best.pt`` when the score improves (the
kit's one checkpoint format, ``train.checkpoint``), appends ``metrics.csv``,
resumes from ``last.pt``, and runs under torchrun with DDP (``train.dist``).
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

from cytocore import resources
from cytocore.config import to_dict
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


def fit(model: torch.nn.Module, cfg: Any, dataset, run_dir: Path, device: str, arch: str,
        evaluate: Callable[[torch.nn.Module], dict[str, float]], resume: bool = False) -> Path:
    """Train ``model`` on ``dataset`` for ``cfg.epochs`` into ``run_dir``; return ``best.pt``."""
    run_dir = Path(run_dir)
    dist.init(device)
    model.to(device)
    net = dist.wrap(model, device)
    weights = dataset.balanced_weights() if cfg.balanced else None
    sampler = dist.make_sampler(dataset, shuffle=True, weights=weights, seed=cfg.seed)
    workers = resources.capped_workers(  # images of about imgsz^2 float32 pixels (CytologIA's are ~360 px)
        cfg.workers, shm_per_worker=resources.loader_shm_bytes(cfg.batch, cfg.imgsz), what="torchvision")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch, sampler=sampler, num_workers=workers,
        collate_fn=collate, pin_memory=device.startswith("cuda"), persistent_workers=workers > 0,
    )
    optimizer = make_optimizer(model, cfg)
    total, warmup = cfg.epochs * len(loader), int(cfg.warmup_epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, warmup, cfg.lrf))
    use_amp = bool(cfg.amp) and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start, best = 0, -math.inf
    if resume:
        start, best = checkpoint.restore(run_dir / checkpoint.LAST, "torchvision", model, optimizer,
                                         scheduler, scaler)
        log.info("resuming %s at epoch %d of %d (best challenge so far %s)", run_dir, start + 1, cfg.epochs,
                 f"{best:.4f}" if checkpoint.scored(best) else "-")
    config, meta = to_dict(cfg), {"arch": arch}
    for epoch in range(start, cfg.epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update(train_one_epoch(net, optimizer, scheduler, scaler, loader, device, epoch, cfg.epochs,
                                   cfg.clip_grad, use_amp))
        row["lr"] = optimizer.param_groups[0]["lr"]
        if dist.is_main():
            if (epoch + 1) % max(1, cfg.val_every) == 0 or epoch + 1 == cfg.epochs:
                row.update(evaluate(model))
                model.train()
            best = checkpoint.keep(run_dir, model, config, epoch, row.get("challenge"), best, optimizer,
                                   scheduler, scaler, **meta)
            runs.append_metrics(run_dir, row)
            log.info("epoch %d/%d: loss %.4f, challenge %s", epoch + 1, cfg.epochs, row["train_loss"],
                     f"{row['challenge']:.4f}" if "challenge" in row else "-")
        dist.barrier()
    if dist.is_main():
        checkpoint.finish(run_dir, model, config, cfg.epochs - 1, **meta)
    return run_dir / checkpoint.BEST
