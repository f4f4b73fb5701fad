"""Pseudo-labels (the 1st place's lever): round one's confident test predictions train round two.

After round one, the tuned ensemble has predicted every test image (the submission's fused,
classified table). ``select`` keeps a test image as training data when its every cell is sure:

- the image has at least as many boxes as its test.csv rows (its number of cells ``n``), and
- each of its top-``n`` boxes by fused score (the ones the submission keeps) has a calibrated
  confidence >= ``conf`` (``infer.calibrate``: the probability that a box of this score is right,
  box and class, fitted on the out-of-fold table; so the threshold is chosen out-of-fold), and
- with ``agree``, the detectors' class of each of those boxes is the blended (classifier) class.

A partly sure image is left out whole: a detector learns every unlabelled cell of a training image
as background. ``cap`` keeps at most ``share`` of round two's training images pseudo-labelled
(a random draw, seeded), so on average a batch holds at most that share of them.

Whose predictions (``labels``):

- ``fold`` (default): round two's fold f learns the test images as round one's fold f predicted them
  (its detectors fused, its classifier; ``fold_predictions``), the models that never saw fold f's
  images. So round two's out-of-fold score is as clean as round one's: no label of fold f's images
  reaches fold f's models through a pseudo label. A test image sure for several folds is a training
  image of each, once per fold with that fold's boxes (an alias name, ``alias_name``).
- ``ensemble``: every fold learns the all-fold ensemble's predictions (the submission's table): better
  labels, but they come from models that saw every train image, so round two's out-of-fold score is
  optimistic; decide on the test split (where there is one) or use ``fold``.

Round two (``pipeline.run``) trains the same recipe on a NEW data folder (``prepare.derive``):
train.csv = round one's boxes + the pseudo boxes, ``pseudo_labels.csv`` and ``pseudo.json``
beside it, and ``pseudo_folds.csv``: each train image in its round-one fold and each pseudo image
in ``cytocore.dataset.train_only_in(f)`` (only fold f trains on it) or, for ``ensemble`` labels,
``TRAIN_ONLY`` (every fold trains on it); no fold validates on it. So round two's out-of-fold table
covers the same images with the same truth as round one's, and ``compare_rounds`` scores both
against round one's truth with a paired bootstrap interval over images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytocore import config as kit_config
from cytocore import dataset
from cytocore.tables import COORDS
from train.cls.classify import top_rows

LABELS_FILE = "pseudo_labels.csv"  # the selected boxes (run logs, and beside round two's train.csv)
SUMMARY_FILE = "pseudo.json"  # beside round two's train.csv: settings, counts, where it came from
FOLDS_FILE = "pseudo_folds.csv"  # beside it: NAME,fold,group of round two (prepare.folds' assign)
LABEL_COLUMNS = ["NAME", *COORDS, "class", "score", "confidence", "detector_class"]
LABEL_SOURCES = ("fold", "ensemble")  # whose predictions label the test images (module doc)


@dataclasses.dataclass
class PseudoConfig:
    """The recipe's ``pseudo`` section."""

    conf: float = 0.9  # each kept box: calibrated confidence (P(box and class right), out-of-fold) >= this
    agree: bool = True  # each kept box: the detectors' class is the blended class
    share: float = 0.3  # at most this share of round two's training images are pseudo-labelled
    seed: int = 0  # the draw when more images qualify than ``share`` allows
    labels: str = "fold"  # fold: fold f learns round one's fold f (clean out-of-fold) | ensemble: all folds'

    def __post_init__(self) -> None:
        if not (0 < self.conf <= 1 and 0 < self.share < 1):
            raise kit_config.ConfigError(f"pseudo: need 0 < conf <= 1 and 0 < share < 1 "
                                         f"(conf={self.conf}, share={self.share})")
        if self.labels not in LABEL_SOURCES:
            raise kit_config.ConfigError(f"pseudo: labels={self.labels!r}; valid: {', '.join(LABEL_SOURCES)}")


def select(fused: pd.DataFrame, detector_class: Any, confidence: Any, n_cells: Mapping[str, int],
           cfg: PseudoConfig) -> tuple[pd.DataFrame, dict]:
    """The pseudo boxes (``LABEL_COLUMNS``) of the test images whose every cell is sure (module doc)
    and the counts: images, kept, and why the others were left out. ``detector_class`` and
    ``confidence`` are aligned with ``fused``'s rows; ``n_cells``: NAME -> test.csv rows. Pure."""
    table = fused[["NAME", *COORDS, "class", "score"]].reset_index(drop=True).copy()
    table["confidence"] = np.asarray(confidence, dtype=np.float64)
    table["detector_class"] = np.asarray(detector_class, dtype=object)
    table = table[table["NAME"].isin(set(n_cells))].reset_index(drop=True)
    table = table[top_rows(table, n_cells)]  # each image's top-n: the boxes the submission keeps
    table = table.sort_values(["NAME", "score"], ascending=[True, False], kind="stable")
    sure = table["confidence"] >= cfg.conf
    agrees = (table["detector_class"] == table["class"]) | (not cfg.agree)
    per_image = pd.DataFrame({"NAME": table["NAME"], "sure": sure, "agrees": agrees}).groupby("NAME").agg(
        boxes=("sure", "size"), sure=("sure", "all"), agrees=("agrees", "all"))
    per_image = per_image.reindex(sorted(n_cells)).fillna({"boxes": 0, "sure": False, "agrees": False})
    too_few = per_image["boxes"] < pd.Series(n_cells).reindex(per_image.index)
    unsure = ~too_few & ~per_image["sure"].astype(bool)
    disagree = ~too_few & ~unsure & ~per_image["agrees"].astype(bool)
    kept = per_image.index[~(too_few | unsure | disagree)]
    rows = table[table["NAME"].isin(set(kept))][LABEL_COLUMNS].reset_index(drop=True)
    counts = {"test_images": len(per_image), "kept_images": len(kept), "kept_boxes": len(rows),
              "left_out": {"too_few_boxes": int(too_few.sum()), "unsure": int(unsure.sum()),
                           "classes_disagree": int(disagree.sum())}}
    return rows, counts


def cap(rows: pd.DataFrame, train_images: int, share: float, seed: int = 0) -> pd.DataFrame:
    """``rows`` of at most ``share`` of round two's training images (``train_images`` real ones plus
    the pseudo ones kept): a seeded random draw of images when more qualify. Pure."""
    names = sorted(pd.unique(rows["NAME"]))
    most = int(np.floor(share / (1 - share) * train_images))
    if len(names) <= most:
        return rows.reset_index(drop=True)
    keep = set(np.random.default_rng(seed).choice(names, most, replace=False).tolist())
    return rows[rows["NAME"].isin(keep)].reset_index(drop=True)


def fold_predictions(ens: Any, data: Path, fold: int, fusion: str, views: list[str],
                     n_cells: Mapping[str, int]) -> tuple[pd.DataFrame, np.ndarray] | None:
    """Round one's fold ``fold`` alone on the test images (``infer.config.one_fold``): its members' test
    tables fused (``fusion``, ``views``: the submission's), its classifier blended in, as its out-of-fold
    predictions were made. The fused table and the detectors' classes of its rows; None when no detector
    member uses that fold."""
    from cytocore import paths, predictions
    from infer import ensemble
    from infer.config import bind, one_fold

    bound, ds = bind(ens, data)
    cfg = one_fold(bound, fold)
    if cfg is None:
        return None
    files = [ds.preds_dir(m.name, fold) / predictions.TEST_FILE for m in cfg.member_list()]
    fused = ensemble.fuse_files([f for f in files if f.is_file()], views, cfg.fuse_params(fusion),
                                progress=False, workers=cfg.fuse_workers)
    detector_class = fused["class"].to_numpy(dtype=object)
    return ensemble.classify(cfg, fused, paths.data_files(data)["images"], n_cells, ds), detector_class


def choose(cfg: PseudoConfig, ens: Any, data: Path, ds: Any, result: Any, calibration: Any,
           n_cells: Mapping[str, int]) -> tuple[pd.DataFrame, dict]:
    """Round two's pseudo rows (``LABEL_COLUMNS`` + ``fold``: the round-one fold whose predictions they
    are, ``dataset.TRAIN_ONLY`` for the ensemble's) and the counts, as ``cfg.labels`` says (module doc),
    each fold's capped at ``share`` of its training images. ``result``: round one's submission
    (``infer.ensemble.Result``: the ensemble's fused table, its fusion and views); ``calibration``: the
    out-of-fold calibration of ``ens``."""
    def sure(fused: pd.DataFrame, detector_class: Any, trained_on: int, seed: int) -> tuple[Any, dict]:
        confidence = calibration.apply(fused["score"].to_numpy())
        rows, counts = select(fused, detector_class, confidence, n_cells, cfg)
        return cap(rows, trained_on, cfg.share, seed), counts

    images = ds.images()
    if cfg.labels == "ensemble":
        rows, counts = sure(result.fused, result.detector_class, int(images["NAME"].nunique()), cfg.seed)
        return rows.assign(fold=dataset.TRAIN_ONLY), counts
    parts, per_fold = [], {}
    for fold in range(ds.k):
        got = fold_predictions(ens, data, fold, result.fusion, result.views, n_cells)
        if got is None:
            continue
        trained_on = int(dataset.trains_in(images["fold"], fold).sum())
        rows, per_fold[fold] = sure(*got, trained_on, cfg.seed + fold)
        parts.append(rows.assign(fold=fold))
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*LABEL_COLUMNS, "fold"])
    total = {key: sum(c[key] for c in per_fold.values()) for key in ("kept_images", "kept_boxes")}
    left = {why: sum(c["left_out"][why] for c in per_fold.values()) for why in
            next(iter(per_fold.values()))["left_out"]} if per_fold else {}
    return rows, {"test_images": len(n_cells), **total, "left_out": left,
                  "per_fold": {str(f): c["kept_images"] for f, c in per_fold.items()}}


def describe(counts: dict, rows: pd.DataFrame, cfg: PseudoConfig) -> str:
    """The one line ``make all`` prints of the selection ``choose`` made."""
    left = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts["left_out"].items())
    rule = f"confidence >= {cfg.conf}{', classes agree' if cfg.agree else ''}"
    if cfg.labels == "ensemble":
        sure = f"{counts['kept_images']} of {counts['test_images']} test images sure"
        used = f"{rows['NAME'].nunique()} used"
    else:
        per_fold = ", ".join(f"fold {f}: {n}" for f, n in counts["per_fold"].items())
        sure = f"test images sure to each fold's own round-one models ({per_fold} of {counts['test_images']})"
        used = (f"{len(rows.drop_duplicates(['NAME', 'fold']))} training images from "
                f"{rows['NAME'].nunique()} test images")
    pairs = " (test image x fold)" if cfg.labels == "fold" else ""
    return (f"pseudo-labels: {sure} ({rule}; left out{pairs}: {left}); {used} ({len(rows)} boxes, "
            f"share <= {cfg.share})")


def alias_name(name: str, fold: int) -> str:
    """The training name of test image ``name`` labelled by round one's fold ``fold`` (``a.jpg`` ->
    ``a.pseudo-f0.jpg``): one image, a training image of each fold that is sure of it."""
    path = Path(name)
    return f"{path.stem}.pseudo-f{fold}{path.suffix}"


def training_rows(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """What round two trains on from the selected ``rows`` (with ``fold``: the round-one fold that
    labelled them, or ``dataset.TRAIN_ONLY`` for the ensemble's labels): the rows under their training
    names, each training image's ``NAME,fold,group`` (fold code ``dataset.train_only_in(f)`` or
    ``TRAIN_ONLY``; group ``pseudo:<test image>``) and the aliases (training name -> test image). Pure."""
    per_fold = rows["fold"].to_numpy() != dataset.TRAIN_ONLY
    names = [alias_name(n, int(f)) if a else n for n, f, a in zip(rows["NAME"], rows["fold"], per_fold)]
    out = rows.assign(NAME=names)
    images = out.drop_duplicates("NAME")
    codes = [dataset.train_only_in(int(f)) if f != dataset.TRAIN_ONLY else dataset.TRAIN_ONLY
             for f in images["fold"]]
    folds = pd.DataFrame({"NAME": images["NAME"].to_numpy(), "fold": codes,
                          "group": [f"pseudo:{n}" for n in rows.loc[images.index, "NAME"]]})
    aliases = dict(zip(out.loc[per_fold, "NAME"], rows.loc[per_fold, "NAME"]))
    return out.reset_index(drop=True), folds.reset_index(drop=True), aliases


def round_two_folds(fold_file: Path, extra: pd.DataFrame) -> pd.DataFrame:
    """``NAME,fold,group``: round one's fold file with the pseudo images (``extra``, from
    ``training_rows``) added."""
    folds = pd.read_csv(fold_file, dtype={"NAME": str})[["NAME", "fold", "group"]]
    clash = sorted(set(extra["NAME"]) & set(folds["NAME"]))
    if clash:
        raise ValueError(f"{clash[0]}: a pseudo-labelled test image is also a train image of {fold_file}")
    return pd.concat([folds, extra], ignore_index=True)


def folder_for(ds: Any, cfg: PseudoConfig, rows: pd.DataFrame, extra: Any = None) -> Path:
    """Round two's data folder: named by the source dataset, the settings and the boxes chosen."""
    from cytocore import paths

    key = json.dumps([ds.id, kit_config.to_dict(cfg), extra], sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode() + rows.to_csv(index=False).encode()).hexdigest()[:8]
    return paths.data_copy(f"{Path(ds.data).name}-pseudo-{digest}")


def write_round_two(ds: Any, boxes: pd.DataFrame, rows: pd.DataFrame, cfg: PseudoConfig, counts: dict,
                    records: dict | None = None, extra: Any = None) -> tuple[Path, dict]:
    """Round two's data folder (``prepare.derive``): ``boxes`` (round one's train boxes, cleaned or
    not) + the pseudo ``rows`` as its train.csv, the selection, summary and fold file beside it.
    Returns the folder and the summary. The raw data is only read."""
    from prepare import derive

    named, extra_folds, aliases = training_rows(rows)
    train = pd.concat([boxes[derive.TRAIN_COLUMNS], named[derive.TRAIN_COLUMNS]], ignore_index=True)
    folds = round_two_folds(Path(ds.meta["fold_file"]), extra_folds)
    info = {"source": str(ds.data), "dataset": ds.id, "settings": kit_config.to_dict(cfg), **counts,
            "used_images": int(rows["NAME"].nunique()), "used_boxes": len(rows),
            "training_images": len(extra_folds), "train_images": int(ds.images()["NAME"].nunique())}
    dst = derive.write_folder(Path(ds.data), folder_for(ds, cfg, rows, extra), train,
                              {**(records or {}), LABELS_FILE: rows, FOLDS_FILE: folds, SUMMARY_FILE: info},
                              aliases=aliases)
    return dst, info


def compare_rounds(one: tuple[Any, Any], two: tuple[Any, Any], n_boot: int = 1000) -> dict:
    """Round two's tuned out-of-fold score minus round one's, both against round one's truth on the
    same images (tuning's subset), with a paired bootstrap interval. ``one``, ``two``: (ensemble
    config, dataset)."""
    from cytocore.compare import paired_bootstrap
    from cytocore.submission import oof_score
    from infer import calibrate

    grid = one[0].tune_grid()  # the images tuning scored (the same subset in both rounds: same images, seed)
    table1, truth = calibrate.oof_table(*one, grid.max_images, grid.seed)
    table2, _ = calibrate.oof_table(*two, grid.max_images, grid.seed)
    names = set(truth["NAME"])
    images = one[1].images()
    images = images[images["NAME"].isin(names)][["NAME", "width", "height"]].reset_index(drop=True)
    r1, r2 = oof_score(table1, truth, images), oof_score(table2, truth, images)
    d = paired_bootstrap(r2, r1, n=n_boot)
    return {"round_one": r1.total, "round_two": r2.total, "diff": d.diff, "lo": d.lo, "hi": d.hi,
            "p_better": d.p_better, "images": len(images), "text": str(d)}
