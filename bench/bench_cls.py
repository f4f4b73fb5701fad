"""CPU time per crop of the second-stage classifier (``infer.blend``'s inner loop), side by side.

For a few backbone / size pairs: crop extraction (margin crop + resize of a
360 px image) and classification of a batch of crops, with and without the
flip TTA (3 views). Untrained weights: speed does not depend on them. Then
the training side: one pass over a crop dataset of JPEG smears (``cache``:
each image decoded once, vs decoded per crop), CPU time of this process.

    python -m bench cls
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CASES = (("efficientnet_b0", 224), ("resnet18", 128), ("resnet10t", 96))  # configs/cls.yaml default first
BATCH = 32
REPEATS = 2
CACHE_IMAGES = 96  # JPEG smears (one cell each) of the dataset pass


def _best_of(fn, repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(shared: Path | None) -> list[str]:
    from cytocore import classes, config
    from train.cls import data as cls_data
    from train.cls import model as cls_model
    from train.cls.adapter import ClassifierConfig, ClassifierPredictor

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (360, 363, 3), dtype=np.uint8)
    box = np.array([100.0, 95.0, 250.0, 245.0])  # a median CytologIA box, about 145 px
    sizes = cls_data.box_size_features(np.stack([box] * BATCH))
    lines = [f"torch threads: {torch.get_num_threads()}; batch {BATCH}; best of {REPEATS}"]
    for backbone, imgsz in CASES:
        t_crop = _best_of(lambda size=imgsz: [cls_data.extract_crop(image, box, 16, size)
                                              for _ in range(BATCH)])
        t_crop /= BATCH
        cfg = config.from_dict(ClassifierConfig, {"backbone": backbone, "imgsz": imgsz, "batch": BATCH})
        model = cls_model.build_model(backbone, classes.NUM_CLASSES, box_size=cfg.box_size)
        predictor = ClassifierPredictor(model, cfg, "cpu")
        crops = np.stack([cls_data.extract_crop(image, box, 16, imgsz)] * BATCH)
        predictor.classify(crops[:2], False, sizes[:2])  # warm-up
        t_one = _best_of(lambda p=predictor, c=crops: p.classify(c, False, sizes)) / BATCH
        t_tta = _best_of(lambda p=predictor, c=crops: p.classify(c, True, sizes)) / BATCH
        lines.append(f"{backbone:<16} {imgsz:>3} px: crop {1e3 * t_crop:6.2f} ms, "
                     f"classify {1e3 * t_one:6.1f} ms/crop, "
                     f"with flip TTA {1e3 * t_tta:6.1f} ms/crop ({t_tta / t_one:.1f}x)")
    lines.append("challenge rule: < 500 ms per image (93% of images hold one cell)")
    lines.append(cache_line())
    return lines


def cache_line(imgsz: int = 224) -> str:
    """CPU seconds of one training pass over ``CACHE_IMAGES`` crops, decoded per crop vs cached."""
    import pandas as pd
    from PIL import Image

    from train.cls import data as cls_data

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(CACHE_IMAGES):
            pixels = rng.integers(0, 255, (360, 363, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(f"{tmp}/{i}.jpg", quality=90)
        table = pd.DataFrame({"NAME": [f"{i}.jpg" for i in range(CACHE_IMAGES)], "x1": 100.0, "y1": 95.0,
                              "x2": 250.0, "y2": 245.0, "class": "PNN"})
        times = {}
        for name, budget in (("decoded", 0), ("cached", 2**30)):
            start = time.process_time()
            ds = cls_data.CropDataset(table, Path(tmp), imgsz, 16, "default", 0.05, cache_bytes=budget)
            fill = time.process_time() - start
            times[name] = min(_pass(ds) for _ in range(REPEATS)), fill
    (plain, _), (cached, fill) = times["decoded"], times["cached"]
    return (f"cls training pass over {CACHE_IMAGES} crops ({imgsz} px, default augment), CPU s: decoded "
            f"per crop {plain:.2f}, cache {cached:.2f} ({plain / cached:.1f}x; filled once in {fill:.2f})")


def _pass(ds) -> float:
    start = time.process_time()
    for i in range(len(ds)):
        ds[i]
    return time.process_time() - start
