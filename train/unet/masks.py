"""Cell masks from boxes, cached per image, for the UNet.

    python -m train.unet.masks --data DATA --k K --seed SEED [--medsam-ckpt PATH|auto] [--device cpu|cuda]
                            [--config configs/masks.yaml] [--force] [key=value ...]

Reads the prepared dataset (``cytocore/dataset.py``; run ``make folds`` first) and
writes, under ``work/masks/<dataset key>/``::

    meta.json     method, checkpoint, the resolved config, "complete" once every image is done
    <stem>.png    uint8 label map at the ORIGINAL image size: 0 background, 1 + class id per cell

Each box becomes one cell mask: MedSAM (``prepare/medsam.py``) when a
checkpoint is given, else the classical fallback (``prepare/mask_fallback.py``,
GrabCut by default). Where cells overlap, the smaller one is painted on top.
A rerun with the same settings only does the missing images; other settings
(or ``--force``) redo them all.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cytocore import classes, config, env, paths
from cytocore.io import atomic_write, atomic_write_text, cli, setup_logging
from cytocore.tables import COORDS

log = logging.getLogger(__name__)

DEFAULT_CONFIG = paths.CONFIGS / "masks.yaml"
METHODS = ("auto", "medsam", "grabcut", "stain")


@dataclasses.dataclass
class MasksConfig:
    """Settings of mask making (configs/masks.yaml documents each key)."""

    method: str = "auto"  # auto | medsam | grabcut | stain
    fallback: str = "grabcut"  # classical method used by auto without a checkpoint
    grabcut_iters: int = 3  # GrabCut iterations per box
    margin: float = 0.15  # background margin around a box, fraction of its size
    min_fill: float = 0.15  # smallest mask/box area ratio before the ellipse replaces it
    medsam_arch: str = "vit_b"  # SAM architecture of the checkpoint
    medsam_preprocess: str = "medsam"  # medsam | sam
    medsam_batch: int = 4  # images per encoder forward
    workers: int = 1  # processes for the classical fallback


def masks_dir(dataset_root: Path) -> Path:
    """``work/masks/<dataset key>/`` of a prepared dataset folder."""
    return paths.masks_dir(Path(dataset_root).name)


def mask_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{Path(name).stem}.png"


def read_mask(folder: Path, name: str) -> np.ndarray:
    """The (H, W) uint8 label map of image ``name`` (0 background, 1 + class id)."""
    path = mask_path(folder, name)
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise FileNotFoundError(f"{path}: mask not found; run `make masks` for this dataset")
    return mask


def paint(masks: np.ndarray, labels, height: int, width: int) -> np.ndarray:
    """Label map from per-box bool masks (N, H, W) and class ids: larger cells first."""
    out = np.zeros((height, width), dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    areas = masks.reshape(len(masks), -1).sum(axis=1) if len(masks) else np.zeros(0)
    for i in np.argsort(-areas, kind="stable"):
        out[masks[i]] = labels[i] + 1
    return out


def resolve_method(cfg: MasksConfig, ckpt: Path | None) -> str:
    """The method actually used: medsam, grabcut or stain."""
    if cfg.method not in METHODS:
        raise config.ConfigError(f"masks: unknown method {cfg.method!r}; valid: {', '.join(METHODS)}")
    method = cfg.method if cfg.method != "auto" else ("medsam" if ckpt else cfg.fallback)
    if method == "medsam" and ckpt is None:
        raise config.ConfigError(
            "masks: method medsam needs a checkpoint (--medsam-ckpt PATH / MEDSAM_CKPT=)")
    if method not in ("medsam", "grabcut", "stain"):
        raise config.ConfigError(f"masks: unknown fallback {method!r}; valid: grabcut, stain")
    return method


def _signature(cfg: MasksConfig, method: str, ckpt: Path | None) -> dict:
    keep = {"grabcut_iters", "margin", "min_fill"} if method != "medsam" else {
        "min_fill", "medsam_arch", "medsam_preprocess"}
    sig = {"method": method, **{k: v for k, v in config.to_dict(cfg).items() if k in keep}}
    if ckpt is not None and method == "medsam":
        sig["checkpoint"] = str(Path(ckpt).resolve())
        sig["checkpoint_bytes"] = Path(ckpt).stat().st_size
    return sig


def _write_png(path: Path, label_map: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", label_map)
    if not ok:
        raise ValueError(f"{path}: cannot encode mask as PNG")
    with atomic_write(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def _fallback_one(job: tuple) -> tuple[str, np.ndarray]:
    """(name, label map) of one image with the classical method (runs in worker processes)."""
    from cytocore.images import load_rgb
    from train.unet.fallback import box_masks

    name, image_path, xyxy, labels, method, kwargs = job
    image = load_rgb(image_path)
    masks = box_masks(image, xyxy, method, **kwargs)
    return name, paint(masks, labels, *image.shape[:2])


def make_masks(
    dataset_root: Path,
    cfg: MasksConfig | None = None,
    ckpt: Path | None = None,
    device: str = "cpu",
    force: bool = False,
    medsam_spec=None,
) -> Path:
    """Write the label maps of every image of a prepared dataset; return the mask folder."""
    from tqdm import tqdm

    from cytocore.dataset import load_meta

    cfg = cfg or MasksConfig()
    method = resolve_method(cfg, ckpt)
    meta = load_meta(dataset_root)
    images_dir = Path(meta["images_dir"])
    boxes = pd.read_csv(Path(dataset_root) / "boxes.csv")
    names = pd.read_csv(Path(dataset_root) / "images.csv")["NAME"].tolist()
    out = masks_dir(dataset_root)
    sig = _signature(cfg, method, ckpt)
    meta_path = out / "meta.json"
    old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    redo = force or old.get("signature") != sig
    if redo and out.exists():  # masks of other settings must not mix with the new ones
        for stale in out.glob("*.png"):
            stale.unlink()
    todo = [n for n in names if not mask_path(out, n).exists()]
    _write_meta(meta_path, sig, cfg, dataset_root, complete=False, n_images=len(names))
    log.info("masks: %s for %d of %d images -> %s", method, len(todo), len(names), out)
    groups = {n: g for n, g in boxes.groupby("NAME", sort=False)}
    jobs = []
    for name in todo:
        g = groups.get(name)
        if g is None:
            jobs.append((name, images_dir / name, np.zeros((0, 4)), np.zeros(0, np.int64)))
            continue
        labels = g["class"].map(classes.CLASS_TO_ID).to_numpy(np.int64)
        jobs.append((name, images_dir / name, g[COORDS].to_numpy(np.float64), labels))
    bar = tqdm(total=len(jobs), desc=f"masks ({method})", unit="img", disable=None)
    if method == "medsam":
        _run_medsam(jobs, cfg, ckpt, device, out, bar, medsam_spec)
    else:
        kwargs = {"iters": cfg.grabcut_iters, "margin": cfg.margin, "min_fill": cfg.min_fill}
        full = [(*job, method, kwargs) for job in jobs]
        if cfg.workers > 1 and len(full) > 1:
            with ProcessPoolExecutor(cfg.workers) as pool:
                for name, label_map in pool.map(_fallback_one, full, chunksize=8):
                    _write_png(mask_path(out, name), label_map)
                    bar.update()
        else:
            for job in full:
                name, label_map = _fallback_one(job)
                _write_png(mask_path(out, name), label_map)
                bar.update()
    bar.close()
    _write_meta(meta_path, sig, cfg, dataset_root, complete=True, n_images=len(names))
    return out


def _run_medsam(jobs, cfg: MasksConfig, ckpt: Path, device: str, out: Path, bar, spec=None) -> None:
    from cytocore.images import load_rgb
    from train.unet import medsam
    from train.unet.fallback import finish

    if spec is None:
        if cfg.medsam_arch not in medsam.SPECS:
            raise config.ConfigError(
                f"masks: unknown medsam_arch {cfg.medsam_arch!r}; valid: {', '.join(medsam.SPECS)}")
        spec = medsam.SPECS[cfg.medsam_arch]
    model = medsam.MedSam.from_checkpoint(
        ckpt, spec, device=device, preprocess=cfg.medsam_preprocess, batch=cfg.medsam_batch)
    step = max(1, cfg.medsam_batch)
    for start in range(0, len(jobs), step):
        chunk = jobs[start:start + step]
        images = [load_rgb(job[1]) for job in chunk]
        raw = model.segment(images, [job[2] for job in chunk])
        for (name, _, xyxy, labels), image, masks in zip(chunk, images, raw):
            h, w = image.shape[:2]
            done = np.stack([finish(m, b, cfg.min_fill) for m, b in zip(masks, xyxy)]) if len(xyxy) else masks
            _write_png(mask_path(out, name), paint(done, labels, h, w))
            bar.update()


def _write_meta(path: Path, sig: dict, cfg: MasksConfig, root: Path, complete: bool, n_images: int) -> None:
    body = {"signature": sig, "config": config.to_dict(cfg), "dataset": str(Path(root).resolve()),
            "n_images": n_images, "complete": complete}
    atomic_write_text(path, json.dumps(body, indent=2))


def ensure_masks(dataset_root: Path, cfg: MasksConfig | None = None) -> Path:
    """The mask folder of a dataset; made with the classical fallback when none is complete."""
    out = masks_dir(dataset_root)
    meta_path = out / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("complete"):
        return out
    log.warning("no complete masks in %s: making them with the classical fallback "
                "(run `make masks MEDSAM_CKPT=path` for MedSAM masks)", out)
    return make_masks(dataset_root, cfg or config.load(MasksConfig, DEFAULT_CONFIG))


def main(argv: list[str] | None = None) -> int:
    env.apply()
    parser = argparse.ArgumentParser(prog="python -m train.unet.masks", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="challenge data folder (train.csv, images/)")
    parser.add_argument("--k", type=int, help="folds of the prepared dataset (default: as prepared)")
    parser.add_argument("--seed", type=int, help="fold seed of the prepared dataset (default: as prepared)")
    parser.add_argument("--medsam-ckpt", default=None,
                        help="local MedSAM (SAM ViT-B) checkpoint, or auto: weights/medsam_vit_b.pth")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="masks config YAML")
    parser.add_argument("--force", action="store_true", help="redo every mask")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = config.load(MasksConfig, args.config, args.overrides)
    from cytocore import dataset

    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    from train.weights import resolve

    ckpt = resolve(args.medsam_ckpt, f"medsam:{cfg.medsam_arch}", "masks") if args.medsam_ckpt else None
    root = dataset.resolve(args.data, args.k, args.seed).root
    out = make_masks(root, cfg, ckpt, device, args.force)
    print(f"masks: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(main))
