"""Ultralytics adapters: YOLOv5u, YOLOv8 and YOLO11, trained through the ultralytics API.

A model is built from its yaml (``yolov8n.yaml``: never a download) and initialised
from ``pretrained`` (``auto``: ``weights/yolov8n.pt``, the COCO checkpoint of ``make
weights``, when present; ``none``; or a local ``.pt``): ultralytics copies every tensor
whose shape fits, so the 80-class COCO head gives way to a fresh 23-class one. It is
trained on the fold's generated ``data.yaml``. Ultralytics' own outputs (args.yaml, results.csv,
plots, weights/) land in ``<run_dir>/ultralytics/``; every ``val_every`` epochs and
at the last a callback scores the EMA model on the fold's validation images with the
challenge metric and keeps the best scored epoch as ``<run_dir>/best.pt``
(``select: fitness`` keeps ultralytics' mAP choice instead). ``<run_dir>/last.pt``
links to ultralytics' ``last.pt``, which ``--resume`` continues; a run killed after
its last epoch (ultralytics: "nothing to resume") is finished from it (``finish``).

``yolov5`` is ultralytics' YOLOv5u (anchor-free head, ``yolov5nu.yaml``):
weights trained with the original yolov5 repository do not load.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any, ClassVar

from cytocore import classes, env, paths, resources
from cytocore.config import ConfigError
from train.base import Adapter, Predictor
from train.stain import check_color_aug
from train.weights import WeightsError, normalise, resolve

log = logging.getLogger(__name__)


@dataclasses.dataclass
class UltraConfig:
    """Settings of an ultralytics detector; configs/yolo.yaml holds the default and meaning of each key."""

    DEFAULTS: ClassVar[str] = "yolo.yaml"
    # the kit's name of each idea (old name -> new name)
    RENAMED: ClassVar[dict[str, str]] = {"lr0": "lr", "iou": "nms_iou", "weights": "pretrained"}

    size: str
    epochs: int
    imgsz: int
    batch: int
    device: str
    workers: int
    pretrained: str | None  # auto | none | a local file (see the YAML)
    seed: int
    optimizer: str
    lr: float
    lrf: float
    cos_lr: bool
    warmup_epochs: float
    patience: int
    mosaic: float
    close_mosaic: int
    mixup: float
    fliplr: float
    flipud: float
    degrees: float
    translate: float
    scale: float
    hsv_h: float
    hsv_s: float
    hsv_v: float
    color_aug: str
    hed_strength: float
    amp: bool
    cache: bool
    plots: bool
    select: str
    val_every: int
    conf: float
    nms_iou: float
    agnostic_nms: bool
    max_det: int
    predict_batch: int
    extra: dict


    def __post_init__(self) -> None:
        self.pretrained = normalise(self.pretrained)
        if self.size not in ("n", "s", "m", "l", "x"):
            raise ConfigError(f"size={self.size!r}: valid sizes are n, s, m, l, x")
        try:
            check_color_aug(self.color_aug, self.hed_strength)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.select not in ("challenge", "fitness"):
            raise ConfigError(f"select={self.select!r}: valid values are challenge, fitness")
        # Ranges, checked before a run folder exists (a bad value must not leave one behind).
        for ok, rule in (
            (self.epochs >= 1, f"epochs={self.epochs}: must be >= 1"),
            (
                self.imgsz >= 32 and self.imgsz % 32 == 0,
                f"imgsz={self.imgsz}: must be a positive multiple of 32",
            ),
            (
                self.batch == -1 or self.batch >= 1,
                f"batch={self.batch}: must be >= 1 (or -1: ultralytics picks)",
            ),
            (self.workers >= 0, f"workers={self.workers}: must be >= 0"),
            (self.lr > 0 and 0 < self.lrf <= 1, f"lr={self.lr}, lrf={self.lrf}: lr > 0 and 0 < lrf <= 1"),
            (
                self.warmup_epochs >= 0 and self.patience >= 0 and self.close_mosaic >= 0,
                "warmup_epochs, patience and close_mosaic must be >= 0",
            ),
            (
                all(0 <= v <= 1 for v in (self.mosaic, self.mixup, self.fliplr, self.flipud)),
                "mosaic, mixup, fliplr and flipud are probabilities in [0, 1]",
            ),
            (self.val_every >= 1, f"val_every={self.val_every}: must be >= 1"),
            (
                0 <= self.conf <= 1 and 0 < self.nms_iou <= 1,
                f"conf={self.conf}, nms_iou={self.nms_iou}: must be in [0, 1]",
            ),
            (self.max_det >= 1 and self.predict_batch >= 1, "max_det and predict_batch must be >= 1"),
        ):
            if not ok:
                raise ConfigError(rule)


# Kit keys handed to ultralytics' trainer, under ultralytics' own name where it differs (ULTRA_NAME).
PASSED = ("epochs", "imgsz", "batch", "workers", "seed", "optimizer", "lr", "lrf", "cos_lr", "warmup_epochs",
          "patience", "mosaic", "close_mosaic", "mixup", "fliplr", "flipud", "degrees", "translate", "scale",
          "hsv_h", "hsv_s", "hsv_v", "amp", "cache", "plots")
ULTRA_NAME = {"lr": "lr0"}


def color_args(cfg: UltraConfig) -> dict[str, Any]:
    """Ultralytics' arguments for ``color_aug``: ``hsv`` keeps hsv_h/s/v; ``hed`` and ``none`` turn hue and
    saturation off (hsv_v, brightness, stays), ``hed`` adds ``train.stain.HEDJitter`` through ultralytics'
    ``augmentations`` (its Albumentations step, after mosaic; it replaces that step's defaults, blur, grey
    and CLAHE at p=0.01 each)."""
    from train.stain import HEDJitter

    if cfg.color_aug == "hsv":
        return {}
    out: dict[str, Any] = {"hsv_h": 0.0, "hsv_s": 0.0}
    if cfg.color_aug == "hed":
        out["augmentations"] = [HEDJitter(cfg.hed_strength, p=0.5)]
    return out


class UltraAdapter(Adapter):
    """Trains an ultralytics detection model of ``family`` on one fold."""

    family: str = "yolov8"
    config_cls = UltraConfig

    def model_yaml(self, cfg: UltraConfig) -> str:
        """The ultralytics model yaml to build: ``yolov8n.yaml``, ``yolov5nu.yaml``, ``yolo11s.yaml``..."""
        suffix = "u" if self.family == "yolov5" else ""
        return f"{self.family}{cfg.size}{suffix}.yaml"

    def pretrained_key(self, cfg: UltraConfig) -> str:
        return f"yolo:{Path(self.model_yaml(cfg)).stem}"

    def train_args(self, cfg: UltraConfig, fold_data: Any, run_dir: Path) -> dict[str, Any]:
        """The keyword arguments of ``YOLO.train`` for this config and fold."""
        args = {ULTRA_NAME.get(key, key): getattr(cfg, key) for key in PASSED}
        what = f"{self.name} fold {getattr(fold_data, 'fold', '?')}"
        init = resolve(cfg.pretrained, self.pretrained_key(cfg), what, record=run_dir)
        args.update(
            data=str(fold_data.yolo_yaml), device=ultra_device(cfg.device), project=str(run_dir),
            name="ultralytics", exist_ok=True, val=True, verbose=env.verbose(),
            pretrained=str(init_weights(init)) if init else False, workers=ultra_workers(cfg),
        )
        args.update(color_args(cfg))
        clash = sorted(set(cfg.extra) & set(args))
        if clash:
            kit = {v: k for k, v in ULTRA_NAME.items()}
            named = ", ".join(f"{c} (kit key {kit[c]})" if c in kit else c for c in clash)
            raise ConfigError(f"extra: {named} are set by the kit; set them directly, not under extra")
        return {**args, **cfg.extra}

    def train(self, cfg: UltraConfig, fold_data: Any, run_dir: Path, resume: bool = False) -> Path:
        from ultralytics import YOLO

        run_dir = Path(run_dir)
        ul_last = run_dir / "ultralytics" / "weights" / "last.pt"
        import train.stain  # noqa: F401 (a resumed run's stored augmentations name train.stain.HEDJitter)

        if resume and ul_last.exists():
            ckpt = read_checkpoint(ul_last)
            if training_over(ckpt):  # killed after its last epoch: ultralytics has "nothing to resume"
                return self.finish(cfg, fold_data, run_dir, ul_last, ckpt)
            model = YOLO(str(ul_last))
            args = {"resume": True, "device": ultra_device(cfg.device), "workers": ultra_workers(cfg)}
        else:
            model = YOLO(self.model_yaml(cfg))
            args = self.train_args(cfg, fold_data, run_dir)
        link = run_dir / paths.LAST
        if not link.exists():
            link.unlink(missing_ok=True)
            link.symlink_to(Path("ultralytics") / "weights" / "last.pt")
        from train import tracking
        from train.yolo.trainer import BatchProgress, EpochEnd, KitTrainer, UltraVal

        tracking.use_ultralytics(run_dir)  # its own TensorBoard / MLflow logging under tracker: ...
        model.add_callback("on_model_save", EpochEnd(fold_data, run_dir, cfg, self.name))
        model.add_callback("on_train_batch_end", BatchProgress())
        for event in ("on_train_start", "on_train_epoch_end"):
            model.add_callback(event, UltraVal(cfg.val_every, cfg.select))
        model.train(trainer=KitTrainer, **args)
        return final_best(run_dir, ul_last)

    def finish(self, cfg: UltraConfig, fold_data: Any, run_dir: Path, ul_last: Path, ckpt: dict) -> Path:
        """Finish a run killed after its last epoch (in the kit's scoring of that epoch or in ultralytics'
        final validation, which only logs best.pt's mAP): score the last epoch when its row is missing,
        then best.pt as after training; ``train.job`` writes the OOF table and done.json."""
        from train.dist import resolve_device
        from train.yolo.trainer import EpochEnd

        log.info("%s: its training ended (%s); finishing it from the checkpoints instead of resuming",
                 run_dir, "last epoch saved" if int(ckpt.get("epoch", -1)) >= 0 else "final validation begun")
        EpochEnd(fold_data, run_dir, cfg, self.name).finish_from(ul_last, ckpt, resolve_device(cfg.device))
        return final_best(run_dir, ul_last)

    def load(self, weights: Path, cfg: UltraConfig, device: str = "cpu") -> Predictor:
        from train.dist import resolve_device
        from train.yolo.predict import UltraPredictor, load_ultra_checkpoint

        model = load_ultra_checkpoint(check_weights(weights))
        nc = int(getattr(model, "nc", len(getattr(model, "names", {}))))
        if nc != classes.NUM_CLASSES:
            raise WeightsError(weights, f"a model of {nc} classes; the kit's models have "
                                        f"{classes.NUM_CLASSES}")
        return UltraPredictor(model.fuse() if hasattr(model, "fuse") else model, cfg, resolve_device(device))


def read_checkpoint(path: Path) -> dict:
    """An ultralytics training checkpoint (``last.pt``) as its dict, loaded safely."""
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(str(path), safe_only=True)
    return ckpt if isinstance(ckpt, dict) else {}


def training_over(ckpt: dict) -> bool:
    """True when an ultralytics ``last.pt`` has no epoch left to train: stripped (``epoch`` -1: its final
    validation had begun), at its last epoch, or at the epoch early stopping (``patience``) ends on. Its
    ``resume`` then refuses ("nothing to resume")."""
    epoch = ckpt.get("epoch", -1)
    if epoch is None or int(epoch) < 0:
        return True
    done, args = int(epoch) + 1, ckpt.get("train_args") or {}
    if done >= int(args.get("epochs") or 0):
        return True
    patience, best_epoch = args.get("patience") or 0, (ckpt.get("stopper") or {}).get("best_epoch")
    return bool(patience) and best_epoch is not None and done - int(best_epoch) >= int(patience)


def final_best(run_dir: Path, ul_last: Path) -> Path:
    """``<run_dir>/best.pt`` without its optimizer state; when no epoch was scored (e.g. NaN scores), from
    ultralytics' choice (its best.pt, else last.pt)."""
    from ultralytics.utils.torch_utils import strip_optimizer

    best = Path(run_dir) / paths.BEST
    if not best.exists():
        ul_best = ul_last.with_name("best.pt")
        shutil.copyfile(ul_best if ul_best.exists() else ul_last, best)
    strip_optimizer(best)
    return best


def ultra_device(spec: str | None) -> str | None:
    """The kit's ``device`` as ultralytics takes it: ``""``/``auto`` -> None (its own choice: GPU 0 or
    the CPU); ``cuda:1`` -> ``1``; ``cpu``, ``0``, ``0,1`` unchanged."""
    text = "" if spec is None else str(spec).strip().lower()
    if text in ("", "auto"):
        return None
    return text.replace("cuda:", "") if text != "cuda" else "0"


def ultra_workers(cfg: UltraConfig, limits: resources.Limits | None = None) -> int:
    """``cfg.workers`` capped by the job's cores and /dev/shm (``cytocore.resources.capped_workers``).

    Ultralytics starts ``workers`` per GPU rank for training and twice as many for validation, all alive
    at once (its loaders persist): training workers each hold 4 uint8 batches in /dev/shm, validation
    workers 2 batches of twice the batch.
    """
    device = ultra_device(cfg.device) or ""
    ranks = len([d for d in device.split(",") if d.strip().isdigit()])
    batch = cfg.batch if cfg.batch >= 1 else 16  # batch=-1: ultralytics picks; 16 is its usual choice
    shm = (resources.loader_shm_bytes(batch, cfg.imgsz, prefetch=4, itemsize=1)
           + 2 * resources.loader_shm_bytes(2 * batch, cfg.imgsz, prefetch=2, itemsize=1))
    return resources.capped_workers(cfg.workers, limits, multiple=max(2, ranks), shm_per_worker=shm,
                                    what="ultralytics")


def check_weights(path: Path | str) -> Path:
    """A local weights file that exists (never a bare name that ultralytics would download)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(path, "ultralytics weights file not found (a local file; `make weights` "
                                 "downloads the COCO ones into weights/)")
    return path.resolve()


def init_weights(path: Path | str) -> Path:
    """A local ultralytics checkpoint to initialise from, checked by loading it safely."""
    from train.yolo.predict import load_ultra_checkpoint

    path = check_weights(path)
    load_ultra_checkpoint(path)
    return path


class Yolov5Adapter(UltraAdapter):
    """YOLOv5u: ultralytics' anchor-free YOLOv5 (original yolov5-repo weights do not load)."""

    name = "yolov5"
    family = "yolov5"


class Yolov8Adapter(UltraAdapter):
    """YOLOv8 (nano by default)."""

    name = "yolov8"
    family = "yolov8"


class Yolo11Adapter(UltraAdapter):
    """YOLO11 (nano by default)."""

    name = "yolo11"
    family = "yolo11"
