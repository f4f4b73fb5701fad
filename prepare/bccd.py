"""BCCD as a CytologIA data folder, so that ``make all`` runs on real smears with the upstream split.

    python -m prepare.bccd [--bccd ../shared/data/bccd] [--out DIR]

Reads the small public BCCD set in place (``cytologia_wbc_subtypes.csv``: one
white cell per image, classes PNN/EO/LY/MO/BA, 640x480 fields) and writes, under
``<work>/data/bccd`` unless ``--out`` is given, the challenge layout:
``images/`` (hard links to the shared JPEGs, copies across file systems; the raw
files are never modified), ``train.csv`` (the images of the upstream
``ImageSets/Main/train.txt`` + ``val.txt``), ``test.csv`` and ``test_labels.csv``
(those of ``test.txt``, ids from the subtype file). ``make bccd``
(``python -m pipeline.bccd``) writes it and runs ``make all`` on it with
``configs/bccd.yaml``: it trains, tunes out-of-fold on the train split only and
scores the test split.
Writing again is a no-op when nothing changed; every file is written atomically.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from cytocore import env, io, paths, tables

log = logging.getLogger("prepare.bccd")
SUBTYPES = "cytologia_wbc_subtypes.csv"  # one WBC box + subtype per image (see the BCCD README)


def default_out() -> Path:
    """Where the BCCD data folder goes: ``<work>/data/bccd`` (never in git)."""
    return paths.data_copy("bccd")


def upstream_split(bccd: Path) -> dict[str, str]:
    """Image NAME -> ``train`` (upstream train.txt and val.txt) or ``test`` (test.txt)."""
    lists = Path(bccd) / "BCCD" / "ImageSets" / "Main"
    split = {}
    for part, side in (("train", "train"), ("val", "train"), ("test", "test")):
        path = lists / f"{part}.txt"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (the upstream split of BCCD)")
        for stem in path.read_text().split():
            if split.setdefault(f"{stem}.jpg", side) != side:
                raise io.DataError(f"{path}: {stem} is listed in both the train and the test lists")
    return split


def tables_of(bccd: Path) -> dict[str, pd.DataFrame]:
    """train.csv, test.csv and test_labels.csv of the subtype file, split by the upstream lists
    (images in no list are left out)."""
    boxes = tables.read(Path(bccd) / SUBTYPES, "submission")
    if (boxes[tables.COORDS] % 1 == 0).all().all():  # integer pixels stay integers, as in the real files
        boxes[tables.COORDS] = boxes[tables.COORDS].astype("int64")
    side = boxes["NAME"].map(upstream_split(bccd))
    train = boxes[side == "train"].sort_values(["NAME", "trustii_id"])
    labels = boxes[side == "test"].sort_values(["NAME", "trustii_id"])
    return {"train": train[list(tables.COLUMNS["train"])].reset_index(drop=True),
            "test": labels[list(tables.COLUMNS["test"])].reset_index(drop=True),
            "test_labels": labels[tables.SUBMISSION_COLUMNS].reset_index(drop=True)}


def _link(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (a copy across file systems), made under a temporary name."""
    if dst.exists() and dst.stat().st_size == src.stat().st_size:
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def write(bccd: Path, out: Path) -> dict[str, int]:
    """Write the data folder ``out`` from ``bccd``; returns the counts (images and boxes per side)."""
    bccd, out = Path(bccd), Path(out)
    if not (bccd / SUBTYPES).exists():
        raise FileNotFoundError(f"{bccd / SUBTYPES}: not found (the BCCD folder of ../shared/data)")
    frames = tables_of(bccd)
    jpegs = bccd / "BCCD" / "JPEGImages"
    names = sorted(set(frames["train"]["NAME"]) | set(frames["test"]["NAME"]))
    missing = [n for n in names if not (jpegs / n).exists()]
    if missing:
        raise FileNotFoundError(f"{jpegs}: {len(missing)} image(s) of {SUBTYPES} missing, e.g. {missing[0]}")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in names:
        _link(jpegs / name, images / name)
    for kind, df in frames.items():
        path = out / f"{kind}.csv"
        text = df.to_csv(index=False)
        if not path.exists() or path.read_text() != text:
            io.atomic_write_text(path, text)
    return {"train_images": frames["train"]["NAME"].nunique(), "train_boxes": len(frames["train"]),
            "test_images": frames["test"]["NAME"].nunique(), "test_boxes": len(frames["test"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prepare.bccd", description=__doc__.split("\n")[0])
    p.add_argument("--bccd", type=Path, default=paths.bccd_dir(), help="the BCCD folder (read only)")
    p.add_argument("--out", type=Path, help="the data folder to write (default <work>/data/bccd)")
    args = p.parse_args(argv)
    env.apply()
    io.setup_logging()
    out = args.out or default_out()
    counts = write(args.bccd, out)
    print(f"BCCD data folder {out}: train.csv {counts['train_boxes']} boxes on {counts['train_images']} "
          f"images (upstream train+val), test.csv {counts['test_boxes']} boxes on {counts['test_images']} "
          f"images (upstream test, truth in test_labels.csv)")
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
