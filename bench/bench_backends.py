"""The default ensemble on 2 CPU threads with each backend (torch, ONNX Runtime, OpenVINO), side by side.

    python -m bench backends

The ensemble of configs/ensemble.yaml (YOLOv8n x 5 folds, TTA identity + hflip,
WBF) plus a crop classifier per fold (configs/cls.yaml: efficientnet_b0, 224 px,
3 flip views) on the top-n fused boxes of each image, as ``make submission``
runs them: every member over all images (one image and its views per call),
fusion, then the classifier on crops read from disk; ``batch`` images (and their
views) per call as in the config. Weights are random
(the speed does not depend on training) with a spread-out detection head so
that NMS, WBF and the classifier see boxes. Each member and classifier is
exported once (``infer.export``, its numerical check included); rounds are
interleaved, medians reported per image (wall clock and this process's CPU
time: on a shared machine the wall clock also counts other processes' turns),
against the issue's 250 ms target and the challenge's 500 ms rule, and beside
ultralytics' own TTA (``augment=True``: 3 scales and flips, the same batch) of
the same five members.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cytocore import classes

N_IMAGES = 16
ROUNDS = 3
THREADS = 2
TARGET_MS = 250.0  # issue #13: the default ensemble with TTA and the classifier, per image, 2 cores
RULE_MS = 500.0  # the challenge's per-image rule


def noisy_yolo(model_yaml: str, seed: int):
    """A random ultralytics model of the kit's 23 classes whose head is spread out so that boxes score
    above 0.001 (benchmarks and gpu-check time a network that finds something)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    net = DetectionModel(model_yaml, nc=classes.NUM_CLASSES, verbose=False)
    with torch.no_grad():
        head = net.model[-1]
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        for branch in head.cv3:
            branch[-1].bias.normal_(-3.0, 1.0)
    return net


def yolo_weights(folder: Path, fold: int) -> Path:
    """Random YOLOv8n weights (``noisy_yolo``) as ``<folder>/yolov8_fold<k>/best.pt``."""
    import torch

    path = folder / f"yolov8_fold{fold}" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": noisy_yolo("yolov8n.yaml", fold)}, path)
    return path


def cls_weights(folder: Path, fold: int) -> Path:
    """A random crop classifier of configs/cls.yaml's architecture, as a kit checkpoint."""
    import torch

    from cytocore import config
    from train import checkpoint, registry
    from train.cls import model as cls_model

    cfg = registry.load_config("cls")
    torch.manual_seed(100 + fold)
    path = folder / f"cls_fold{fold}" / "best.pt"
    model = cls_model.build_model(cfg.backbone, box_size=cfg.box_size)
    checkpoint.save(path, model, config.to_dict(cfg), 0, metric=0.0)
    return path


def pipeline(members: list, classifiers: list, images: list[tuple[str, np.ndarray]], images_dir: Path,
             n_cells: dict, cfg, batch: int | None = None) -> dict[str, float]:
    """One ``make submission``-like pass (``batch`` images per call, default the config's); seconds spent
    in detection, fusion and the classifier, and CPU seconds."""
    import pandas as pd

    from infer import blend, fuse, predict, tta

    views = tta.get_views(cfg.tta)
    t0, cpu = time.perf_counter(), time.process_time()
    tables = [predict.predict_arrays(p, images, views, "yolov8", f, cfg.conf, cfg.max_det, batch or cfg.batch)
              for f, p in enumerate(members)]
    t1 = time.perf_counter()
    fused = fuse.fuse(pd.concat(tables, ignore_index=True), cfg.fuse_params("wbf"), progress=False)
    t2 = time.perf_counter()
    probs = blend.classifier_probs(fused, images_dir, classifiers, True, n_cells)
    blend.blend_table(fused, probs, 0.5)
    t3 = time.perf_counter()
    return {"detect": t1 - t0, "fuse": t2 - t1, "classify": t3 - t2, "total": t3 - t0,
            "cpu": time.process_time() - cpu, "crops": float(np.isfinite(probs.crop).all(axis=1).sum())}


def run(shared: Path | None) -> list[str]:
    import os

    import torch
    from PIL import Image
    from ultralytics import YOLO

    from bench.bench_overhead import smears
    from cytocore import paths
    from infer import blend, export, predict
    from infer.config import load_config

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    cfg = load_config(paths.CONFIGS / "ensemble.yaml")
    lines = [f"default ensemble (yolov8 x 5 folds x {'+'.join(cfg.tta)}, WBF) + crop classifier x 5 "
             f"(configs/cls.yaml, 3 flip views), {N_IMAGES} synthetic 368x360 smears, {THREADS} threads, "
             f"median of {ROUNDS} interleaved rounds; machine load {os.getloadavg()[0]:.1f} on "
             f"{os.cpu_count()} cores"]
    calls, export.TIMED_CALLS = export.TIMED_CALLS, 3
    try:
        with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
            folder = Path(tmp)
            imgs = smears(N_IMAGES)
            images_dir = folder / "images"
            images_dir.mkdir()
            pairs = []
            for i, im in enumerate(imgs):
                Image.fromarray(im).save(images_dir / f"{i}.png")
                pairs.append((f"{i}.png", im))
            n_cells = {name: 1 for name, _ in pairs}
            yolo = [yolo_weights(folder, f) for f in range(5)]
            cls = [cls_weights(folder, f) for f in range(5)]
            check = imgs[:2]
            for f, w in enumerate(yolo):
                export.export_yolo("yolov8", f, w, [], check)
            for w in cls:
                export.export_classifier(w, check)
            sides = {}
            for backend in ("torch", "onnx", "openvino"):
                members = [predict.load_member("yolov8", f, w, "cpu", backend=backend)
                           for f, w in enumerate(yolo)]
                classifiers = blend.load_members([(w, None) for w in cls], "cpu", backend)
                sides[backend] = (members, classifiers)
            uls = [YOLO(str(w), task="detect") for w in yolo]
            bgr = [np.ascontiguousarray(im[..., ::-1]) for im in imgs]
            opts = dict(imgsz=384, conf=cfg.conf, iou=0.6, max_det=30, verbose=False, device="cpu",
                        augment=True, batch=cfg.batch)
            for ul in uls:
                ul.predict(bgr[0], **opts)
            times: dict[str, list[dict]] = {k: [] for k in (*sides, "ultralytics")}
            order = list(times)
            for r in range(ROUNDS):
                for key in order if r % 2 == 0 else order[::-1]:
                    if key == "ultralytics":
                        start, cpu = time.perf_counter(), time.process_time()
                        for ul in uls:
                            ul.predict(bgr, **opts)
                        times[key].append({"total": time.perf_counter() - start,
                                           "cpu": time.process_time() - cpu})
                    else:
                        times[key].append(pipeline(*sides[key], pairs, images_dir, n_cells, cfg))
    finally:
        export.TIMED_CALLS = calls
        torch.set_num_threads(threads)
    return lines + _report(times)


def _report(times: dict[str, list[dict]]) -> list[str]:
    ms = {k: {part: 1000 * statistics.median(r[part] for r in v) / N_IMAGES
              for part in v[0] if part != "crops"} for k, v in times.items()}
    ul = ms["ultralytics"]["total"]
    lines = [f"  ultralytics TTA (augment=True) of the same 5 members, detection only: {ul:7.1f} ms per "
             f"image ({ms['ultralytics']['cpu']:.1f} ms CPU)"]
    for backend in ("torch", "onnx", "openvino"):
        m = ms[backend]
        lines.append(f"  {backend:<9} {m['total']:7.1f} ms per image ({m['cpu']:.1f} ms CPU; detect "
                     f"{m['detect']:.1f}, fuse {m['fuse']:.1f}, classify {m['classify']:.1f} for "
                     f"{times[backend][0]['crops']:.0f} crops): "
                     f"{m['total'] / ul:.2f}x ultralytics TTA; target {TARGET_MS:.0f} ms "
                     f"{'met' if m['total'] <= TARGET_MS else 'MISSED'}, rule {RULE_MS:.0f} ms "
                     f"{'met' if m['total'] <= RULE_MS else 'MISSED'}")
    best = min(("torch", "onnx", "openvino"), key=lambda b: ms[b]["total"])
    lines.append(f"  fastest: {best} ({ms['torch']['total'] / ms[best]['total']:.2f}x faster than torch)")
    return lines
