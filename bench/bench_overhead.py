"""The kit's predictors against the plain libraries on the same weights and images, side by side.

    python -m bench overhead

- YOLOv8n (untrained, 23 classes; also ``work/demo/runs/yolov8/fold0/best.pt``
  when ``make demo`` has run): the kit's ``predict_arrays`` (letterbox, forward,
  NMS, rows of the prediction table) against ``ultralytics.YOLO.predict`` with
  the same conf / IoU / max_det, at 160 and 384 px.
- Faster R-CNN MobileNetV3 (untrained, configs/fasterrcnn_mobilenet.yaml): the
  kit's predictor against calling the torchvision model on the tensor directly.

30 synthetic 368 x 360 smears, one image per call, one thread; rounds
interleaved (the order alternates) and the median time per image of each
side reported with their ratio; the target is at most 1.05.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

N_IMAGES = 30
ROUNDS = 5
TARGET = 1.05  # kit / plain library, per image


def smears(n: int = N_IMAGES, width: int = 368, height: int = 360, seed: int = 0) -> list[np.ndarray]:
    """``n`` synthetic smear images (RGB uint8) of 1-2 cells (``prepare.synth``)."""
    from prepare.synth.classes import RECIPES
    from prepare.synth.smear import render

    rng = np.random.default_rng(seed)
    codes = list(RECIPES)
    return [render(width, height, list(rng.choice(codes, 1 + int(rng.random() < 0.2))), False, rng).rgb
            for _ in range(n)]


def interleaved(sides: dict[str, Callable[[], None]], n: int, rounds: int = ROUNDS) -> dict[str, float]:
    """Median ms per image of each side over ``rounds`` interleaved rounds (order alternating)."""
    times: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for key in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            sides[key]()
            times[key].append(1000 * (time.perf_counter() - start) / n)
    return {k: statistics.median(v) for k, v in times.items()}


def yolo_sides(weights: Path, imgsz: int, images: list[np.ndarray]) -> dict[str, Callable[[], None]]:
    """The kit's and ultralytics' per-image prediction of one ultralytics checkpoint."""
    from ultralytics import YOLO

    from infer import predict, tta

    kit = predict.load_member("yolov8", 0, weights, "cpu", [f"imgsz={imgsz}", "predict_batch=1"])
    ul = YOLO(str(weights), task="detect")
    bgr = [np.ascontiguousarray(im[..., ::-1]) for im in images]
    pairs = [(f"{i}.jpg", im) for i, im in enumerate(images)]
    views = tta.get_views(["identity"])
    opts = dict(imgsz=imgsz, conf=0.001, iou=kit.iou, max_det=kit.max_det, verbose=False, device="cpu")
    ul.predict(bgr[0], **opts)
    kit.predict(images[:1])

    def run_kit() -> None:
        predict.predict_arrays(kit, pairs, views, "yolov8", 0, conf=0.001, batch=1)

    def run_ul() -> None:
        for im in bgr:
            ul.predict(im, **opts)

    return {"kit": run_kit, "ultralytics": run_ul}


def tv_sides(images: list[np.ndarray], folder: Path) -> tuple[dict[str, Callable[[], None]], int]:
    """The kit's torchvision predictor and the bare torchvision model on the same weights."""
    import torch

    from bench.bench_infer import random_weights
    from infer import predict, tta

    weights = random_weights("fasterrcnn_mobilenet", folder)
    kit = predict.load_member("fasterrcnn_mobilenet", 0, weights, "cpu", ["predict_batch=1"])
    model = kit.model
    pairs = [(f"{i}.jpg", im) for i, im in enumerate(images)]
    views = tta.get_views(["identity"])

    def run_kit() -> None:
        predict.predict_arrays(kit, pairs, views, "fasterrcnn_mobilenet", 0, conf=0.001, batch=1)

    def run_tv() -> None:
        kit._set_conf(0.001)
        with torch.inference_mode():
            for im in images:
                model([torch.from_numpy(im).permute(2, 0, 1).float().div_(255.0)])

    run_kit()
    return {"kit": run_kit, "torchvision": run_tv}, int(kit.model.transform.min_size[0])


def _line(label: str, t: dict[str, float], ref: str) -> str:
    ratio = t["kit"] / t[ref]
    return (f"  {label:<34} kit {t['kit']:6.1f} ms, {ref} {t[ref]:6.1f} ms per image: ratio {ratio:.3f} "
            f"({'within' if ratio <= TARGET else 'OVER'} {TARGET})")


def run(shared: Path | None) -> list[str]:
    import torch

    from bench.bench_infer import random_weights
    from cytocore import paths

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    images = smears()
    lines = [f"kit vs plain library, {N_IMAGES} synthetic 368x360 smears, one image per call, 1 thread, "
             f"median of {ROUNDS} interleaved rounds"]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
            folder = Path(tmp)
            members = [("YOLOv8n untrained", random_weights("yolov8", folder))]
            demo = sorted((paths.demo_dir() / "runs").glob("*/yolov8/fold0/best.pt"))
            if demo:
                members.append(("YOLOv8n demo-trained", demo[-1]))
            for label, weights in members:
                for imgsz in (160, 384):
                    t = interleaved(yolo_sides(weights, imgsz, images), N_IMAGES)
                    lines.append(_line(f"{label} {imgsz} px", t, "ultralytics"))
            sides, size = tv_sides(images, folder)
            t = interleaved(sides, N_IMAGES)
            lines.append(_line(f"Faster R-CNN MobileNetV3 {size} px", t, "torchvision"))
    finally:
        torch.set_num_threads(threads)
    return lines
