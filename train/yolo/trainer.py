"""Ultralytics training pieces of the kit: an offline trainer and the per-epoch callback.

Imported only when a YOLO model trains (it imports ultralytics, which must come
after ``cytocore.env.apply()``). ``KitTrainer`` is ultralytics' DetectionTrainer
whose AMP check never downloads its reference weights; ``EpochEnd`` writes the
epoch's metrics row, scores the EMA model on the fold's validation images with
the challenge metric (every ``val_every`` epochs and the last: off the GPU's
critical path, the scoring is mostly CPU) and keeps the best epoch as
``<run_dir>/best.pt``; ``BatchProgress`` logs the epoch's batches every 30 s (an epoch of the
real data is minutes on a GPU, hours on a CPU: the job's log, and ``make all``'s heartbeat that
shows its last line, keep moving). All three
are picklable (ultralytics sends the trainer class and its callbacks to its
multi-GPU DDP workers with cloudpickle), and the trainer configures logging in
those workers.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import ultralytics.engine.trainer as trainer_module
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import WEIGHTS_DIR, checks

from train import oof, runs
from train.yolo.predict import UltraPredictor

log = logging.getLogger(__name__)


def offline_check_amp(model: Any) -> bool:
    """Ultralytics' AMP check without its download: the real check only when its
    reference weights are already on disk, else AMP on for CUDA (off on CPU)."""
    if next(model.parameters()).device.type != "cuda":
        return False
    if (WEIGHTS_DIR / "yolo26n.pt").is_file():
        return checks.check_amp(model)
    log.info("AMP check skipped (its reference weights are not on disk and nothing is downloaded); AMP on")
    return True


@contextlib.contextmanager
def no_amp_download():
    original = trainer_module.check_amp
    trainer_module.check_amp = offline_check_amp
    try:
        yield
    finally:
        trainer_module.check_amp = original


def ensure_logging() -> None:
    """Configure logging when nothing has (ultralytics' DDP workers are fresh interpreters that run its
    generated script, not ``python -m train``): else the per-epoch challenge line is lost."""
    if not logging.getLogger().handlers:
        from cytocore.io import setup_logging

        setup_logging()


class KitTrainer(DetectionTrainer):
    """DetectionTrainer whose set-up runs the offline AMP check and, in DDP workers, configures logging;
    with ``UltraVal`` its own validation follows the kit's scoring cadence."""

    kit_final_val = True  # ultralytics' final validation of its best.pt (UltraVal turns it off)

    def __init__(self, *args, **kwargs):
        ensure_logging()
        super().__init__(*args, **kwargs)

    def _setup_train(self, *args, **kwargs):
        with no_amp_download():
            return super()._setup_train(*args, **kwargs)

    def final_eval(self):
        """Ultralytics' final evaluation, or (``kit_final_val`` off) only its checkpoint stripping: the kit
        scores its own best.pt and writes the out-of-fold table after training (a whole pass over the
        fold's validation images less)."""
        if self.kit_final_val:
            return super().final_eval()
        from ultralytics.utils import LOCAL_RANK, RANK
        from ultralytics.utils.torch_utils import strip_optimizer, torch_distributed_zero_first

        with torch_distributed_zero_first(LOCAL_RANK):
            if RANK in {-1, 0}:
                ckpt = strip_optimizer(self.last) if self.last.exists() else {}
                if self.best.exists():
                    strip_optimizer(self.best, updates={"train_results": ckpt.get("train_results")})
        log.info("ultralytics' final validation skipped: the kit scores best.pt itself (select: challenge)")


class UltraVal:
    """``on_train_start`` / ``on_train_epoch_end`` callback: with ``select: challenge`` ultralytics
    validates (mAP, its early-stopping fitness) only on the epochs the kit scores (every ``val_every``
    and the last; ultralytics adds the epoch before a possible early stop) and skips its final
    validation; with ``select: fitness`` (its mAP chooses best.pt) it validates every epoch as usual."""

    def __init__(self, val_every: int, select: str):
        self.val_every, self.select = max(1, int(val_every)), select

    def __call__(self, trainer: Any) -> None:
        if self.select != "challenge":
            return
        trainer.kit_final_val = False
        if hasattr(trainer, "epoch"):  # on_train_start comes before the first epoch is counted
            trainer.args.val = (trainer.epoch + 1) % self.val_every == 0


class BatchProgress:
    """``on_train_batch_end`` callback: at most every ``every_s`` seconds one log line
    ``epoch 3/60: batch 400/1210 (33 %), 0.41 s/batch, ETA 5 min`` (the epoch's; first rank only)."""

    def __init__(self, every_s: float = 30.0):
        self.every_s, self.epoch, self.batches, self.start, self.shown = every_s, -1, 0, 0.0, 0.0

    def __call__(self, trainer: Any) -> None:
        from ultralytics.utils import RANK

        from train import progress

        now = time.monotonic()
        if trainer.epoch != self.epoch:  # a new epoch (or the first after a resume)
            self.epoch, self.batches, self.start, self.shown = trainer.epoch, 0, now, now
        self.batches += 1
        if now - self.shown < self.every_s or RANK not in (-1, 0):
            return
        self.shown = now
        log.info("epoch %d/%d: %s", trainer.epoch + 1, trainer.epochs,
                 progress.batch_text(self.batches, len(trainer.train_loader), now - self.start))


def _shown(value: float) -> str:
    """A score for the log: ``-`` for an epoch that was not scored (never ``-inf``)."""
    return f"{value:.4f}" if math.isfinite(value) else "-"


class EpochEnd:
    """``on_model_save`` callback: the epoch's metrics row, its challenge score, best.pt."""

    def __init__(self, fold_data: Any, run_dir: Path, cfg: Any, model_name: str):
        self.fold_data, self.run_dir, self.cfg, self.model_name = fold_data, Path(run_dir), cfg, model_name
        self.best = runs.best_so_far(run_dir, "challenge" if cfg.select == "challenge" else "ul_fitness")

    def __call__(self, trainer: Any) -> None:
        row: dict[str, Any] = {"epoch": trainer.epoch + 1}
        losses = trainer.label_loss_items(trainer.tloss, prefix="train")
        row.update({k.replace("/", "_"): round(float(v), 5) for k, v in losses.items()})
        # the last epoch is always scored: the final one, or the one early stopping (patience) ends on
        final = row["epoch"] >= trainer.epochs or bool(getattr(trainer, "stop", False))
        if trainer.args.val or final or self.cfg.select != "challenge":  # else ultralytics did not validate
            row.update(ultra_metrics(trainer.metrics, trainer.fitness))
        self.record(row, final, lambda: trainer.ema.ema, str(trainer.device), Path(trainer.last))

    def record(self, row: dict[str, Any], final: bool, model: Any, device: str, weights: Path) -> None:
        """Score epoch ``row["epoch"]`` when due (every ``val_every`` epochs and the ``final`` one) with the
        model ``model()`` on ``device``; ``weights`` (that epoch's checkpoint) becomes best.pt when it
        beats the best so far; the row goes to metrics.csv."""
        scored = row["epoch"] % max(1, self.cfg.val_every) == 0 or final
        if self.cfg.select == "fitness":
            score = row["ul_fitness"]
        elif scored:
            predictor = UltraPredictor(model(), self.cfg, device, frozen=False)
            preds = oof.predict_fold(predictor, self.fold_data, self.model_name, self.cfg.conf)
            row.update(oof.evaluate(preds, self.fold_data))
            score = row["challenge"] if row["challenge"] == row["challenge"] else -1.0
        else:
            score = -math.inf  # not scored this epoch: not a candidate
        if score > self.best or not (self.run_dir / runs.BEST).exists():
            self.best = max(self.best, score)
            tmp = self.run_dir / ".best.pt.tmp"
            shutil.copyfile(weights, tmp)
            os.replace(tmp, self.run_dir / runs.BEST)
        runs.append_metrics(self.run_dir, row)
        log.info("%s", self.epoch_line(row, score, scored))

    def epoch_line(self, row: dict[str, Any], score: float, scored: bool) -> str:
        """``epoch 5/60: loss 3.214 (box 1.10 cls 1.52 dfl 0.59), challenge 0.4312 (best 0.4500), 41 s/epoch,
        ETA 38 min``; an epoch between two scorings says so instead of a score."""
        from train import progress

        parts = {k.removeprefix("train_").removesuffix("_loss"): v for k, v in row.items()
                 if k.startswith("train_") and k.endswith("loss") and v == v}
        loss = (f"loss {sum(parts.values()):.3f} ("
                + " ".join(f"{k} {v:.2f}" for k, v in parts.items()) + "), ") if parts else ""
        if scored or self.cfg.select == "fitness":
            metric = f"{self.cfg.select} {_shown(score)} (best {_shown(self.best)})"
        else:
            metric = (f"{self.cfg.select} not scored this epoch (every {self.cfg.val_every}; "
                      f"best {_shown(self.best)})")
        state = progress.job_state(self.model_name, self.model_name, self.run_dir, self.cfg.epochs)
        rate = f", {state.epoch_s:.0f} s/epoch, ETA {progress.duration(state.eta_s)}" if state.epoch_s else ""
        return f"epoch {row['epoch']}/{self.cfg.epochs}: {loss}{metric}{rate}"

    def finish_from(self, weights: Path, ckpt: dict, device: str) -> bool:
        """Record the final epoch of an ultralytics checkpoint (``last.pt`` as ``save_model`` wrote it) whose
        row the job did not write, killed before the end of ``__call__``; False when there is nothing to do
        (a stripped checkpoint, or its epoch already in metrics.csv)."""
        epoch = int(ckpt.get("epoch", -1))
        table = runs.read_metrics(self.run_dir)
        if epoch < 0 or ("epoch" in table and (table["epoch"] == epoch + 1).any()):
            return False
        metrics = dict(ckpt.get("train_metrics") or {})
        row = {"epoch": epoch + 1, **ultra_metrics(metrics, metrics.pop("fitness", None))}
        model = ckpt.get("ema") or ckpt.get("model")
        log.info("epoch %d: its scoring was cut short; scoring it from %s", epoch + 1, weights)
        self.record(row, True, lambda: model.float(), device, weights)
        return True


def ultra_metrics(metrics: dict | None, fitness: float | None) -> dict[str, float]:
    """Ultralytics' validation metrics of an epoch as metrics.csv columns (``ul_mAP50``...)."""
    row = {}
    for key, value in (metrics or {}).items():
        short = key.replace("metrics/", "ul_").replace("(B)", "").replace("/", "_").replace("-", "_")
        row[short] = round(float(value), 5)
    row["ul_fitness"] = round(float(fitness or 0.0), 5)
    return row
