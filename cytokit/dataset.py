"""The prepared-dataset contract: what ``make folds`` writes and every trainer reads.

``python -m prepare.folds --data DATA --k K --seed SEED`` writes, under
``work/datasets/<name>_k{K}_s{SEED}/`` (``<name>`` = the data folder's name)::

    meta.json            {"data", "images_dir", "k", "seed", "fold_file", "resize",
                          "classes", "n_images", "n_boxes"}
    images.csv           NAME,width,height,fold,group   (every train image, original size)
    boxes.csv            NAME,x1,y1,x2,y2,class,width,height   (cleaned boxes, original pixels)
    yolo/images/<NAME>   symlinks to the raw images (or resized copies when resize is set)
    yolo/labels/<stem>.txt   "<class id> cx cy w h", normalised (ids: cytokit.classes order)
    fold<f>/data.yaml    ultralytics data file: train/val lists below, the 23 names in order
    fold<f>/train.txt    absolute paths under yolo/images of the fold's training images
    fold<f>/val.txt      same for its validation images
    fold<f>/coco_train.json, fold<f>/coco_val.json
                         COCO detection json (file_name relative to yolo/images,
                         bbox absolute xywh in the exported image's pixels,
                         category_id = class id + 1)

Boxes in ``boxes.csv`` and the fold tables returned here are always in the
ORIGINAL image's pixels, which is also where predictions must be; only the
exported training copies (``yolo/``, COCO json) are resized when resize is set.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from cytokit import paths


def dataset_key(data: Path, k: int, seed: int) -> str:
    return f"{Path(data).resolve().name}_k{k}_s{seed}"


def dataset_dir(data: Path, k: int, seed: int) -> Path:
    return paths.datasets_dir() / dataset_key(data, k, seed)


@dataclasses.dataclass(frozen=True)
class FoldData:
    """Everything a trainer needs for one fold of a prepared dataset."""

    root: Path  # the prepared dataset folder
    fold: int
    k: int
    seed: int
    images_dir: Path  # the RAW images (predict here; original coordinates)
    train_boxes: pd.DataFrame  # cleaned boxes of the fold's training images
    val_boxes: pd.DataFrame  # cleaned boxes of the fold's validation images
    val_images: pd.DataFrame  # NAME,width,height of the validation images
    train_images: pd.DataFrame  # NAME,width,height of the training images
    yolo_yaml: Path
    coco_train: Path
    coco_val: Path
    resize: int | None

    @property
    def export_images_dir(self) -> Path:
        """Where the exported training images (links or resized copies) are."""
        return self.root / "yolo" / "images"


def load_meta(root: Path) -> dict:
    meta_path = Path(root) / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: no prepared dataset here; run `make folds` first")
    return json.loads(meta_path.read_text())


def load_fold(data: Path, k: int, seed: int, fold: int) -> FoldData:
    """The fold ``fold`` of the dataset prepared from ``data`` with ``k`` folds and ``seed``."""
    root = dataset_dir(data, k, seed)
    meta = load_meta(root)
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} out of range for k={k} (valid: 0..{k - 1})")
    images = pd.read_csv(root / "images.csv")
    boxes = pd.read_csv(root / "boxes.csv")
    is_val = images["fold"] == fold
    val_names = set(images.loc[is_val, "NAME"])
    fold_dir = root / f"fold{fold}"
    return FoldData(
        root=root,
        fold=fold,
        k=k,
        seed=seed,
        images_dir=Path(meta["images_dir"]),
        train_boxes=boxes[~boxes["NAME"].isin(val_names)].reset_index(drop=True),
        val_boxes=boxes[boxes["NAME"].isin(val_names)].reset_index(drop=True),
        val_images=images.loc[is_val, ["NAME", "width", "height"]].reset_index(drop=True),
        train_images=images.loc[~is_val, ["NAME", "width", "height"]].reset_index(drop=True),
        yolo_yaml=fold_dir / "data.yaml",
        coco_train=fold_dir / "coco_train.json",
        coco_val=fold_dir / "coco_val.json",
        resize=meta.get("resize"),
    )
