"""Training throughput of every detector of the registry on this machine, side by side.

Each model is built as ``python -m train`` builds it (random init, 23 classes,
its config's default input size) and takes a few optimizer steps on synthetic
360x360 images with one or two boxes each; images per second of forward +
backward + step are reported (data loading and augmentation excluded, so the
numbers compare the models, not the input pipeline).

    python -m bench train
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cytocore import classes

BATCH = 2  # images per step
STEPS = 3  # timed steps, after one warm-up step
SIDE = 360  # synthetic image side (CytologIA images are ~360 px)
MODELS = ("yolov5", "yolov8", "yolo11", "fasterrcnn", "fasterrcnn_mobilenet", "retinanet")


def _boxes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(1, 3))
    centre = rng.uniform(120, 240, size=(n, 2))
    half = rng.uniform(40, 80, size=(n, 1))
    return np.hstack([centre - half, centre + half]), rng.integers(0, classes.NUM_CLASSES, n)


def _ultra_step(name: str, cfg, rng: np.random.Generator):
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from cytocore import boxes as kit_boxes
    from train import registry

    model = DetectionModel(registry.get(name)().model_yaml(cfg), nc=classes.NUM_CLASSES, verbose=False)
    model.args = get_cfg()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    size = cfg.imgsz
    idx, cls, xywh = [], [], []
    for i in range(BATCH):
        xyxy, labels = _boxes(rng)
        idx += [i] * len(labels)
        cls += labels.tolist()
        xywh.append(kit_boxes.normalize(kit_boxes.convert(xyxy, "xyxy", "cxcywh"), SIDE, SIDE))
    batch = {"img": torch.rand(BATCH, 3, size, size), "batch_idx": torch.tensor(idx, dtype=torch.float32),
             "cls": torch.tensor(cls, dtype=torch.float32)[:, None],
             "bboxes": torch.tensor(np.vstack(xywh), dtype=torch.float32)}

    def step():
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()

    return step, f"imgsz {size}"


def _tv_step(name: str, cfg, rng: np.random.Generator):
    from train import registry

    adapter = registry.get(name)()
    model = adapter.build(cfg)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images = [torch.rand(3, SIDE, SIDE) for _ in range(BATCH)]
    targets = []
    for _ in range(BATCH):
        xyxy, labels = _boxes(rng)
        targets.append({"boxes": torch.tensor(xyxy, dtype=torch.float32),
                        "labels": torch.tensor(labels + adapter.label_offset, dtype=torch.int64)})

    def step():
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, f"min_size {cfg.imgsz}"


def throughput(name: str) -> tuple[float, str]:
    """Training images per second of ``name`` at its default size (and what that size is)."""
    from train import registry

    cfg = registry.load_config(name)
    rng = np.random.default_rng(0)
    step, size = (_ultra_step if name.startswith("yolo") else _tv_step)(name, cfg, rng)
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    return BATCH * STEPS / (time.perf_counter() - start), size


def run(shared: Path | None) -> list[str]:
    from train.dist import set_cpu_threads

    torch.manual_seed(0)
    set_cpu_threads()  # what both trainers use on CPU
    lines = [f"training throughput on CPU ({torch.get_num_threads()} threads), batch {BATCH}, "
             f"{STEPS} steps after a warm-up, synthetic {SIDE}x{SIDE} images:"]
    rates = {}
    for name in MODELS:
        rates[name], size = throughput(name)
        lines.append(f"{name:<22} {rates[name]:6.2f} img/s  ({size})")
    fastest = max(rates, key=rates.get)
    lines.append(f"fastest: {fastest}; " + ", ".join(
        f"{n} {rates[fastest] / r:.1f}x slower" for n, r in rates.items() if n != fastest))
    return lines
