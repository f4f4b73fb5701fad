"""Ultralytics adapters: YOLOv5u, YOLOv8 and YOLO11, trained through the ultralytics API.

A model is built from its yaml (``yolov8n.yaml``: random init, never a download),
optionally initialised from a local ``.pt`` (``weights=path``), and trained on the
fold's generated ``data.yaml``. Ultralytics' own outputs (args.yaml, results.csv,
plots, weights/) land in ``<run_dir>/ultralytics/``; after each epoch a callback
scores the EMA model on the fold's validation images with the challenge metric
and keeps the best epoch as ``<run_dir>/best.pt`` (``select: fitness`` keeps
ultralytics' mAP choice instead). ``<run_dir>/last.pt`` links to ultralytics'
``last.pt``, which ``--resume`` continues.

``yolov5`` is ultralytics' YOLOv5u (anchor-free head, ``yolov5nu.yaml``):
weights trained with the original yolov5 repository do not load.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

from cytokit import classes
from cytokit.config import ConfigError
from train.base import Adapter, Predictor

log = logging.getLogger(__name__)


@dataclasses.dataclass
class UltraConfig:
    """Settings of an ultralytics detector (configs/yolov5.yaml, yolov8.yaml, yolo11.yaml)."""

    size: str = "n"
    epochs: int = 100
    imgsz: int = 384
    batch: int = 16
    device: str = ""
    workers: int = 4
    weights: Path | None = None
    seed: int = 0
    optimizer: str = "auto"
    lr0: float = 0.01
    lrf: float = 0.01
    cos_lr: bool = True
    warmup_epochs: float = 3.0
    patience: int = 50
    mosaic: float = 1.0
    close_mosaic: int = 10
    mixup: float = 0.0
    fliplr: float = 0.5
    flipud: float = 0.5
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    amp: bool = True
    cache: bool = False
    plots: bool = True
    select: str = "challenge"
    val_every: int = 1
    conf: float = 0.001
    iou: float = 0.6
    agnostic_nms: bool = False
    max_det: int = 30
    predict_batch: int = 16
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size not in ("n", "s", "m", "l", "x"):
            raise ConfigError(f"size={self.size!r}: valid sizes are n, s, m, l, x")
        if self.select not in ("challenge", "fitness"):
            raise ConfigError(f"select={self.select!r}: valid values are challenge, fitness")


# Kit keys handed to ultralytics' trainer unchanged.
PASSED = ("epochs", "imgsz", "batch", "workers", "seed", "optimizer", "lr0", "lrf", "cos_lr", "warmup_epochs",
          "patience", "mosaic", "close_mosaic", "mixup", "fliplr", "flipud", "degrees", "translate", "scale",
          "hsv_h", "hsv_s", "hsv_v", "amp", "cache", "plots")


class UltraAdapter(Adapter):
    """Trains an ultralytics detection model of ``family`` on one fold."""

    family: str = "yolov8"
    config_cls = UltraConfig

    def model_yaml(self, cfg: UltraConfig) -> str:
        """The ultralytics model yaml to build: ``yolov8n.yaml``, ``yolov5nu.yaml``, ``yolo11s.yaml``..."""
        suffix = "u" if self.family == "yolov5" else ""
        return f"{self.family}{cfg.size}{suffix}.yaml"

    def train_args(self, cfg: UltraConfig, fold_data: Any, run_dir: Path) -> dict[str, Any]:
        """The keyword arguments of ``YOLO.train`` for this config and fold."""
        args = {key: getattr(cfg, key) for key in PASSED}
        args.update(
            data=str(fold_data.yolo_yaml), device=ultra_device(cfg.device), project=str(run_dir),
            name="ultralytics", exist_ok=True, val=True, verbose=False,
            pretrained=str(init_weights(cfg.weights)) if cfg.weights else False,
        )
        clash = sorted(set(cfg.extra) & set(args))
        if clash:
            raise ConfigError(f"extra: {', '.join(clash)} are kit keys; set them directly, not under extra")
        return {**args, **cfg.extra}

    def train(self, cfg: UltraConfig, fold_data: Any, run_dir: Path, resume: bool = False) -> Path:
        from ultralytics import YOLO

        run_dir = Path(run_dir)
        ul_last = run_dir / "ultralytics" / "weights" / "last.pt"
        if resume and ul_last.exists():
            model = YOLO(str(ul_last))
            args = {"resume": True, "device": ultra_device(cfg.device), "workers": cfg.workers}
        else:
            model = YOLO(self.model_yaml(cfg))
            args = self.train_args(cfg, fold_data, run_dir)
        link = run_dir / "last.pt"
        if not link.exists():
            link.unlink(missing_ok=True)
            link.symlink_to(Path("ultralytics") / "weights" / "last.pt")
        from train.yolo.trainer import EpochEnd, KitTrainer

        model.add_callback("on_model_save", EpochEnd(fold_data, run_dir, cfg, self.name))
        model.train(trainer=KitTrainer, **args)
        best = run_dir / "best.pt"
        if not best.exists():  # no epoch was scored (e.g. NaN scores): fall back on ultralytics' choice
            ul_best = ul_last.with_name("best.pt")
            shutil.copyfile(ul_best if ul_best.exists() else ul_last, best)
        from ultralytics.utils.torch_utils import strip_optimizer

        strip_optimizer(best)
        return best

    def load(self, weights: Path, cfg: UltraConfig, device: str = "cpu") -> Predictor:
        from train.dist import resolve_device
        from train.yolo.predict import UltraPredictor, load_ultra_checkpoint

        model = load_ultra_checkpoint(check_weights(weights))
        nc = int(getattr(model, "nc", len(getattr(model, "names", {}))))
        if nc != classes.NUM_CLASSES:
            raise ConfigError(
                f"{weights}: a model of {nc} classes; the kit's models have {classes.NUM_CLASSES}")
        return UltraPredictor(model.fuse() if hasattr(model, "fuse") else model, cfg, resolve_device(device))


def ultra_device(spec: str | None) -> str | None:
    """The kit's ``device`` as ultralytics takes it: ``""``/``auto`` -> None (its own choice: GPU 0 or
    the CPU); ``cuda:1`` -> ``1``; ``cpu``, ``0``, ``0,1`` unchanged."""
    text = "" if spec is None else str(spec).strip().lower()
    if text in ("", "auto"):
        return None
    return text.replace("cuda:", "") if text != "cuda" else "0"


def check_weights(path: Path | str) -> Path:
    """A local weights file that exists (never a name that ultralytics would download)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights={path}: no such file (weights are local files; nothing is downloaded)")
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
