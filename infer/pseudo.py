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

Round two (``pipeline.run``) trains the same recipe on a NEW data folder (``prepare.derive``):
train.csv = round one's boxes + the pseudo boxes, ``pseudo_labels.csv`` and ``pseudo.json``
beside it, and ``pseudo_folds.csv``: each train image in its round-one fold and each pseudo image
in ``cytocore.dataset.TRAIN_ONLY`` (every fold trains on it, none validates on it). So round two's
out-of-fold table covers the same images with the same truth as round one's, and ``compare_rounds``
scores both against round one's truth with a paired bootstrap interval over images.
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


@dataclasses.dataclass
class PseudoConfig:
    """The recipe's ``pseudo`` section."""

    conf: float = 0.9  # each kept box: calibrated confidence (P(box and class right), out-of-fold) >= this
    agree: bool = True  # each kept box: the detectors' class is the blended class
    share: float = 0.3  # at most this share of round two's training images are pseudo-labelled
    seed: int = 0  # the draw when more images qualify than ``share`` allows

    def __post_init__(self) -> None:
        if not (0 < self.conf <= 1 and 0 < self.share < 1):
            raise kit_config.ConfigError(f"pseudo: need 0 < conf <= 1 and 0 < share < 1 "
                                         f"(conf={self.conf}, share={self.share})")


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


def round_two_folds(fold_file: Path, names: Any) -> pd.DataFrame:
    """``NAME,fold,group``: round one's fold file with each pseudo image (``names``) added in
    ``dataset.TRAIN_ONLY`` and its own group."""
    folds = pd.read_csv(fold_file, dtype={"NAME": str})[["NAME", "fold", "group"]]
    names = sorted(set(names))
    clash = sorted(set(names) & set(folds["NAME"]))
    if clash:
        raise ValueError(f"{clash[0]}: a pseudo-labelled test image is also a train image of {fold_file}")
    extra = pd.DataFrame({"NAME": names, "fold": dataset.TRAIN_ONLY, "group": [f"pseudo:{n}" for n in names]})
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

    train = pd.concat([boxes[derive.TRAIN_COLUMNS], rows[derive.TRAIN_COLUMNS]], ignore_index=True)
    folds = round_two_folds(Path(ds.meta["fold_file"]), rows["NAME"])
    info = {"source": str(ds.data), "dataset": ds.id, "settings": kit_config.to_dict(cfg), **counts,
            "used_images": int(rows["NAME"].nunique()), "used_boxes": len(rows),
            "train_images": int(ds.images()["NAME"].nunique())}
    dst = derive.write_folder(Path(ds.data), folder_for(ds, cfg, rows, extra), train,
                              {**(records or {}), LABELS_FILE: rows, FOLDS_FILE: folds, SUMMARY_FILE: info})
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
