"""Synthetic blood smear data set in the challenge's layout: the kit's built-in data.

    python -m prepare.synth --out data/demo --images 400 --seed 42 [--test-fraction 0.25]
                            [--workers 2] [--force]

(``make demo-data``). Writes::

    DIR/images/*.jpg       RGB JPEGs of about 360 px (some about 600 px), names like 0a1b2c3d-e.jpg
    DIR/train.csv          NAME,x1,y1,x2,y2,class      (unclipped integer boxes, rows scattered)
    DIR/test.csv           trustii_id,NAME             (one row per test cell, unique random ids)
    DIR/test_labels.csv    trustii_id,NAME,x1,y1,x2,y2,class   (the test truth, for local scoring)
    DIR/contact_sheet.png  crops of every class, one row per class
    DIR/synth.json         the arguments that made it (an identical call then does nothing)

The same seed gives byte-identical files with any number of workers: each image
draws from its own numpy Generator seeded by (seed, image index). The folder is
built beside DIR and renamed into place at the end; an existing non-empty DIR
is only replaced with ``--force``. What the cells look like is in
``prepare.synth.classes``; how images are composed in ``prepare.synth.smear``.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cytocore import env, io
from prepare.synth.plan import ImagePlan, make_plan
from prepare.synth.sheet import write_contact_sheet
from prepare.synth.smear import Scene, render

log = logging.getLogger(__name__)
VERSION = 1  # bump when the drawing changes, so that old data sets are not taken as current
JPEG_QUALITY = (85, 95)  # inclusive range of JPEG qualities
ID_SPREAD = 3.3  # trustii_ids are drawn from 2 .. 2 + ID_SPREAD x rows (real: 22,689 rows up to 75,464)


def render_image(plan: ImagePlan, seed: int) -> tuple[Scene, int]:
    """The scene of one planned image and its JPEG quality (deterministic for plan and seed)."""
    rng = np.random.default_rng([seed, 2, plan.index])
    scene = render(plan.width, plan.height, plan.classes, plan.edge, rng)
    return scene, int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 image."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def _write_image(job: tuple[ImagePlan, int, Path]) -> tuple[int, np.ndarray, list[str]]:
    plan, seed, images_dir = job
    scene, quality = render_image(plan, seed)
    (images_dir / plan.name).write_bytes(encode_jpeg(scene.rgb, quality))
    return plan.index, scene.boxes, scene.classes


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _tables(plans: list[ImagePlan], results: dict, seed: int) -> tuple[pd.DataFrame, ...]:
    """train.csv, test.csv and test_labels.csv of the drawn images (rows shuffled like the real files)."""
    rows = []
    for plan in plans:
        boxes, classes = results[plan.index]
        for box, code in zip(boxes, classes):
            rows.append((plan.name, *(int(v) for v in box), code, plan.test))
    df = pd.DataFrame(rows, columns=["NAME", "x1", "y1", "x2", "y2", "class", "test"])
    rng = np.random.default_rng([seed, 4])
    train = df[~df["test"]].drop(columns="test")
    train = train.iloc[rng.permutation(len(train))].reset_index(drop=True)
    labels = df[df["test"]].drop(columns="test")
    labels = labels.iloc[rng.permutation(len(labels))].reset_index(drop=True)
    high = 2 + max(int(len(labels) * ID_SPREAD), len(labels))
    labels.insert(0, "trustii_id", rng.choice(np.arange(2, high), size=len(labels), replace=False))
    return train, labels[["trustii_id", "NAME"]], labels


def generate(out: Path, n_images: int, seed: int, test_fraction: float = 0.25, workers: int = 1) -> dict:
    """Draw a data set into the (new or empty) folder ``out``; return a summary."""
    plans = make_plan(n_images, seed, test_fraction)
    images_dir = Path(out) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(p, seed, images_dir) for p in plans]
    start = time.perf_counter()
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init) as pool:
            done = list(pool.imap_unordered(_write_image, jobs, chunksize=8))
    else:
        done = [_write_image(job) for job in jobs]
    seconds = time.perf_counter() - start
    log.info("drew %d images in %.1f s with %d worker(s)", len(plans), seconds, workers)
    results = {i: (boxes, classes) for i, boxes, classes in done}
    train, test, labels = _tables(plans, results, seed)
    files = {k: Path(out) / f"{k}.csv" for k in ("train", "test", "test_labels")}
    io.atomic_write_df(train, files["train"])
    io.atomic_write_df(test, files["test"])
    io.atomic_write_df(labels, files["test_labels"])
    every_box = pd.concat([train, labels.drop(columns="trustii_id")])
    write_contact_sheet(Path(out) / "contact_sheet.png", images_dir, every_box, seed)
    boxes_per_image = pd.concat([train, labels]).groupby("NAME").size()
    return {
        "images": n_images, "train_images": int(sum(not p.test for p in plans)),
        "test_images": int(sum(p.test for p in plans)), "train_boxes": len(train), "test_boxes": len(labels),
        "single_cell_share": float((boxes_per_image == 1).mean()), "seconds": seconds,
    }


def manifest(n_images: int, seed: int, test_fraction: float) -> dict:
    """What identifies a generated data set (``synth.json``)."""
    return {"generator": "prepare.synth", "version": VERSION, "images": n_images, "seed": seed,
            "test_fraction": test_fraction}


def is_complete(out: Path, expected: dict) -> bool:
    """True when ``out`` is a finished data set made with the arguments in ``expected``."""
    out = Path(out)
    try:
        found = json.loads((out / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    needed = ("train.csv", "test.csv", "test_labels.csv", "images", "contact_sheet.png")
    return found == expected and all((out / n).exists() for n in needed)


def build(out: Path, n_images: int, seed: int, test_fraction: float = 0.25, workers: int = 1,
          force: bool = False) -> dict | None:
    """Generate the data set at ``out`` atomically; None when an identical one is already there.

    Raises ``FileExistsError`` when ``out`` holds something else, unless ``force``.
    """
    out = Path(out)
    expected = manifest(n_images, seed, test_fraction)
    if out.exists() and not force:
        if is_complete(out, expected):
            return None
        if out.is_file() or any(out.iterdir()):
            raise FileExistsError(f"{out}: exists and is not empty; pass --force to replace it")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        summary = generate(tmp, n_images, seed, test_fraction, workers)
        io.atomic_write_text(tmp / "synth.json", json.dumps(expected, indent=1) + "\n")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m prepare.synth``."""
    p = argparse.ArgumentParser(prog="python -m prepare.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="data set folder to create")
    p.add_argument("--images", type=int, default=400, help="number of images (default 400)")
    p.add_argument("--seed", type=int, default=42, help="generator seed (default 42)")
    p.add_argument("--test-fraction", type=float, default=0.25, help="share of test images (default 0.25)")
    p.add_argument("--workers", type=int, default=1, help="processes; the output does not depend on it")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty folder")
    return p


def main(argv: list[str] | None = None) -> int:
    """Generate the data set named on the command line; 0 on success or when it already exists."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be at least 1, got {args.images}")
    if not 0.0 < args.test_fraction < 1.0:
        parser.error(f"--test-fraction must be between 0 and 1 (exclusive), got {args.test_fraction}")
    env.apply()
    io.setup_logging()
    summary = build(args.out, args.images, args.seed, args.test_fraction, max(1, args.workers), args.force)
    if summary is None:
        print(f"{args.out}: already holds this data set (images={args.images}, seed={args.seed}); "
              "nothing to do")
        return 0
    rate = summary["images"] / max(summary["seconds"], 1e-9)
    print(f"{args.out}: {summary['train_images']} train images ({summary['train_boxes']} boxes), "
          f"{summary['test_images']} test images ({summary['test_boxes']} cells), "
          f"{summary['single_cell_share']:.1%} single-cell images")
    print(f"  {rate:.0f} images/s with {max(1, args.workers)} worker(s); contact sheet: "
          f"{args.out / 'contact_sheet.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
