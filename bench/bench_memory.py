"""Peak memory of the submission's fusion: every member-fold's test table at once vs streamed; and the
image decodes of inference: one pass per member-fold vs one shared pass.

A synthetic dense case shaped like the real one -- ``IMAGES`` test images x 20 boxes x 3 TTA views x
``MEMBERS`` member-folds, with the 23 p_ columns a YOLO member writes -- is written as one
``test.parquet`` per member-fold. Then, each in a fresh process (its own peak RSS, from
``resource.getrusage``), side by side:

- before: every table read into one frame and fused at once (what ``make submission`` did: ~20 GiB
  at real scale with 10 member-folds);
- after: ``infer.ensemble.fuse_files`` (one member-fold table read at a time, split by image chunk,
  each chunk of images fused with every member's rows);

the two fused tables must be equal. ``BENCH_MEMORY_IMAGES`` / ``BENCH_MEMORY_MEMBERS`` set the size
(default 4000 x 4; the real case is 48000 x 10: the "before" peak grows with both, the "after" peak with
neither but the chunk).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

IMAGES = int(os.environ.get("BENCH_MEMORY_IMAGES", 4000))
MEMBERS = int(os.environ.get("BENCH_MEMORY_MEMBERS", 4))
BOXES, VIEWS = 20, ("identity", "hflip", "vflip")


def write_tables(folder: Path, images: int = IMAGES, members: int = MEMBERS, seed: int = 0) -> list[Path]:
    """One dense synthetic test table per member-fold (``images`` x 20 boxes x 3 views)."""
    from cytocore import classes, predictions

    rng = np.random.default_rng(seed)
    names = np.array([f"img{i:06d}.jpg" for i in range(images)], dtype=object)
    files = []
    for m in range(members):
        parts = []
        for v in VIEWS:
            n = images * BOXES
            xy = rng.uniform(0, 300, (n, 2))
            wh = rng.uniform(20, 60, (n, 2))
            probs = rng.dirichlet(np.ones(classes.NUM_CLASSES), n)
            parts.append(pd.DataFrame({
                "NAME": np.repeat(names, BOXES), "x1": xy[:, 0], "y1": xy[:, 1],
                "x2": xy[:, 0] + wh[:, 0], "y2": xy[:, 1] + wh[:, 1], "score": rng.uniform(0, 1, n),
                "class": np.asarray(classes.CLASSES, dtype=object)[probs.argmax(1)],
                "width": 400, "height": 400, "model": f"m{m % 2}", "fold": m // 2, "view": v,
                **{c: probs[:, j] for j, c in enumerate(classes.PROB_COLUMNS)}}))
        path = folder / f"m{m}" / predictions.TEST_FILE
        path.parent.mkdir(parents=True)
        pd.concat(parts, ignore_index=True).to_parquet(path, index=False)
        files.append(path)
    return files


def _params():
    from infer.fuse import FuseParams

    return FuseParams(mode="wbf", iou_thr=0.55, skip_box_thr=0.001, conf_type="avg", max_det=20,
                      views=VIEWS)


def _before(files: list[Path], out: Path) -> None:
    from cytocore import predictions
    from infer import fuse

    table = pd.concat([predictions.read(f) for f in files], ignore_index=True)
    fuse.fuse(table, _params(), progress=False).to_parquet(out, index=False)


def _after(files: list[Path], out: Path) -> None:
    from infer.ensemble import fuse_files

    fuse_files(files, list(VIEWS), _params(), progress=False).to_parquet(out, index=False)


def _child(fn, files, out, queue) -> None:
    from cytocore import env

    env.apply()
    start = time.perf_counter()
    fn(files, out)
    queue.put((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))


def measure(fn, files: list[Path], out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of ``fn(files, out)`` in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, files, out, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


class _Detector:
    """A member that finds one box per image (the decode count is what is measured)."""

    def predict(self, images, conf=0.001):
        from train.base import Detections

        box = np.array([[2.0, 3.0, 20.0, 25.0]])
        return [Detections(box, np.array([0.8]), np.array([3])) for _ in images]


def decodes(folder: Path, images: int = 24, members: int = 4) -> tuple[int, int]:
    """Image decodes to predict ``images`` test images with ``members`` member-folds: one pass per member
    (``infer.predict.predict_files``, as before) vs one shared pass (``infer.ensemble.predict_shared``)."""
    from PIL import Image

    from cytocore import images as kit_images
    from infer import ensemble, predict, tta
    from infer.config import load_config

    rng = np.random.default_rng(0)
    names = [f"t{i:03d}.png" for i in range(images)]
    for n in names:
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / n)
    count = [0]
    real = kit_images.load_rgb

    def counting(path):
        count[0] += 1
        return real(path)

    views = tta.get_views(["identity", "hflip", "vflip"])
    predict.load_rgb, ensemble.load_rgb = counting, counting
    try:
        for m in range(members):
            predict.predict_files(_Detector(), folder, names, views, f"m{m}", 0, progress=False)
        before, count[0] = count[0], 0
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "ensemble.yaml")
        jobs = [ensemble.Job(f"m{m}", 0, folder / f"m{m}.parquet", {}, _Detector) for m in range(members)]
        ensemble.predict_shared(jobs, names, folder, views, cfg, progress=False)
    finally:
        predict.load_rgb, ensemble.load_rgb = real, real
    return before, count[0]


def run(shared: Path | None) -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        before, after = decodes(tmp)
        lines.append(f"image decodes for 24 test images x 4 member-folds x 3 views: {before} one pass per "
                     f"member-fold (before), {after} shared pass (after): {before / after:.0f}x fewer")
        files = write_tables(tmp)
        size = sum(f.stat().st_size for f in files) / 2**20
        rows = IMAGES * BOXES * len(VIEWS) * MEMBERS
        lines.append(f"{IMAGES} images x {BOXES} boxes x {len(VIEWS)} views x {MEMBERS} member-folds = "
                     f"{rows} rows ({size:.0f} MiB of parquet)")
        t0, m0 = measure(_before, files, tmp / "before.parquet")
        t1, m1 = measure(_after, files, tmp / "after.parquet")
        a = pd.read_parquet(tmp / "before.parquet")
        b = pd.read_parquet(tmp / "after.parquet")
        key = ["NAME", "x1", "y1", "score"]
        same = a.sort_values(key).reset_index(drop=True).equals(b.sort_values(key).reset_index(drop=True))
        lines.append(f"before (all tables at once): {m0:.2f} GiB peak RSS, {t0:.1f} s")
        lines.append(f"after  (fuse_files, streamed): {m1:.2f} GiB peak RSS, {t1:.1f} s")
        lines.append(f"peak RSS ratio after/before: {m1 / m0:.2f}; fused tables identical: {same}")
    return lines
