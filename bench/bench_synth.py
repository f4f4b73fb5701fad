"""Speed of the synthetic smear generator on one core, against the 50 images/s target.

Measures, side by side in one call: drawing only, drawing + JPEG encoding +
writing the file, and a whole ``prepare.synth`` build (tables and contact sheet
included). OpenCV is limited to one thread. Rates are given per wall-clock
second and per CPU second of this process (the latter is steadier on a busy
machine).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2

from prepare.synth import make as synth
from prepare.synth.plan import make_plan

TARGET = 50.0  # images per second on one core
N_IMAGES = 150


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(shared: Path | None) -> list[str]:
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        plans = make_plan(N_IMAGES, 0)
        synth.render_image(plans[0], 0)  # warm the cached templates and noise tile
        with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
            tmp = Path(tmp)

            def draw():
                for p in plans:
                    synth.render_image(p, 0)

            def draw_and_write():
                for p in plans:
                    scene, quality = synth.render_image(p, 0)
                    (tmp / p.name).write_bytes(synth.encode_jpeg(scene.rgb, quality))

            rows = [("draw only", _timed(draw)), ("draw + JPEG + write", _timed(draw_and_write)),
                    ("whole build (CSVs, sheet)", _timed(lambda: synth.build(tmp / "ds", N_IMAGES, 0)))]
    finally:
        cv2.setNumThreads(threads)
    lines = [f"{N_IMAGES} images of about 360 px, one core, target {TARGET:.0f} images/s"]
    for name, (wall, cpu) in rows:
        rate, cpu_rate = N_IMAGES / wall, N_IMAGES / max(cpu, 1e-9)
        verdict = "meets" if cpu_rate >= TARGET else "MISSES"
        lines.append(f"{name:26s} {rate:6.1f} images/s wall, {cpu_rate:6.1f} per CPU second "
                     f"({verdict} target)")
    return lines
