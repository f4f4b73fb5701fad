"""Speed (and quality) of the UNet path on CPU: fallback masks, MedSAM, UNet inference.

- Classical masks (``train.unet.fallback``): time per image and per box, and
  mean IoU against the synthetic generator's own cell masks
  (``prepare.synth.smear.render``), for GrabCut and stain thresholding.
- MedSAM ViT-B (random weights: the speed does not depend on them): time of
  one 1024 px encoder pass plus the box decoding, on CPU (a single call).
- UNet inference (``configs/unet.yaml`` architecture, untrained): time per
  360 x 360 image through ``UnetPredictor.predict`` (network, upsampling,
  components to boxes), one image at a time and in batches of 8; and the
  lighter CPU demo setting (imgsz 128, decoder [128, 64, 32, 16, 8]).

Wall-clock and process CPU times are both printed: on a shared machine the
wall clock also counts the time other processes held the cores.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

N_SCENES = 24  # synthetic images for the fallback masks
N_UNET = 16  # images for UNet inference


def _scenes(n: int, seed: int = 0) -> list:
    from prepare.synth.classes import RECIPES
    from prepare.synth.smear import render

    rng = np.random.default_rng(seed)
    codes = list(RECIPES)
    out = []
    for _ in range(n):
        k = 1 if rng.random() < 0.8 else 2
        out.append(render(360, 360, list(rng.choice(codes, k)), False, rng))
    return out


def _fallback_lines(scenes: list) -> list[str]:
    from train.unet.fallback import METHODS, box_mask

    lines = []
    n_boxes = sum(len(s.boxes) for s in scenes)
    for method in METHODS:
        ious, sec, cpu = [], 0.0, 0.0
        for s in scenes:
            for j, box in enumerate(s.boxes):
                t0, c0 = time.perf_counter(), time.process_time()
                mask = box_mask(s.rgb, box, method)
                sec += time.perf_counter() - t0
                cpu += time.process_time() - c0
                truth = s.labels == j + 1
                ious.append((mask & truth).sum() / max((mask | truth).sum(), 1))
        ious = np.asarray(ious)
        per_image, per_box = 1000 * sec / len(scenes), 1000 * sec / n_boxes
        lines.append(f"fallback {method:8s}: {per_image:6.1f} ms/image ({1000 * cpu / len(scenes):.1f} CPU), "
                     f"{per_box:6.1f} ms/box; IoU vs the "
                     f"generator's masks mean {ious.mean():.3f}, median {np.median(ious):.3f}, "
                     f"{(ious < 0.7).sum()}/{len(ious)} boxes below 0.7")
    return lines


def _medsam_line() -> str:
    import torch

    from train.unet.medsam import MedSam, build_sam

    torch.manual_seed(0)
    model = MedSam(build_sam(), device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (360, 360, 3), dtype=np.uint8)
    box = [np.array([[100.0, 100.0, 260.0, 250.0]])]
    start, cpu = time.perf_counter(), time.process_time()
    model.segment([image], box)  # one call: a ViT-B pass at 1024 px is seconds on a CPU
    sec, cpu = time.perf_counter() - start, time.process_time() - cpu
    return (f"MedSAM ViT-B (1024 px, 1 box, first call): {sec:.2f} s/image ({cpu:.2f} s CPU), "
            f"{torch.get_num_threads()} threads")


def _unet_lines(scenes: list) -> list[str]:
    import dataclasses

    import torch

    from cytocore import config, paths
    from train.unet.adapter import UnetConfig, build_model
    from train.unet.post import UnetPredictor

    base = config.load(UnetConfig, paths.ROOT / "configs" / "unet.yaml", {"device": "cpu"})
    light = dataclasses.replace(base, imgsz=128, decoder_channels=[128, 64, 32, 16, 8])  # the CPU demo's
    images = [s.rgb for s in scenes[:N_UNET]]
    lines = []
    for cfg, batch in ((base, 1), (base, 8), (light, 8)):
        torch.manual_seed(0)
        predictor = UnetPredictor(build_model(cfg), dataclasses.replace(cfg, batch=batch), "cpu")
        predictor.predict(images[:batch])  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        predictor.predict(images)
        ms = 1000 * (time.perf_counter() - start) / len(images)
        cpu_ms = 1000 * (time.process_time() - cpu) / len(images)
        lines.append(f"UNet {cfg.encoder} imgsz {cfg.imgsz} decoder {cfg.decoder_channels}, batch {batch}: "
                     f"{ms:.1f} ms/image ({cpu_ms:.1f} CPU), 360 px, {torch.get_num_threads()} threads, "
                     "network + upsampling + boxes")
    return lines


def run(shared: Path | None) -> list[str]:
    try:
        scenes = _scenes(N_SCENES)
    except ImportError as exc:
        return [f"synthetic generator not available ({exc})"]
    lines = [f"{len(scenes)} synthetic 360 px images, {sum(len(s.boxes) for s in scenes)} boxes"]
    lines += _fallback_lines(scenes)
    lines += _unet_lines(scenes)
    lines.append(_medsam_line())
    return lines
