"""The data of ``make rehearsal``: placeholder images for the real names (``pipeline.rehearsal`` then runs
``make all`` on them, timed and measured).

    python -m prepare.rehearsal [--images N] [--source DIR] [--workers N]   (build the data folder only)

The real annotation files (``../shared/cytologia/train.csv`` / ``test.csv``) name
48,417 train and 20,751 test images, but their pixels are not here. This module
draws a cheap, distinct placeholder for every name -- a small random colour field
seeded by the name, upscaled to the image's side, with noise, as a JPEG -- so that
every step of the pipeline (duplicate grouping, folds, training, inference with
TTA on the test and out-of-fold images, tuning, the submission, the report page)
runs on the real names and box counts. The recipe (``configs/rehearsal.yaml``)
trains 1-epoch tiny models: the scores mean nothing, the step times and the peak
memory do (``pipeline.run`` records both per step).

The CSVs carry no image size: a train image is ~360 px square (352-370, from its
name) unless its boxes reach past 380 px, then 608 px (docs/CHALLENGE.md section 1:
the ~608 px images); a test image is 608 px for ~6 % of names (the train share).

Images are built once into a pool keyed by name and size
(``work/data/rehearsal/pool-v<version>/<w>x<h>/<NAME>``) with one process per
core, then hard-linked into the data folder of the run: ``work/data/rehearsal/all``
for every name, ``.../n<N>`` for ``--images N`` (a fixed subset, train and test in
the real proportion, nested: the 2,000 are among the 10,000). Each run's table is
kept in ``work/rehearsal/rehearsal-<N>.json``; with a subset, each step's wall
time and peak memory are extrapolated to the full scale (a line through the two
most distant measured scales, or proportional to the image count from one), with
the targets of issue #18 checked: every step but training <= 10 min, every
process <= 8 GiB, the report page <= 5 MB.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import io, paths

VERSION = 1               # of the placeholder drawing: a new version draws a new pool
FIELD = 6                 # side of the random colour field that is upscaled
NOISE = 10                # +- noise amplitude per pixel and channel
QUALITY = 88              # JPEG quality
BIG_SIDE = 608            # the side of the big images
BIG_SHARE = 2894 / 48417  # share of train images whose boxes reach past 380 px (test images drawn so)


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{VERSION}:{name}".encode()).digest()[:8], "little")


def placeholder(name: str, width: int, height: int) -> np.ndarray:
    """The placeholder RGB image (``height x width x 3`` uint8) of ``name``: a ``FIELD x FIELD`` random
    colour field seeded by the name, upscaled, plus noise. Deterministic; two names give images whose
    perceptual hashes differ (the duplicate grouping must not collapse them)."""
    import cv2

    rng = np.random.default_rng(_seed(name))
    field = rng.integers(0, 256, (FIELD, FIELD, 3), dtype=np.uint8)
    img = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += rng.integers(-NOISE, NOISE + 1, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img: np.ndarray) -> bytes:
    """``img`` (RGB) as JPEG bytes."""
    import cv2

    ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def image_sizes(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """``NAME,width,height,split`` of every image named in ``train`` (boxes) and ``test``: ~360 px square
    (352-370 from the name), 608 px where the image's boxes reach past 380 px (train) or for a
    ``BIG_SHARE`` of names (test)."""
    def small(name: str) -> int:
        return 352 + _seed(name) % 19

    reach = train.groupby("NAME", sort=False)[["x2", "y2"]].max().max(axis=1)
    rows = [(n, BIG_SIDE if r > 380 else small(n), "train") for n, r in reach.items()]
    for n in dict.fromkeys(test["NAME"]):
        big = (_seed("size:" + n) % 10_000) < BIG_SHARE * 10_000
        rows.append((n, BIG_SIDE if big else small(n), "test"))
    out = pd.DataFrame(rows, columns=["NAME", "width", "split"])
    out.insert(2, "height", out["width"])
    return out


def subset(sizes: pd.DataFrame, images: int | None) -> pd.DataFrame:
    """``images`` of the rows of ``sizes`` (all when None or more than there are), train and test in
    their real proportion, the first by a hash of the name (so a smaller subset is inside a larger)."""
    if not images or images >= len(sizes):
        return sizes
    n_train = round(images * (sizes["split"] == "train").mean())
    key = sizes["NAME"].map(lambda n: hashlib.sha1(n.encode()).hexdigest())
    order = sizes.assign(_key=key).sort_values("_key")
    picked = pd.concat([order[order["split"] == "train"].head(n_train),
                        order[order["split"] == "test"].head(images - n_train)])
    return sizes.loc[sorted(picked.index)]


def pool_dir() -> Path:
    """The placeholder images, keyed by version, size and name."""
    return paths.data_copy("rehearsal") / f"pool-v{VERSION}"


def pool_path(pool: Path, name: str, width: int, height: int) -> Path:
    return pool / f"{width}x{height}" / name


def _write_bytes(path: Path, data: bytes) -> None:
    with io.atomic_write(path) as tmp:
        tmp.write_bytes(data)


def _draw(task: tuple[str, int, int, str]) -> int:
    name, width, height, dst = task
    path = Path(dst)
    _write_bytes(path, encode(placeholder(name, width, height)))
    return path.stat().st_size


def build_pool(sizes: pd.DataFrame, pool: Path, workers: int = 0,
               echo: Callable[[str], None] = print) -> tuple[int, int]:
    """Draw the images of ``sizes`` missing from ``pool``; returns (images drawn, bytes written)."""
    tasks = []
    for name, w, h in sizes[["NAME", "width", "height"]].itertuples(index=False):
        dst = pool_path(pool, name, w, h)
        if not dst.exists():
            tasks.append((name, int(w), int(h), str(dst)))
    if not tasks:
        return 0, 0
    for d in {Path(t[3]).parent for t in tasks}:
        d.mkdir(parents=True, exist_ok=True)
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    echo(f"drawing {len(tasks):,} placeholder images with {workers} process(es) into {pool}")
    written, start = 0, time.perf_counter()
    if workers == 1:
        sizes_written = map(_draw, tasks)
    else:
        pool_ex = ProcessPoolExecutor(workers)
        sizes_written = pool_ex.map(_draw, tasks, chunksize=256)
    try:
        for i, size in enumerate(sizes_written, 1):
            written += size
            if i % 10_000 == 0:
                echo(f"  {i:,}/{len(tasks):,} images, {written / 1e9:.2f} GB, "
                     f"{time.perf_counter() - start:.0f} s")
    finally:
        if workers != 1:
            pool_ex.shutdown()
    return len(tasks), written


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: a copy
        _write_bytes(dst, src.read_bytes())


def build(images: int | None = None, source: Path | None = None, workers: int = 0,
          echo: Callable[[str], None] = print) -> Path:
    """The data folder of the rehearsal (``train.csv``, ``test.csv``, ``images/``) for ``images`` of the
    real names (None = all); reused when already built for the same names and sizes."""
    source = Path(source or paths.cytologia_dir())
    files = paths.data_files(source)
    for key in ("train", "test"):
        if not files[key].is_file():
            raise io.DataError(f"{files[key]}: not found (the rehearsal needs the real {key}.csv)")
    train, test = pd.read_csv(files["train"]), pd.read_csv(files["test"])
    every = image_sizes(train, test)
    sizes = subset(every, images)
    data = paths.data_copy("rehearsal") / ("all" if len(sizes) == len(every) else f"n{len(sizes)}")
    out = paths.data_files(data)
    key = hashlib.sha1(sizes.to_csv(index=False).encode()).hexdigest()
    stamp = data / "rehearsal.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        echo(f"rehearsal data: {data} (reused: {len(sizes):,} images)")
        return data
    pool = pool_dir()
    drawn, written = build_pool(sizes, pool, workers, echo)
    out["images"].mkdir(parents=True, exist_ok=True)
    for name, w, h in sizes[["NAME", "width", "height"]].itertuples(index=False):
        dst = out["images"] / name
        if dst.exists():
            dst.unlink()
        _link(pool_path(pool, name, w, h), dst)
    names = set(sizes["NAME"])
    io.atomic_write_text(out["train"], train[train["NAME"].isin(names)].to_csv(index=False))
    io.atomic_write_text(out["test"], test[test["NAME"].isin(names)].to_csv(index=False))
    facts = {"key": key, "images": len(sizes), "train_images": int((sizes["split"] == "train").sum()),
             "test_images": int((sizes["split"] == "test").sum()),
             "boxes": int(train["NAME"].isin(names).sum()), "drawn": drawn, "bytes_drawn": written}
    io.atomic_write_text(stamp, json.dumps(facts, indent=1) + "\n")
    echo(f"rehearsal data: {data} ({len(sizes):,} images, {facts['boxes']:,} boxes; {drawn:,} drawn now)")
    return data


def main(argv: list[str] | None = None) -> int:
    from cytocore import env

    parser = argparse.ArgumentParser(prog="python -m prepare.rehearsal", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, help="a subset of this many images (default: every name)")
    parser.add_argument("--source", type=Path, default=None,
                        help="folder of the real train.csv / test.csv (default ../shared/cytologia)")
    parser.add_argument("--workers", type=int, default=0, help="processes drawing images (0: one per core)")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    start = time.perf_counter()
    build(args.images, args.source, args.workers)
    print(f"built in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
