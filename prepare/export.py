"""Exports of a fold assignment in the layout of ``cytocore/dataset.py``.

``export_dataset(root, ...)`` writes, for every fold, the ultralytics dataset
(images LINKED into ``yolo/images``, or resized JPEG copies with ``resize``;
labels ``yolo/labels/<stem>.txt`` in normalised cxcywh; ``fold<f>/train.txt``,
``val.txt``, ``data.yaml``) and the COCO json files, plus ``images.csv``,
``boxes.csv`` (original pixels) and ``meta.json``. Everything is built in a
temporary folder beside ``root`` that replaces ``root`` only when complete, with
``meta.json`` written last. Box conversions go through ``cytocore.boxes``.

One label cache per fold list: ultralytics finds an image's label by replacing the
last ``/images/`` of its path with ``/labels/`` and keeps its scan in ``<labels
folder>.cache``. With every list naming ``yolo/images/...``, every fold's train and
val list shared ``yolo/labels.cache``, which concurrent jobs rewrote (and deleted at
start). So each list names its images through its own folder ``fold<f>/<part>/``,
whose ``images`` and ``labels`` are relative links to ``yolo/images`` and
``yolo/labels``: ultralytics reads the same files and writes
``fold<f>/<part>/labels.cache``, one per list.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cytocore import boxes as bx
from cytocore import classes, dataset
from cytocore.images import n_workers
from cytocore.tables import COORDS

log = logging.getLogger(__name__)

LAYOUT = 2  # version of the exported layout (2: per-list image folders); part of meta.json's export_key


def _per_image(names: np.ndarray, lines: list[str]) -> pd.Series:
    """Join each image's lines (one text per NAME, sorted by NAME, each line ending in a newline)."""
    order = np.argsort(names, kind="stable")
    sorted_names = names[order]
    starts = np.flatnonzero(np.r_[True, sorted_names[1:] != sorted_names[:-1]])
    ends = np.r_[starts[1:], len(order)]
    ordered = [lines[i] for i in order.tolist()]
    texts = ["".join(ordered[a:b]) for a, b in zip(starts.tolist(), ends.tolist())]
    return pd.Series(texts, index=sorted_names[starts])


def yolo_labels(boxes: pd.DataFrame) -> pd.Series:
    """Text of each image's label file (``"<id> cx cy w h"`` lines, normalised), indexed by NAME.

    ``boxes``: ``NAME,x1,y1,x2,y2,class,width,height`` in original pixels; normalised
    coordinates do not change when an image is resized, so the same labels serve both.
    """
    xyxy = boxes[list(COORDS)].to_numpy(dtype=np.float64)
    width, height = (boxes[c].to_numpy(dtype=np.float64) for c in ("width", "height"))
    cxcywh = bx.normalize(bx.convert(xyxy, "xyxy", "cxcywh"), width, height)
    ids = boxes["class"].map(classes.CLASS_TO_ID).to_numpy()
    lines = [f"{c} {x:.10f} {y:.10f} {w:.10f} {h:.10f}\n"
             for c, (x, y, w, h) in zip(ids.tolist(), cxcywh.tolist())]
    return _per_image(boxes["NAME"].to_numpy(dtype=object), lines)


def write_labels(label_dir: Path, boxes: pd.DataFrame) -> int:
    """Write ``label_dir/<stem>.txt`` for every image of ``boxes``; returns the file count."""
    label_dir.mkdir(parents=True, exist_ok=True)
    texts = yolo_labels(boxes)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for name, text in zip(texts.index.tolist(), texts.tolist()):
        fd = os.open(label_dir / f"{Path(name).stem}.txt", flags, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    return len(texts)


def link_images(image_dir: Path, sources: pd.Series) -> None:
    """Symlink ``image_dir/<NAME>`` -> the absolute source path, for each NAME -> path of ``sources``.

    Only the source FOLDERS are resolved: a raw image that is itself a link stays linked through
    the raw folder.
    """
    image_dir.mkdir(parents=True, exist_ok=True)
    folders: dict[Path, str] = {}  # resolve each source folder once, not each file
    for name, src in zip(sources.index.tolist(), sources.tolist()):
        src = Path(src)
        if src.parent not in folders:
            folders[src.parent] = str(src.parent.resolve())
        os.symlink(os.path.join(folders[src.parent], src.name), os.path.join(image_dir, name))


def resized_size(width: int, height: int, longest: int) -> tuple[int, int]:
    """Size with the longest side ``longest`` and the aspect ratio kept (each side >= 1)."""
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_images(image_dir: Path, sources: pd.Series, longest: int, quality: int = 95,
                  workers: int = 0) -> pd.DataFrame:
    """JPEG copies with the longest side ``longest`` in ``image_dir``; returns NAME,width,height."""
    from PIL import Image

    image_dir.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, str]) -> tuple[str, int, int]:
        name, src = item
        with Image.open(src) as im:
            rgb = im.convert("RGB")
        size = resized_size(rgb.width, rgb.height, longest)
        rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0).save(
            image_dir / name, format="JPEG", quality=quality)
        return name, size[0], size[1]

    with ThreadPoolExecutor(max_workers=n_workers(workers)) as pool:
        rows = list(pool.map(one, sources.items()))
    return pd.DataFrame(rows, columns=["NAME", "width", "height"])


def coco_items(boxes: pd.DataFrame, images: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The COCO json text of each image (``images`` order) and each box (``boxes`` order).

    ``images``: ``NAME,width,height`` of the EXPORTED images; image ids are ``1..N`` in
    ``images`` order, annotation ids ``1..M`` in ``boxes`` order. Boxes are scaled from
    their original size (``boxes.width/height``) to the exported one.
    """
    img_text = [
        f'{{"id":{i},"file_name":{json.dumps(n)},"width":{w},"height":{h}}}'
        for i, n, w, h in zip(range(1, len(images) + 1), images["NAME"].tolist(),
                              images["width"].astype(int).tolist(), images["height"].astype(int).tolist())
    ]
    image_id = pd.Series(np.arange(1, len(images) + 1), index=images["NAME"].to_numpy())
    size = images.set_index("NAME")[["width", "height"]].reindex(boxes["NAME"]).to_numpy(dtype=np.float64)
    norm = bx.normalize(boxes[list(COORDS)].to_numpy(dtype=np.float64),
                        boxes["width"].to_numpy(dtype=np.float64), boxes["height"].to_numpy(dtype=np.float64))
    xywh = bx.convert(bx.denormalize(norm, size[:, 0], size[:, 1]), "xyxy", "xywh")
    cat = (boxes["class"].map(classes.CLASS_TO_ID).to_numpy() + 1).tolist()
    img_of_box = image_id.reindex(boxes["NAME"]).to_numpy().tolist()
    ann_text = [
        f'{{"id":{a},"image_id":{i},"category_id":{c},"bbox":[{x!r},{y!r},{w!r},{h!r}],'
        f'"area":{w * h!r},"iscrowd":0}}'
        for a, i, c, (x, y, w, h) in zip(range(1, len(boxes) + 1), img_of_box, cat, xywh.tolist())
    ]
    return np.array(img_text, dtype=object), np.array(ann_text, dtype=object)


def coco_text(img_text: np.ndarray, ann_text: np.ndarray, img_mask: np.ndarray, ann_mask: np.ndarray) -> str:
    """A COCO detection json document of the selected images and boxes."""
    cats = json.dumps([{"id": i + 1, "name": c, "supercategory": "leukocyte"}
                       for i, c in enumerate(classes.CLASSES)])
    imgs = ",".join(img_text[img_mask])
    anns = ",".join(ann_text[ann_mask])
    return f'{{"images":[{imgs}],"annotations":[{anns}],"categories":{cats}}}'


def list_folder(fold_dir: Path, part: str) -> Path:
    """``fold_dir/<part>/`` with ``images`` and ``labels`` linked (relative links, so the folder can be
    built in a temporary place and moved) to the dataset's ``yolo/images`` and ``yolo/labels``:
    ultralytics keeps this list's label cache in ``<part>/labels.cache``, shared with no other list."""
    folder = fold_dir / part
    folder.mkdir(parents=True)
    for name in ("images", "labels"):
        os.symlink(os.path.join("..", "..", "yolo", name), folder / name, target_is_directory=True)
    return folder


def write_folds(tmp: Path, root: Path, images: pd.DataFrame, exported: pd.DataFrame,
                boxes: pd.DataFrame, k: int) -> None:
    """Per fold: train.txt/val.txt (absolute paths under ``root/fold<f>/<part>/images``, see
    ``list_folder``), data.yaml, COCO train/val.

    ``images`` (with ``fold``) and ``exported`` are in the same NAME order.
    """
    img_text, ann_text = coco_items(boxes, exported)
    img_fold = images["fold"].to_numpy()
    box_fold = boxes["NAME"].map(images.set_index("NAME")["fold"]).to_numpy()
    names = images["NAME"].to_numpy()
    for fold in range(k):
        fold_dir = tmp / f"fold{fold}"
        fold_dir.mkdir(parents=True)
        for part, is_part in (("train", dataset.trains_in), ("val", np.equal)):
            mask = is_part(img_fold, fold)
            list_folder(fold_dir, part)
            final_images = root / f"fold{fold}" / part / "images"
            (fold_dir / f"{part}.txt").write_text("".join(f"{final_images / n}\n" for n in names[mask]))
            coco = coco_text(img_text, ann_text, mask, is_part(box_fold, fold))
            (fold_dir / f"coco_{part}.json").write_text(coco)
        data_yaml = {
            "path": str(root),
            "train": str(root / f"fold{fold}" / "train.txt"),
            "val": str(root / f"fold{fold}" / "val.txt"),
            "nc": classes.NUM_CLASSES,
            "names": list(classes.CLASSES),
        }
        (fold_dir / "data.yaml").write_text(yaml.safe_dump(data_yaml, sort_keys=False))


def export_dataset(root: Path, *, images: pd.DataFrame, boxes: pd.DataFrame, meta: dict,
                   resize: int | None = None, quality: int = 95, workers: int = 0,
                   tables: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write the prepared dataset at ``root`` (replacing any older one once complete).

    ``images``: ``NAME,width,height,fold,group,path`` (``path`` = the file to export);
    ``boxes``: cleaned ``NAME,x1,y1,x2,y2,class,width,height``; ``meta``: the entries of
    meta.json besides ``resize``, ``classes``, ``n_images``, ``n_boxes``; ``tables``: more
    CSV files of the dataset by file name (``source.csv``).
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    images = images.sort_values("NAME").reset_index(drop=True)
    try:
        tmp.mkdir()
        sources = pd.Series(images["path"].astype(str).to_numpy(), index=images["NAME"].to_numpy())
        if resize:
            exported = resize_images(tmp / "yolo" / "images", sources, resize, quality, workers)
            exported = exported.sort_values("NAME").reset_index(drop=True)
        else:
            link_images(tmp / "yolo" / "images", sources)
            exported = images[["NAME", "width", "height"]]
        write_labels(tmp / "yolo" / "labels", boxes)
        write_folds(tmp, root, images, exported, boxes, int(meta["k"]))
        images[["NAME", "width", "height", "fold", "group"]].to_csv(tmp / "images.csv", index=False)
        boxes.to_csv(tmp / "boxes.csv", index=False)
        for name, table in (tables or {}).items():
            table.to_csv(tmp / name, index=False)
        full = {**meta, "resize": resize or None, "classes": list(classes.CLASSES),
                "n_images": int(len(images)), "n_boxes": int(len(boxes))}
        (tmp / "meta.json").write_text(json.dumps(full, indent=2))
        swap_in(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def swap_in(new: Path, root: Path) -> None:
    """Replace ``root`` by the complete folder ``new`` (two renames; the old one is removed)."""
    old = root.parent / f".{root.name}.old-{os.getpid()}"
    if root.exists():
        os.replace(root, old)
    os.replace(new, root)
    shutil.rmtree(old, ignore_errors=True)


def plot_counts(counts: pd.DataFrame, path: Path) -> Path:
    """Bar plot of a per-fold per-class box count table (rows ``fold``, columns classes), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cytocore.io import atomic_write

    cols = [c for c in classes.CLASSES if c in counts.columns]
    share = counts[cols].div(counts[cols].sum(axis=1), axis=0) * 100
    fig, ax = plt.subplots(figsize=(14, 5))
    width = 0.8 / max(1, len(share))
    x = np.arange(len(cols))
    for i, (fold, row) in enumerate(share.iterrows()):
        ax.bar(x + i * width, row.to_numpy(), width, label=f"fold {fold}")
    ax.set_xticks(x + 0.4 - width / 2, cols, rotation=60, ha="right")
    ax.set_ylabel("share of the fold's boxes (%)")
    ax.set_title("Boxes per class in each fold")
    ax.legend(ncol=len(share), fontsize="small", loc="lower right", bbox_to_anchor=(1.0, 1.0))  # above, right
    fig.tight_layout()
    with atomic_write(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path
