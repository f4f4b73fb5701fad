"""Inference benchmarks: fusion at test-set scale, CPU latency per model and for the default ensemble.

- WBF over 20,751 images x 10 members (synthetic boxes: every cell seen by each
  member with jitter and label noise, plus low-score extras; 5 boxes per member
  and image), class-aware and class-agnostic, against the 60 s target.
- CPU time per image of each detector at its default size (configs/<family>.yaml;
  random-init weights: the speed does not depend on training), one image per
  call, and of the default ensemble (configs/ensemble.yaml: every member and TTA
  view, then fusion) against the challenge's 500 ms rule.
- The last ``make demo`` report (work/demo/logs/<dataset id>/report.json): step times, the OOF
  score of each member next to the fused ensemble's, and the final score.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import classes, paths

N_IMAGES = 20_751  # test images of the challenge
N_MEMBERS = 10  # e.g. 5 folds x 2 TTA views
BOXES_PER_MEMBER = 5  # boxes per member and image
TARGET_S = 60.0  # fusion budget for the whole test set
LATENCY_IMAGES = 6  # images timed per model (after one warm-up call)
RULE_MS = 500.0  # the challenge's per-image rule
DETECTORS = ("yolov5", "yolov8", "yolo11", "fasterrcnn_mobilenet", "fasterrcnn", "retinanet")
ULTRA = {"yolov5": "yolov5{size}u.yaml", "yolov8": "yolov8{size}.yaml", "yolo11": "yolo11{size}.yaml"}


def synthetic_predictions(n_images: int, n_members: int, per_member: int, seed: int = 0) -> pd.DataFrame:
    """A prediction table of ``n_members`` slots (2 models x folds) on ``n_images`` images of 1-2 cells."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(1, 3, n_images)
    side = rng.choice([360, 368, 608], n_images)
    img = np.repeat(np.arange(n_images), cells)
    centre = rng.uniform(80, 280, (len(img), 2))
    size = rng.uniform(80, 160, (len(img), 1))
    truth = rng.integers(0, classes.NUM_CLASSES, len(img))
    names = np.char.add(np.char.zfill(np.arange(n_images).astype(str), 8), "-0.jpg").astype(object)
    frames = []
    for m in range(n_members):
        extra = np.maximum(per_member - cells, 0)
        x_img = np.repeat(np.arange(n_images), extra)
        x_c = rng.uniform(50, 300, (len(x_img), 2))
        x_s = rng.uniform(40, 150, (len(x_img), 1))
        boxes = np.r_[np.c_[centre - size / 2, centre + size / 2] + rng.normal(0, 5, (len(img), 4)),
                      np.c_[x_c - x_s / 2, x_c + x_s / 2]]
        wrong = rng.integers(0, classes.NUM_CLASSES, len(img))
        labels = np.r_[np.where(rng.random(len(img)) < 0.8, truth, wrong),
                       rng.integers(0, classes.NUM_CLASSES, len(x_img))]
        rows = np.r_[img, x_img]
        frames.append(pd.DataFrame({
            "NAME": names[rows], "x1": boxes[:, 0], "y1": boxes[:, 1], "x2": boxes[:, 2], "y2": boxes[:, 3],
            "score": np.r_[rng.uniform(0.5, 1, len(img)), rng.uniform(0.001, 0.3, len(x_img))],
            "class": np.asarray(classes.CLASSES, dtype=object)[labels],
            "width": side[rows], "height": side[rows],
            "model": f"m{m % 2}", "fold": m // 2, "view": "identity",
        }))
    return pd.concat(frames, ignore_index=True)


def bench_fusion() -> list[str]:
    from infer import fuse
    from infer.config import load_config

    iou_thr = load_config(paths.CONFIGS / "ensemble.yaml").iou_thr
    df = synthetic_predictions(N_IMAGES, N_MEMBERS, BOXES_PER_MEMBER)
    lines = [f"fusion: {N_IMAGES} images x {N_MEMBERS} members ({len(df)} boxes; "
             f"machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"]
    start = time.perf_counter()
    g = fuse.group(df, skip_box_thr=0.001)
    t_group = time.perf_counter() - start
    for mode in fuse.MODES:
        start = time.perf_counter()
        out = fuse.fuse_grouped(g, fuse.FuseParams(mode=mode, iou_thr=iou_thr), progress=False)
        total = t_group + time.perf_counter() - start
        lines.append(f"  {mode:<8} {total:6.1f} s (grouping {t_group:.1f} s) -> {len(out)} fused boxes; "
                     f"target {TARGET_S:.0f} s: {'ok' if total < TARGET_S else 'OVER'}")
    return lines


def random_weights(model: str, folder: Path) -> Path:
    """Untrained weights of ``model`` in the format its adapter loads (nothing downloaded)."""
    import torch

    from train import registry

    cfg = registry.load_config(model)
    path = folder / f"{model}.pt"
    if model in ULTRA:
        from ultralytics.nn.tasks import DetectionModel

        net = DetectionModel(ULTRA[model].format(size=cfg.size), nc=classes.NUM_CLASSES, verbose=False)
        torch.save({"model": net}, path)
    else:
        torch.save(registry.get(model)().build(cfg).state_dict(), path)
    return path


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (360, 368, 3), dtype=np.uint8) for _ in range(n)]


def bench_latency(folder: Path) -> list[str]:
    from infer import predict, tta

    lines = [f"time per image on CPU, one image per call, {LATENCY_IMAGES} images of 368x360 "
             f"(random-init weights; machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"]
    imgs = _images(LATENCY_IMAGES)
    view = tta.get_views(["identity"])
    for model in DETECTORS:
        try:
            p = predict.load_member(model, 0, random_weights(model, folder), "cpu")
        except Exception as exc:  # a model whose adapter is missing is reported, not fatal
            lines.append(f"  {model:<22} not timed ({type(exc).__name__}: {exc})")
            continue
        p.predict(imgs[:1])
        start, cpu = time.perf_counter(), time.process_time()
        predict.predict_arrays(p, [(str(i), im) for i, im in enumerate(imgs)], view, model, 0, batch=1)
        ms = 1000 * (time.perf_counter() - start) / len(imgs)
        cpu_ms = 1000 * (time.process_time() - cpu) / len(imgs)
        lines.append(f"  {model:<22} {ms:7.0f} ms wall, {cpu_ms:7.0f} ms CPU (all threads) "
                     f"({'within' if ms < RULE_MS else 'over'} {RULE_MS:.0f} ms)")
    return lines + bench_ensemble(folder, imgs)


def bench_ensemble(folder: Path, imgs: list[np.ndarray]) -> list[str]:
    from infer import fuse, predict, tta
    from infer.config import load_config

    cfg = load_config(paths.CONFIGS / "ensemble.yaml")
    views = tta.get_views(cfg.tta)
    members = [(m.model, f) for m in cfg.member_list() for f in m.folds]
    loaded = [(m, f, predict.load_member(m, f, random_weights(m, folder), "cpu")) for m, f in members]
    start, cpu = time.perf_counter(), time.process_time()
    tables = [predict.predict_arrays(p, [(str(i), im) for i, im in enumerate(imgs)], views, m, f, cfg.conf,
                                     cfg.max_det, batch=1) for m, f, p in loaded]
    fuse.fuse(pd.concat(tables, ignore_index=True), cfg.fuse_params("wbf"), progress=False)
    ms = 1000 * (time.perf_counter() - start) / len(imgs)
    cpu_ms = 1000 * (time.process_time() - cpu) / len(imgs)
    return [f"  default ensemble ({len(members)} members x {len(views)} views {'+'.join(cfg.tta)}, WBF): "
            f"{ms:.0f} ms wall, {cpu_ms:.0f} ms CPU per image ({'within' if ms < RULE_MS else 'over'} "
            f"{RULE_MS:.0f} ms)"]


def demo_report() -> list[str]:
    from pipeline.demo import last_report

    path = last_report()
    if path is None:
        return ["demo: no report yet (run make demo)"]
    rep = json.loads(path.read_text())
    lines = [f"last make demo ({rep.get('finished', '?')}): total {rep['total_s']:.0f} s"]
    lines += [f"  {step:<28} {sec:7.1f} s" for step, sec in rep["steps"].items()]
    from infer.oof_table import label

    for row in rep.get("oof", []):  # infer.oof_table's words
        name = label(row["member"], row["tta"], row["classifier"])
        lines.append(f"  OOF {name:<30} {row['score']:.4f} (GIoU {row['giou']:.4f}, F1 {row['f1']:.4f})")
    for row in rep.get("test", []):
        lines.append(f"  test {row['member']:<29} {row['score']:.4f} "
                     f"(GIoU {row['giou']:.4f}, F1 {row['f1']:.4f})")
    if "score" in rep:
        lines.append(f"  test score {rep['score']:.4f} "
                     f"(GIoU term {rep['giou_term']:.4f}, F1 term {rep['f1_term']:.4f})")
    return lines


def run(shared: Path | None) -> list[str]:
    lines = bench_fusion()
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        lines += bench_latency(Path(tmp))
    return lines + demo_report()
