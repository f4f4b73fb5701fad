"""Parallel training jobs (``JOBS=``): the folds of one model one after the other vs side by side.

YOLOv8n on the folds of a small synthetic set, the same epochs each time, run
as ``python -m train --fold all`` three ways, interleaved (the machine may be
shared: every variant sees the same load drift): ``sequential`` (no --jobs: one
process, ultralytics' own thread count, cores - 1), ``--jobs 1, all cores`` (one
job at a time with every core as its threads) and ``--jobs K`` (the K folds at
once, the cores split between them).
Wall and CPU time (user + system of all children) per variant and the wall
ratios.

    python -m bench jobs
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cytocore import paths

IMAGES = 120  # synthetic images (k=2: about 45 to train on per fold once test.csv has its share)
K = 2  # folds, i.e. jobs
ROUNDS = 2  # interleaved repetitions of every variant
OVERRIDES = ["epochs=4", "imgsz=160", "batch=16", "workers=0", "plots=false", "optimizer=AdamW", "lr=0.002",
             "warmup_epochs=1", "val_every=4"]


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one command (CPU of all its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=paths.ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - start, cpu


def measure(images: int = IMAGES, k: int = K, rounds: int = ROUNDS,
            overrides: list[str] = OVERRIDES) -> list[str]:
    """The comparison, as printable lines."""
    from train.parallel import THREAD_VARS, cores

    with tempfile.TemporaryDirectory(prefix="cytokit-bench-jobs-") as tmp:
        env = {**os.environ, "CYTOKIT_WORK": str(Path(tmp) / "work")}
        data = Path(tmp) / "data"
        py = [sys.executable, "-m"]
        quiet = {"env": env, "check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                 "cwd": paths.ROOT}
        subprocess.run(py + ["prepare.synth", "--out", str(data), "--images", str(images), "--seed", "1"],
                       **quiet)
        subprocess.run(py + ["prepare.folds", "--data", str(data), "--k", str(k), "--seed", "0"], **quiet)
        base = py + ["train", "--model", "yolov8", "--fold", "all", "--data", str(data), "--force",
                     *overrides]
        every = {**{var: str(cores()) for var in THREAD_VARS}, "OMP_WAIT_POLICY": "PASSIVE"}
        variants = {"sequential": (base, env),
                    "--jobs 1, all cores": ([*base, "--jobs", "1"], {**env, **every}),
                    f"--jobs {k}": ([*base, "--jobs", str(k)], env)}
        times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for _ in range(rounds):
            for name, (argv, variant_env) in variants.items():
                times[name].append(_timed(argv, variant_env))
    head = (f"yolov8n, {k} folds of {images} synthetic images, {' '.join(overrides)}; {cores()} cores; "
            f"{rounds} interleaved rounds (wall s / CPU s per round; load average {os.getloadavg()[0]:.1f}):")
    lines = [head]
    for name, runs in times.items():
        lines.append(f"{name:<20} " + "  ".join(f"{w:6.1f} / {c:6.1f}" for w, c in runs))
    last = f"--jobs {k}"
    for name in ("sequential", "--jobs 1, all cores"):
        ratios = [a[0] / b[0] for a, b in zip(times[name], times[last])]
        lines.append(f"{last} vs {name}: wall {' '.join(f'{r:.2f}x' for r in ratios)} faster")
    return lines


def run(shared: Path | None) -> list[str]:
    return measure()


if __name__ == "__main__":
    print("\n".join(measure()))
