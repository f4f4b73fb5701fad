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

DEFAULT_K = 5  # folds of `make folds` when K is not given
DEFAULT_SEED = 42  # fold seed of `make folds` when SEED is not given


def dataset_key(data: Path, k: int, seed: int) -> str:
    """The id of the dataset prepared from ``data`` with ``k`` folds and ``seed``."""
    return f"{Path(data).resolve().name}_k{k}_s{seed}"


def dataset_dir(data: Path, k: int, seed: int) -> Path:
    return paths.dataset_root(dataset_key(data, k, seed))


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset prepared by ``make folds``: its id, its folder, K and SEED.

    Every later step finds its inputs and outputs through it: ``fold(f)`` (the
    fold's boxes and images), ``run_dir(model, fold)`` (training runs) and
    ``preds_dir(model, fold)`` (prediction tables), so two datasets never mix.
    """

    id: str  # folder name under work/datasets/, and the key of runs and predictions
    root: Path  # work/datasets/<id>/
    k: int  # folds
    seed: int  # fold seed

    @property
    def meta(self) -> dict:
        return load_meta(self.root)

    @property
    def data(self) -> Path:
        """The raw data folder it was prepared from."""
        return Path(self.meta["data"])

    @property
    def images_dir(self) -> Path:
        """The RAW images (predict here; original coordinates)."""
        return Path(self.meta["images_dir"])

    def images(self) -> pd.DataFrame:
        """``NAME,width,height,fold,group`` of every train image."""
        return pd.read_csv(self.root / "images.csv")

    def fold(self, fold: int) -> FoldData:
        return _load_fold(self, fold)

    def run_dir(self, model: str, fold: int | str) -> Path:
        return paths.run_dir(self.id, model, fold)

    def preds_dir(self, model: str, fold: int | str) -> Path:
        return paths.preds_dir(self.id, model, fold)


def prepared(data: Path) -> list[Dataset]:
    """Every dataset ``make folds`` prepared from the data folder ``data``, by id."""
    want = str(Path(data).resolve())
    found = []
    for meta_path in sorted(paths.datasets_dir().glob("*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("data") == want and "k" in meta and "seed" in meta:
            found.append(Dataset(meta_path.parent.name, meta_path.parent, int(meta["k"]), int(meta["seed"])))
    return found


def resolve(data: Path, k: int | None = None, seed: int | None = None) -> Dataset:
    """The dataset ``make folds`` prepared from ``data``; ``k`` and ``seed`` choose among several.

    Raises ``FileNotFoundError`` when none matches and ``ConfigError`` (listing
    them) when several do.
    """
    from cytokit.config import ConfigError

    found = [d for d in prepared(data) if (k is None or d.k == k) and (seed is None or d.seed == seed)]
    if len(found) == 1:
        return found[0]
    asked = "".join(f" {n}={v}" for n, v in (("K", k), ("SEED", seed)) if v is not None)
    if not found:
        raise FileNotFoundError(f"{data}: no prepared dataset{' with' + asked if asked else ''}; "
                                f"run `make folds DATA={data}{asked}` first")
    listed = ", ".join(f"{d.id} (K={d.k} SEED={d.seed})" for d in found)
    raise ConfigError(f"{data}: {len(found)} prepared datasets match: {listed}; choose one with K= and SEED=")


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
    dataset: Dataset | None = None  # the prepared dataset (None: a hand-made fold, its id = root's name)

    def run_dir(self, model: str) -> Path:
        """The run folder of ``model`` on this fold."""
        return self._ds().run_dir(model, self.fold)

    def preds_dir(self, model: str) -> Path:
        """The prediction folder of ``model`` on this fold."""
        return self._ds().preds_dir(model, self.fold)

    def _ds(self) -> Dataset:
        return self.dataset or Dataset(Path(self.root).name, Path(self.root), self.k, self.seed)

    @property
    def export_images_dir(self) -> Path:
        """Where the exported training images (links or resized copies) are."""
        return self.root / "yolo" / "images"


def load_meta(root: Path) -> dict:
    meta_path = Path(root) / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: no prepared dataset here; run `make folds` first")
    return json.loads(meta_path.read_text())


def load_fold(data: Path, k: int | None, seed: int | None, fold: int) -> FoldData:
    """The fold ``fold`` of the dataset prepared from ``data`` with ``k`` folds and ``seed``."""
    return resolve(data, k, seed).fold(fold)


def _load_fold(ds: Dataset, fold: int) -> FoldData:
    root, k = ds.root, ds.k
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
        seed=ds.seed,
        images_dir=Path(meta["images_dir"]),
        train_boxes=boxes[~boxes["NAME"].isin(val_names)].reset_index(drop=True),
        val_boxes=boxes[boxes["NAME"].isin(val_names)].reset_index(drop=True),
        val_images=images.loc[is_val, ["NAME", "width", "height"]].reset_index(drop=True),
        train_images=images.loc[~is_val, ["NAME", "width", "height"]].reset_index(drop=True),
        yolo_yaml=fold_dir / "data.yaml",
        coco_train=fold_dir / "coco_train.json",
        coco_val=fold_dir / "coco_val.json",
        resize=meta.get("resize"),
        dataset=ds,
    )
