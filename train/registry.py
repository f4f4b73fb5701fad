"""The model registry: one plain dict from ``MODEL=`` names to adapter classes.

Values are ``"module:Class"`` strings imported on first use, so importing this
module stays light (no torch, no ultralytics) and a model whose module is
missing fails with a message that names it. Each model family (a folder
``train/<family>/``) has one commented YAML config, ``configs/<family>.yaml``,
that holds the defaults of its adapters' ``config_cls`` (the keys of one model
alone under ``models: {<name>: ...}``).

Adding a model = one adapter class (``train.base.Adapter``) + one entry here +
its family's ``configs/<family>.yaml`` (a new family: a new file).
``python -m train --list`` prints the table.

Inference uses the same entry point::

    adapter = registry.get("yolov8")()
    run = dataset.resolve(DATA).run_dir("yolov8", 0)
    cfg = registry.run_config("yolov8", run)   # the config the run was trained with
    predictor = adapter.load(run / "best.pt", cfg, device="cpu")
    detections = predictor.predict(list_of_rgb_uint8_arrays, conf=0.001)

``detections[i]`` is a ``train.base.Detections`` in the pixels of ``images[i]``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from cytocore import paths
from cytocore.config import ConfigError, load
from train import runs

MODELS: dict[str, str] = {
    "yolov5": "train.yolo.adapter:Yolov5Adapter",  # ultralytics YOLOv5u (anchor-free head)
    "yolov8": "train.yolo.adapter:Yolov8Adapter",
    "yolo11": "train.yolo.adapter:Yolo11Adapter",
    "fasterrcnn": "train.tv.adapter:FasterRCNNAdapter",  # torchvision fasterrcnn_resnet50_fpn_v2
    "fasterrcnn_mobilenet": "train.tv.adapter:FasterRCNNMobileAdapter",  # mobilenet_v3_large_fpn (CPU)
    "retinanet": "train.tv.adapter:RetinaNetAdapter",  # torchvision retinanet_resnet50_fpn_v2
    "unet": "train.unet.adapter:UnetAdapter",
    "cls": "train.cls.adapter:ClassifierAdapter",
    "cls_full": "train.cls.adapter:FullImageAdapter",
}


def names() -> list[str]:
    """The registered model names, in registry order."""
    return list(MODELS)


def check_name(name: str) -> str:
    """Return ``name`` if registered, else raise ``ConfigError`` listing the valid names."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return name


def get(name: str) -> type:
    """The adapter class registered as ``name`` (imported now)."""
    target = MODELS[check_name(name)]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"model {name!r}: its adapter module {module_name} is not available ({exc})"
            ) from None
        raise
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ConfigError(f"model {name!r}: {module_name} has no class {class_name}") from None


def family(name: str) -> str:
    """The model's family: the folder of its adapter (``yolov8`` -> ``yolo``, ``cls_full`` -> ``cls``)."""
    module = MODELS[check_name(name)].partition(":")[0]
    return module.split(".")[1]


def config_path(name: str) -> Path:
    """``configs/<family>.yaml``: the commented defaults of the model's family."""
    return paths.CONFIGS / f"{family(name)}.yaml"


def load_config(name: str, overrides: dict[str, Any] | list[str] = ()) -> Any:
    """The model's config dataclass: its defaults (``configs/<family>.yaml``) <- overrides."""
    return load(get(name).config_cls, None, overrides, section=name)


def run_config(name: str, run_dir: Path, overrides: dict[str, Any] | list[str] = ()) -> Any:
    """The resolved config a run was trained with (``<run_dir>/config.yaml``) <- overrides; the model's
    default config when the run folder has none (weights from elsewhere)."""
    path = Path(run_dir) / runs.CONFIG
    if not path.exists():
        return load_config(name, overrides)
    return load(get(check_name(name)).config_cls, path, overrides, section=name)
