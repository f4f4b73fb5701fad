"""A check on real smears: train a detector on BCCD's upstream train+val split, score its test split.

    python -m bench.bccd.detect --model yolov8 [--bccd ../shared/data/bccd] [--resume] [--force] \
        [key=value ...]

Reads the small public BCCD set in place (``cytologia_wbc_subtypes.csv``: one
white cell per image, classes PNN/EO/LY/MO/BA, 640x480 fields) and exports it
in the ``cytokit/dataset.py`` layout with the upstream split as two folds:
fold 0 = ``ImageSets/Main/test.txt`` (scored), fold 1 = ``train.txt`` + ``val.txt``.
Then trains fold 0 exactly as ``python -m train`` does (best epoch by the
challenge score on the test images) and prints the test split's challenge
score, its mAP50 (5 classes) and the WBC mAP50 (class-agnostic). Everything
goes under ``<work>/bccd/`` so it never mixes with real runs.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pandas as pd

from cytokit import boxes as kit_boxes
from cytokit import env, io, paths
from cytokit.images import read_size
from cytokit.tables import COORDS

log = logging.getLogger("bench.bccd.detect")
SHARED_BCCD = paths.bccd_dir()
K, SEED = 2, 0  # fold 0 = upstream test split, fold 1 = upstream train + val


def split_of(bccd: Path) -> dict[str, int]:
    """Image NAME -> fold (0 for the upstream test list, 1 for train and val)."""
    sets = bccd / "BCCD" / "ImageSets" / "Main"
    fold = {}
    for part, f in (("train", 1), ("val", 1), ("test", 0)):
        for stem in (sets / f"{part}.txt").read_text().split():
            fold[f"{stem}.jpg"] = f
    return fold


def export(bccd: Path) -> Path:
    """Write the BCCD dataset (upstream split as folds) and return the pseudo data folder it is keyed by."""
    from cytokit import dataset
    from prepare.export import export_dataset

    labels = pd.read_csv(bccd / "cytologia_wbc_subtypes.csv")
    jpegs = bccd / "BCCD" / "JPEGImages"
    fold = split_of(bccd)
    labels = labels[labels["NAME"].isin(fold)].reset_index(drop=True)
    names = sorted(labels["NAME"].unique())
    sizes = [read_size(jpegs / n) for n in names]
    images = pd.DataFrame({"NAME": names, "width": [s[0] for s in sizes], "height": [s[1] for s in sizes],
                           "fold": [fold[n] for n in names], "group": range(len(names)),
                           "path": [str(jpegs / n) for n in names]})
    size = images.set_index("NAME").loc[labels["NAME"]]
    xyxy = kit_boxes.clip(labels[COORDS].to_numpy(float), size["width"].to_numpy(),
                          size["height"].to_numpy())
    boxes = pd.DataFrame(xyxy, columns=COORDS)
    boxes.insert(0, "NAME", labels["NAME"])
    boxes["class"] = labels["class"]
    boxes["width"], boxes["height"] = size["width"].to_numpy(), size["height"].to_numpy()
    data = paths.data_copy("bccd_upstream")
    meta = {"data": str(data), "images_dir": str(jpegs), "k": K, "seed": SEED,
            "fold_file": "BCCD ImageSets/Main (upstream split)"}
    export_dataset(paths.dataset_root(dataset.new_id(data, K, SEED)), images=images, boxes=boxes, meta=meta)
    log.info("BCCD: %d train+val images, %d test images", int((images["fold"] == 1).sum()),
             int((images["fold"] == 0).sum()))
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bccd.detect", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="yolov8", help="registry name (default yolov8)")
    p.add_argument("--bccd", type=Path, default=SHARED_BCCD, help="the BCCD folder (read only)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    os.environ["CYTOKIT_WORK"] = str(paths.nested_work_dir("bccd"))
    env.apply()
    io.setup_logging()
    if not (args.bccd / "cytologia_wbc_subtypes.csv").exists():
        raise FileNotFoundError(
            f"{args.bccd}: no cytologia_wbc_subtypes.csv (the BCCD folder of ../shared/data)")
    from cytokit import dataset
    from train import registry
    from train.job import run_fold

    data = export(args.bccd)
    cfg = registry.load_config(args.model, args.overrides)
    fold = dataset.load_fold(data, K, SEED, 0)
    record = run_fold(args.model, registry.get(args.model)(), cfg, fold, args.resume, args.force)
    print(f"BCCD test split ({len(fold.val_images)} images), {args.model}: "
          f"challenge {record['challenge']:.4f}, mAP50 {record['map50']:.4f} (5 classes), "
          f"WBC mAP50 {record['agnostic_map50']:.4f} (class-agnostic)")
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
