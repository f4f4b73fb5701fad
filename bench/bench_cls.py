"""CPU time per crop of the second-stage classifier (``infer.blend``'s inner loop), side by side.

For a few backbone / size pairs: crop extraction (margin crop + resize of a
360 px image) and classification of a batch of crops, with and without the
flip TTA (3 views). Untrained weights: speed does not depend on them.

    python -m bench cls
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

CASES = (("efficientnet_b0", 224), ("resnet18", 128), ("resnet10t", 96))  # configs/cls.yaml default first
BATCH = 32
REPEATS = 2


def _best_of(fn, repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(shared: Path | None) -> list[str]:
    from cytokit import classes, config
    from train.cls import data as cls_data
    from train.cls import model as cls_model
    from train.cls.adapter import ClassifierConfig, ClassifierPredictor

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (360, 363, 3), dtype=np.uint8)
    box = np.array([100.0, 95.0, 250.0, 245.0])  # a median CytologIA box, about 145 px
    lines = [f"torch threads: {torch.get_num_threads()}; batch {BATCH}; best of {REPEATS}"]
    for backbone, imgsz in CASES:
        t_crop = _best_of(lambda size=imgsz: [cls_data.extract_crop(image, box, 16, size)
                                              for _ in range(BATCH)])
        t_crop /= BATCH
        cfg = config.from_dict(ClassifierConfig, {"backbone": backbone, "imgsz": imgsz, "batch": BATCH})
        predictor = ClassifierPredictor(cls_model.build_model(backbone, classes.NUM_CLASSES), cfg, "cpu")
        crops = np.stack([cls_data.extract_crop(image, box, 16, imgsz)] * BATCH)
        predictor.classify(crops[:2], tta=False)  # warm-up
        t_one = _best_of(lambda p=predictor, c=crops: p.classify(c, tta=False)) / BATCH
        t_tta = _best_of(lambda p=predictor, c=crops: p.classify(c, tta=True)) / BATCH
        lines.append(f"{backbone:<16} {imgsz:>3} px: crop {1e3 * t_crop:6.2f} ms, "
                     f"classify {1e3 * t_one:6.1f} ms/crop, "
                     f"with flip TTA {1e3 * t_tta:6.1f} ms/crop ({t_tta / t_one:.1f}x)")
    lines.append("challenge rule: < 500 ms per image (93% of images hold one cell)")
    return lines
