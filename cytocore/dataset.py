"""The prepared-dataset contract: what ``make folds`` writes, how later steps find it and check it.

``python -m prepare.folds --data DATA --k K --seed SEED`` writes, under
``work/datasets/<id>/`` with ``<id> = <folder name>-<8 hex>_k{K}_s{SEED}`` (the hex
digits are a digest of the data folder's absolute path and of the source fingerprint,
so ``x/raw`` and ``y/raw`` never share an id)::

    meta.json            {"data", "images_dir", "k", "seed", "fold_file", "resize",
                          "classes", "n_images", "n_boxes", "source": {"train_csv_sha256",
                          "fingerprint", "images"}, ...}
    source.csv           NAME,bytes,mtime_ns,sha1 of the raw train images at make folds
    images.csv           NAME,width,height,fold,group   (every train image, original size)
    boxes.csv            NAME,x1,y1,x2,y2,class,width,height   (cleaned boxes, original pixels)
    yolo/images/<NAME>   symlinks to the raw images (or resized copies when resize is set)
    yolo/labels/<stem>.txt   "<class id> cx cy w h", normalised (ids: cytocore.classes order)
    fold<f>/data.yaml    ultralytics data file: train/val lists below, the 23 names in order
    fold<f>/train.txt    absolute paths under fold<f>/train/images of the fold's training images
    fold<f>/val.txt      same for its validation images (under fold<f>/val/images)
    fold<f>/{train,val}/{images,labels}   links to yolo/images, yolo/labels: each list gets its
                         own ultralytics labels.cache (fold<f>/<part>/labels.cache)
    fold<f>/coco_train.json, fold<f>/coco_val.json
                         COCO detection json (file_name relative to yolo/images,
                         bbox absolute xywh in the exported image's pixels,
                         category_id = class id + 1)

The source fingerprint is a sha256 of train.csv and of each train image's name and
content sha1. ``resolve(data, k, seed)`` finds the dataset prepared from ``data`` (K and
SEED choose among several) and checks that train.csv and each train image's size and
mtime are as recorded, else a one-line ``DatasetError`` says what changed. Changed data
gets a NEW id (old runs are never reused); a moved data folder keeps its id, runs and
predictions once ``make folds`` runs from the new place.

Boxes in ``boxes.csv`` and the fold tables returned here are always in the
ORIGINAL image's pixels, which is also where predictions must be; only the
exported training copies (``yolo/``, COCO json) are resized when resize is set.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytocore import paths
from cytocore.config import ConfigError

DEFAULT_K = 5  # folds of `make folds` when K is not given
DEFAULT_SEED = 42  # fold seed of `make folds` when SEED is not given
TRAIN_ONLY = -1  # the fold of an image every fold trains on and none validates on (pseudo-labels)
SOURCE_FILE = "source.csv"  # the raw train images' NAME,bytes,mtime_ns,sha1 at make folds


class DatasetError(ConfigError):
    """No usable prepared dataset for a data folder; the one-line message says what to run."""


def train_only_in(fold: int) -> int:
    """The fold code of an image that only fold ``fold`` trains on and none validates on: a pseudo-labelled
    copy of a test image labelled by round one's fold ``fold`` (``infer.pseudo``). -2 for fold 0, -3 for
    fold 1...; ``TRAIN_ONLY`` (-1) is every fold's."""
    if fold < 0:
        raise ValueError(f"fold {fold}: a fold is 0..k-1")
    return -2 - fold


def trains_in(codes: Any, fold: int) -> np.ndarray:
    """Which of the fold codes ``codes`` (an image's ``fold`` column) fold ``fold`` trains on: the other
    folds' images, ``TRAIN_ONLY`` and ``train_only_in(fold)``. The one rule behind every fold's training
    list (the YOLO lists, COCO files and ``FoldData.train_*``); it validates on ``codes == fold``."""
    codes = np.asarray(codes)
    return ((codes >= 0) & (codes != fold)) | (codes == TRAIN_ONLY) | (codes == train_only_in(fold))


def valid_codes(codes: Any, k: int) -> np.ndarray:
    """Which of ``codes`` are fold codes of a k-fold dataset: 0..k-1, TRAIN_ONLY or train_only_in(f)."""
    codes = np.asarray(codes)
    return (codes > -2 - k) & (codes < k)


def file_sha256(path: Path) -> str | None:
    """The sha256 of a file's bytes (None when it does not exist)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def source_fingerprint(train_sha256: str, images: pd.DataFrame) -> str:
    """The fingerprint of a data folder's training input: train.csv's sha256 and ``NAME,sha1``
    of its images (any order)."""
    table = images[["NAME", "sha1"]].sort_values("NAME")
    lines = "".join(f"{n}\t{s}\n" for n, s in zip(table["NAME"], table["sha1"]))
    return hashlib.sha256(f"{train_sha256}\n{lines}".encode()).hexdigest()


def new_id(data: Path, k: int, seed: int, fingerprint: str = "") -> str:
    """A new dataset id: ``<folder name>-<digest of the absolute path and fingerprint>_k{k}_s{seed}``."""
    data = Path(data).resolve()
    digest = hashlib.sha256(f"{data}\n{fingerprint}".encode()).hexdigest()[:8]
    return f"{data.name}-{digest}_k{k}_s{seed}"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset prepared by ``make folds``: its id, its folder, K and SEED.

    Every later step finds its inputs and outputs through it: ``fold(f)`` (the
    fold's boxes and images), ``run_dir(name, fold)`` (training runs) and
    ``preds_dir(name, fold)`` (prediction tables; ``name``: a member's, ``cytocore.members``), so two
    datasets never mix.
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

    def run_dir(self, name: str, fold: int | str) -> Path:
        return paths.run_dir(self.id, name, fold)

    def preds_dir(self, name: str, fold: int | str) -> Path:
        return paths.preds_dir(self.id, name, fold)

    def changed(self, train_sha256: str | None = None) -> str | None:
        """What changed in the data folder since ``make folds`` (None: nothing).

        Compares train.csv's sha256 (``train_sha256`` when already computed) and each
        train image's size and mtime with those recorded, then its content sha1: read again
        only for files whose size, mtime or ctime differ from the image-facts cache
        (``cytocore.images.file_facts``), so an image replaced by one of the same size with its
        mtime restored (its ctime moves) is found without reading every image at every step.
        A dataset without a record (made by hand, e.g. by a benchmark) is not checked.
        """
        meta = self.meta
        source = meta.get("source")
        if source is None:
            return "the kit's dataset format changed" if "export_key" in meta else None
        train = paths.data_files(Path(meta["data"]))["train"]
        sha = train_sha256 or file_sha256(train)
        if sha is None:
            return f"{train} is gone"
        if sha != source["train_csv_sha256"]:
            return f"{train} changed"
        from cytocore.images import file_facts, file_stats

        if not (self.root / SOURCE_FILE).exists():
            return f"{self.root / SOURCE_FILE} went missing"
        recorded = pd.read_csv(self.root / SOURCE_FILE, dtype={"NAME": str}, keep_default_na=False)
        now = file_stats(self.images_dir, recorded["NAME"].tolist())
        gone = ~now["exists"].to_numpy()
        moved = (now["bytes"].to_numpy() != recorded["bytes"].to_numpy()) | (
            now["mtime_ns"].to_numpy() != recorded["mtime_ns"].to_numpy())
        if not (moved | gone).any() and "sha1" in recorded:
            facts = file_facts(self.images_dir, recorded["NAME"].tolist(), stats=now)
            moved = facts["sha1"].to_numpy() != recorded["sha1"].astype(str).to_numpy()
        for mask, what in ((gone, "are gone"), (moved & ~gone, "changed")):
            if mask.any():
                return (
                    f"{int(mask.sum())} of its {len(recorded)} train image(s) in {self.images_dir} {what} "
                    f"(e.g. {recorded['NAME'].to_numpy()[mask][0]})"
                )
        return None


def prepared(data: Path | None = None) -> list[Dataset]:
    """Every dataset ``make folds`` prepared (from the data folder ``data`` when given), by id."""
    want = str(Path(data).resolve()) if data is not None else None
    found = []
    for meta_path in sorted(paths.datasets_dir().glob("*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if (want is None or meta.get("data") == want) and "k" in meta and "seed" in meta:
            found.append(Dataset(meta_path.parent.name, meta_path.parent, int(meta["k"]), int(meta["seed"])))
    return found


def _moved_here(data: Path, candidates: list[Dataset]) -> Dataset | None:
    """A dataset prepared from a folder that no longer exists, with the same train.csv as ``data``."""
    sha = file_sha256(paths.data_files(data)["train"])
    for d in candidates:
        meta = d.meta
        if sha and not Path(meta["data"]).exists() and meta.get("source", {}).get("train_csv_sha256") == sha:
            return d
    return None


def id_for(data: Path, k: int, seed: int, fingerprint: str) -> tuple[str, str | None]:
    """The id ``make folds`` records a preparation of ``data`` under, and a note for the user.

    The id already used for this folder, K, SEED and source fingerprint; else that of
    a dataset with the same fingerprint whose folder is gone (the folder moved: its
    runs and predictions are kept); else a new one (the old datasets of this folder,
    prepared from other contents, stay as they were).
    """
    same = [d for d in prepared() if d.k == k and d.seed == seed
            and d.meta.get("source", {}).get("fingerprint") == fingerprint]
    here = str(Path(data).resolve())
    for d in same:
        if d.meta["data"] == here:
            return d.id, None
    for d in same:
        if not Path(d.meta["data"]).exists():
            return d.id, (f"{d.id} was prepared from {d.data}, which is gone, with the same train.csv and "
                          f"images: it now belongs to {here} (its runs and predictions are kept)")
    older = [d.id for d in prepared(data) if d.k == k and d.seed == seed]
    note = (f"{here} changed since {', '.join(older)} was prepared: a new dataset id (the old one and its "
            "runs are left as they were)") if older else None
    return new_id(data, k, seed, fingerprint), note


def resolve(data: Path, k: int | None = None, seed: int | None = None) -> Dataset:
    """The dataset ``make folds`` prepared from ``data``, checked against it; ``k`` and ``seed``
    choose among several.

    Raises ``FileNotFoundError`` when none was prepared, ``DatasetError`` (one line) when
    the data changed since, and when several match (listing them).
    """
    found = [d for d in prepared(data) if (k is None or d.k == k) and (seed is None or d.seed == seed)]
    asked = "".join(f" {n}={v}" for n, v in (("K", k), ("SEED", seed)) if v is not None)
    if not found:
        others = [d for d in prepared() if (k is None or d.k == k) and (seed is None or d.seed == seed)]
        moved = _moved_here(Path(data), others)
        if moved is not None:
            raise DatasetError(
                f"{data}: no prepared dataset; {moved.id} was prepared from {moved.data}, which is gone, "
                "with the same train.csv: if the folder moved, run "
                f"`make folds DATA={data} K={moved.k} SEED={moved.seed}` "
                "to move the dataset here (its runs and predictions are kept)"
            )
        raise FileNotFoundError(f"{data}: no prepared dataset{' with' + asked if asked else ''}; "
                                f"run `make folds DATA={data}{asked}` first")
    sha = file_sha256(paths.data_files(data)["train"])
    checked = [(d, d.changed(sha)) for d in found]
    fresh = [d for d, why in checked if why is None]
    if len(fresh) == 1:
        return fresh[0]
    if len(fresh) > 1:
        listed = ", ".join(f"{d.id} (K={d.k} SEED={d.seed})" for d in fresh)
        raise DatasetError(
            f"{data}: {len(fresh)} prepared datasets match: {listed}; choose one with K= and SEED="
        )
    d, why = checked[-1] if len(checked) == 1 else max(checked, key=lambda c: c[0].root.stat().st_mtime)
    raise DatasetError(f"{data}: {why} since `make folds` prepared {d.id}; run "
                       f"`make folds DATA={data} K={d.k} SEED={d.seed}` again")


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

    def run_dir(self, name: str) -> Path:
        """The run folder of the member ``name`` (default: its model) on this fold."""
        return self._ds().run_dir(name, self.fold)

    def preds_dir(self, name: str) -> Path:
        """The prediction folder of the member ``name`` on this fold."""
        return self._ds().preds_dir(name, self.fold)

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
    """The fold ``fold`` of the dataset prepared from ``data`` (``resolve``)."""
    return resolve(data, k, seed).fold(fold)


def _load_fold(ds: Dataset, fold: int) -> FoldData:
    root, k = ds.root, ds.k
    meta = load_meta(root)
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} out of range for k={k} (valid: 0..{k - 1})")
    images = pd.read_csv(root / "images.csv")
    boxes = pd.read_csv(root / "boxes.csv")
    is_val = (images["fold"] == fold).to_numpy()
    is_train = trains_in(images["fold"], fold)
    val_names = set(images.loc[is_val, "NAME"])
    train_names = set(images.loc[is_train, "NAME"])
    fold_dir = root / f"fold{fold}"
    return FoldData(
        root=root,
        fold=fold,
        k=k,
        seed=ds.seed,
        images_dir=Path(meta["images_dir"]),
        train_boxes=boxes[boxes["NAME"].isin(train_names)].reset_index(drop=True),
        val_boxes=boxes[boxes["NAME"].isin(val_names)].reset_index(drop=True),
        val_images=images.loc[is_val, ["NAME", "width", "height"]].reset_index(drop=True),
        train_images=images.loc[is_train, ["NAME", "width", "height"]].reset_index(drop=True),
        yolo_yaml=fold_dir / "data.yaml",
        coco_train=fold_dir / "coco_train.json",
        coco_val=fold_dir / "coco_val.json",
        resize=meta.get("resize"),
        dataset=ds,
    )
