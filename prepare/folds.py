"""``make folds``: clean the train boxes, group duplicates, make K stratified folds, export.

    python -m prepare.folds --data data/raw --k 5 --seed 42 [--balance 600] [--repair]
                            [--force] [--resize 512] [--config configs/folds.yaml] [key=value ...]

Steps: read train.csv (``cytocore.tables``); check, size and hash every image
(``prepare.sizes``, cached); the dataset id (``cytocore.dataset.id_for``: the data
folder, K, SEED and the source fingerprint of train.csv and the images' contents);
perceptual hashes (``prepare.dedup``, cached); clean (``prepare.clean``); optional
balancing; duplicate groups; folds grouped by duplicate group and
multilabel-stratified on class presence; the fold file ``work/folds/<id>/folds.csv``
(``NAME,fold,group``) with its sidecar JSON (input fingerprint), cleaning report,
per-fold class counts (CSV + PNG) and resolved config; then the YOLO/COCO exports
of ``cytocore/dataset.py`` under ``work/datasets/<id>/``.

The fold file is written once: a rerun with the same inputs reuses it, other
settings on the same data are an error unless ``--force``. The core (``make_folds``,
``fold_counts``, ``fingerprint``) is pure: DataFrames in, DataFrames out.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytocore import classes, config, dataset, env, io, paths, tables
from prepare import clean, dedup, export, sizes

log = logging.getLogger(__name__)
DEFAULT_CONFIG = paths.CONFIGS / "folds.yaml"
# Settings that do not change the fold file (left out of its fingerprint).
NOT_IN_FINGERPRINT = ("resize", "jpeg_quality", "workers")
# Keys added after fold files were made, at the value that keeps the folds as before: left out of the
# fingerprint at that value, so a kit upgrade does not refuse (or, with --force, replace) existing folds.
NEUTRAL = {"assign": ""}


def fingerprint_settings(cfg: Any, neutral: bool = False) -> dict:
    """The settings that shape the folds: what ``fingerprint`` digests. ``neutral``: keep the keys at
    their neutral value too, as the kits between a key's arrival and ``NEUTRAL`` digested them."""
    return {k: v for k, v in config.to_dict(cfg).items()
            if k not in NOT_IN_FINGERPRINT and (neutral or not (k in NEUTRAL and v == NEUTRAL[k]))}


@dataclasses.dataclass
class FoldsConfig:
    """Settings of ``make folds`` (documented key by key in configs/folds.yaml)."""

    k: int = dataset.DEFAULT_K
    seed: int = dataset.DEFAULT_SEED
    balance: int = 0
    resize: int = 0
    min_side: float = 2.0
    same_class_iou: float = 0.7
    cross_class_iou: float = 0.7
    cross_class_policy: str = "keep_both"
    hash_method: str = "phash"
    hash_size: int = 8
    hash_distance: int = 2
    group_warn_size: int = 10
    jpeg_quality: int = 95
    workers: int = 0
    assign: str = ""

    def __post_init__(self) -> None:
        checks = [
            (self.k >= 2, "k must be at least 2"),
            (self.balance >= 0, "balance must be >= 0 (0 = off)"),
            (self.resize >= 0, "resize must be >= 0 (0 = off)"),
            (self.min_side >= 0, "min_side must be >= 0"),
            (0 <= self.same_class_iou <= 1 and 0 <= self.cross_class_iou <= 1,
             "IoU thresholds must be in [0, 1]"),
            (self.cross_class_policy in clean.POLICIES,
             f"cross_class_policy must be one of {', '.join(clean.POLICIES)}"),
            (self.hash_method in dedup.METHODS, f"hash_method must be one of {', '.join(dedup.METHODS)}"),
            (self.hash_size >= 2, "hash_size must be >= 2"),
            (self.hash_distance >= 0, "hash_distance must be >= 0"),
            (1 <= self.jpeg_quality <= 100, "jpeg_quality must be in 1..100"),
        ]
        for ok, message in checks:
            if not ok:
                raise config.ConfigError(f"folds config: {message}")


def class_table(keys: pd.Series, cls: pd.Series) -> pd.DataFrame:
    """Boxes per key (rows, sorted) and class (the 23 columns, kit order)."""
    codes, uniques = pd.factorize(keys, sort=True)
    ids = pd.Categorical(cls, categories=classes.CLASSES).codes
    counts = np.zeros((len(uniques), classes.NUM_CLASSES), dtype=np.int64)
    np.add.at(counts, (codes, ids), 1)
    return pd.DataFrame(counts, index=pd.Index(uniques), columns=list(classes.CLASSES))


def make_folds(boxes: pd.DataFrame, groups: pd.Series | None, k: int, seed: int) -> pd.DataFrame:
    """``NAME,fold,group`` for every image of ``boxes`` (sorted by NAME), deterministic for ``seed``.

    Groups (``groups``: id by NAME; None = each image its own group) never span two
    folds. Groups are split with iterative stratification (MultilabelStratifiedKFold)
    on the presence of each class in the group, then mapped back to their images.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    presence = class_table(boxes["NAME"], boxes["class"]) > 0
    names = presence.index
    if groups is None:
        group = pd.Series(np.arange(len(names)), index=names)
    else:
        group = groups.reindex(names)
        if group.isna().any():
            first = group.index[group.isna()][0]
            raise ValueError(f"{int(group.isna().sum())} image(s) have no group, e.g. {first}")
        group = group.astype(np.int64)
    per_group = presence.groupby(group.to_numpy()).max()
    if len(per_group) < k:
        raise ValueError(f"cannot make {k} folds from {len(per_group)} image group(s)")
    labels = per_group.to_numpy(dtype=np.int8)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    fold_of_group = np.full(len(per_group), -1, dtype=np.int64)
    for fold, (_, test) in enumerate(splitter.split(np.zeros((len(labels), 1)), labels)):
        fold_of_group[test] = fold
    fold = pd.Series(fold_of_group, index=per_group.index)
    return pd.DataFrame({
        "NAME": names.to_numpy(),
        "fold": fold.reindex(group.to_numpy()).to_numpy(),
        "group": group.to_numpy(),
    })


def fold_counts(folds: pd.DataFrame, boxes: pd.DataFrame) -> pd.DataFrame:
    """Boxes per fold (rows) and class (columns, kit order), plus ``images`` and ``boxes`` totals."""
    fold = boxes["NAME"].map(folds.set_index("NAME")["fold"])
    table = class_table(fold, boxes["class"])
    table.index.name = "fold"
    table.insert(0, "boxes", table.sum(axis=1))
    table.insert(0, "images", folds.groupby("fold")["NAME"].size().reindex(table.index).to_numpy())
    return table


def fingerprint(boxes: pd.DataFrame, groups: pd.Series, settings: dict) -> str:
    """A sha256 of the cleaned boxes, the duplicate groups and the settings that shape the folds."""
    digest = hashlib.sha256()
    table = boxes[["NAME", *tables.COORDS, "class"]].sort_values(["NAME", *tables.COORDS, "class"])
    digest.update(table.to_csv(index=False, float_format="%.6f").encode())
    digest.update(groups.sort_index().to_csv().encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m prepare.folds", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=paths.DEFAULT_DATA, help="folder with train.csv and images/")
    p.add_argument("--k", type=int, help="number of folds (config: k)")
    p.add_argument("--seed", type=int, help="fold seed (config: seed)")
    p.add_argument("--balance", type=int, help="keep about N boxes per class, by whole images (0 = off)")
    p.add_argument("--resize", type=int, help="export JPEG copies with this longest side (0 = links)")
    p.add_argument("--repair", action="store_true", help="use re-encoded copies of truncated images")
    p.add_argument("--force", action="store_true", help="replace a fold file made from other inputs")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML of FoldsConfig")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p.parse_args(argv)


def load_config(args: argparse.Namespace) -> FoldsConfig:
    flags = {k: getattr(args, k) for k in ("k", "seed", "balance", "resize") if getattr(args, k) is not None}
    overrides = {**config.parse_overrides(args.overrides), **flags}
    return config.load(FoldsConfig, args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    env.apply()
    args = parse_args(argv)
    io.setup_logging(args.verbose)
    cfg = load_config(args)
    run(Path(args.data), cfg, repair=args.repair, force=args.force)
    return 0


def run(data: Path, cfg: FoldsConfig, *, repair: bool = False, force: bool = False) -> Path:
    """The whole step on the data folder ``data``; returns the prepared dataset folder."""
    files = paths.data_files(data)
    boxes = tables.read_train(files["train"])
    train_sha = dataset.file_sha256(files["train"])
    images = sizes.inspect_images(data, boxes, repair=repair, workers=cfg.workers)
    source = dataset.source_fingerprint(train_sha, images)
    ds_id, note = dataset.id_for(data, cfg.k, cfg.seed, source)
    if note:
        print(note)
    cache = sizes.cache_root(data) / f"hashes_{cfg.hash_method}{cfg.hash_size}.csv"
    hashes = dedup.compute_hashes(images, cache, cfg.hash_method, cfg.hash_size, cfg.workers)

    cleaned, report = clean.clean(
        boxes, images[["NAME", "width", "height"]], min_side=cfg.min_side, same_class_iou=cfg.same_class_iou,
        cross_class_iou=cfg.cross_class_iou, cross_class_policy=cfg.cross_class_policy)
    if cfg.balance:
        before = cleaned
        cleaned, detail = clean.balance(cleaned, cfg.balance, cfg.seed)
        report.add("balance", before, cleaned, **detail)
    groups = dedup.group_duplicates(hashes.reindex(cleaned["NAME"].unique()), cfg.hash_distance)
    summary = dedup.group_summary(groups)
    if summary["largest_group"] > cfg.group_warn_size:
        log.warning("a duplicate group holds %d images (> group_warn_size %d): "
                    "is hash_distance %d too loose?",
                    summary["largest_group"], cfg.group_warn_size, cfg.hash_distance)

    settings = fingerprint_settings(cfg)
    digest = fingerprint(cleaned, groups, settings)
    fold_file = paths.fold_file(ds_id)
    folds = reuse_folds(fold_file, digest, force, paths.dataset_runs(ds_id),
                        also=fingerprint(cleaned, groups, fingerprint_settings(cfg, neutral=True)))
    print(report.table())
    print(f"duplicate groups: {summary['duplicate_groups']} group(s) of 2+ images holding "
          f"{summary['images_in_duplicate_groups']} images, the largest {summary['largest_group']}")
    if folds is None:
        if cfg.assign:  # the folds of another dataset's fold file, image by image
            folds = assigned_folds(Path(cfg.assign), cleaned["NAME"], cfg.k)
        else:
            try:
                folds = make_folds(cleaned, groups, cfg.k, cfg.seed)
            except ValueError as exc:  # too few images for k folds
                raise io.DataError(io.Problem(str(files["train"]), str(exc))) from None
        counts = fold_counts(folds, cleaned)
        write_outputs(fold_file, folds, counts, cfg, {
            "fingerprint": digest, "data": str(Path(data).resolve()), "settings": settings,
            "duplicates": summary, "cleaning": report.to_dict(), "assigned_from": cfg.assign or None,
            "repaired": images.loc[images["repaired"], "NAME"].tolist()})
        print(f"wrote {fold_file}")
    else:
        counts = fold_counts(folds, cleaned)
        print(f"reusing {fold_file} (same inputs)")
    print(counts[["images", "boxes"]].T.to_string())

    root = paths.dataset_root(ds_id)
    table = images[["NAME", "width", "height", "path", "sha1"]].merge(folds, on="NAME")
    export_key = hashlib.sha256(json.dumps([digest, cfg.resize, cfg.jpeg_quality, export.LAYOUT]).encode()
                                + table.astype(str).to_csv(index=False).encode()).hexdigest()
    recorded = images[["NAME", "bytes", "mtime_ns", "sha1"]]
    record = {"train_csv_sha256": train_sha, "fingerprint": source, "images": len(images)}
    meta_path = root / "meta.json"
    old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if old.get("export_key") == export_key and old.get("source") == record:
        io.atomic_write_df(recorded, root / dataset.SOURCE_FILE)  # the images' mtimes may have moved
        print(f"dataset up to date: {root}")
        return root
    meta = {"data": str(Path(data).resolve()), "images_dir": str(files["images"].resolve()), "k": cfg.k,
            "seed": cfg.seed, "fold_file": str(fold_file), "fingerprint": digest, "export_key": export_key,
            "source": record}
    export.export_dataset(root, images=table, boxes=cleaned, meta=meta, resize=cfg.resize or None,
                          quality=cfg.jpeg_quality, workers=cfg.workers,
                          tables={dataset.SOURCE_FILE: recorded})
    print(f"wrote dataset {root} (id {ds_id})")
    return root


def assigned_folds(fold_file: Path, names: pd.Series, k: int) -> pd.DataFrame:
    """``NAME,fold,group`` of ``names`` (sorted) as another dataset's fold file ``fold_file`` assigns them:
    a second round on changed labels keeps each image in its fold. An image it lacks is an error; fold
    ``dataset.TRAIN_ONLY`` (a pseudo-labelled image) is in every fold's training list and no fold's
    validation list, ``dataset.train_only_in(f)`` in fold f's training list only (``dataset.trains_in``)."""
    if not fold_file.is_file():
        raise FileNotFoundError(f"{fold_file}: no such fold file (folds config: assign)")
    table = pd.read_csv(fold_file, dtype={"NAME": str}).drop_duplicates("NAME").set_index("NAME")
    wanted = pd.Index(sorted(pd.unique(names)))
    absent = wanted.difference(table.index)
    if len(absent):
        raise io.DataError(io.Problem(str(fold_file), f"{len(absent)} image(s) of the data have no fold "
                                                      f"there, e.g. {absent[0]}"))
    out = table.loc[wanted, ["fold", "group"]].rename_axis("NAME").reset_index()
    held = out["fold"][out["fold"] >= 0]  # pseudo-labelled images (negative codes): never held out
    if not dataset.valid_codes(out["fold"], k).all() or held.nunique() < k:
        raise io.DataError(io.Problem(str(fold_file), f"its folds {sorted(out['fold'].unique())} are not "
                                                      f"0..{k - 1} for k={k}"))
    return out


def reuse_folds(fold_file: Path, digest: str, force: bool, runs: Path | None = None,
                also: str = "") -> pd.DataFrame | None:
    """The existing fold table when it was made from the same inputs (its fingerprint ``digest``, or
    ``also``: the same inputs as an earlier kit digested them); None to (re)make it.

    Raises ``FileExistsError`` when it was made from other inputs and ``force`` is off;
    with ``force``, warns when ``runs`` (the dataset's training runs) were made on the old folds.
    """
    if not fold_file.exists():
        return None
    sidecar = sidecar_path(fold_file)
    old = json.loads(sidecar.read_text()).get("fingerprint") if sidecar.exists() else None
    if old is not None and old in (digest, also):
        return pd.read_csv(fold_file, dtype={"NAME": str})
    if force:
        log.warning("replacing %s (made from other inputs) because of --force", fold_file)
        if runs is not None and runs.is_dir() and any(runs.iterdir()):
            log.warning("the runs in %s were trained on the replaced folds: train them again with --force",
                        runs)
        return None
    made = (f"made from other inputs (fingerprint {old[:12]}, now {digest[:12]})" if old
            else "without its sidecar")
    raise FileExistsError(
        f"{fold_file} exists and was {made}; rerun with --force to replace it "
        "(or choose another --seed / --k)")


def sidecar_path(fold_file: Path) -> Path:
    return fold_file.with_suffix(".json")


def write_outputs(fold_file: Path, folds: pd.DataFrame, counts: pd.DataFrame, cfg: FoldsConfig,
                  sidecar: dict) -> None:
    """Fold file, count table + plot, cleaning report, resolved config (``<stem>_counts.csv``, ...);
    the sidecar JSON last."""
    stem = fold_file.with_suffix("")
    io.atomic_write_df(counts.reset_index(), Path(f"{stem}_counts.csv"))
    export.plot_counts(counts, Path(f"{stem}_counts.png"))
    report = {k: sidecar[k] for k in ("cleaning", "duplicates", "repaired")}
    io.atomic_write_text(Path(f"{stem}_report.json"), json.dumps(report, indent=2))
    config.save(cfg, Path(f"{stem}_config.yaml"))
    io.atomic_write_df(folds, fold_file)
    io.atomic_write_text(sidecar_path(fold_file), json.dumps(sidecar, indent=2))


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
