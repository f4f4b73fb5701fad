"""The report's out-of-fold table: the one tuning computed (``infer.oof_table``), read, not rebuilt.

Each member with and without TTA and with and without the classifier, and the ensemble, scored with the
challenge metric on the same out-of-fold truth and compared with the tuned ensemble by a paired bootstrap
over images: the cells are those ``make tune-ensemble`` / ``make all`` saved beside the tuned config and
printed, and that ``make score`` prints. The best row's predictions (for the per-class, confusion and
worst-image sections) are the out-of-fold tables tuning wrote (``variants.parquet``). Where no tuning ran,
``infer.oof_table.fallback`` computes the same table on the ensemble config's own settings, through the
same evaluator, on the config's device (a ``device=`` override honoured), the classifier's
crops from the per-crop cache every step shares.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import predictions
from cytocore.metric import ScoreResult, score
from cytocore.submission import make_submission, one_view, synthetic_truth
from pipeline.report.sources import Source

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Setting:
    """The best row: its fused out-of-fold table and its score."""

    label: str  # e.g. "yolov8 + TTA + classifier"
    table: pd.DataFrame  # the fused predictions (one view)
    result: ScoreResult
    submission: pd.DataFrame  # the rows the metric scored (top-N per image, fillers)


@dataclasses.dataclass
class OOFTable:
    """The table (``infer.oof_table.COLUMNS``), its best row's predictions and the truth it is scored on."""

    table: pd.DataFrame | None
    truth: pd.DataFrame | None  # trustii_id,NAME,x1,y1,x2,y2,class (synthetic ids, as the scoring uses)
    images: pd.DataFrame | list  # NAME,width,height
    notes: list[str]
    fusion: str = ""
    best: Setting | None = None

    @property
    def empty(self) -> bool:
        return self.table is None or not len(self.table)

    def frame(self) -> pd.DataFrame:
        """The table as shown (the saved cells, the row names of ``infer.oof_table.label``)."""
        from infer import oof_table

        shown = self.table.drop(columns="reference").copy()
        shown.insert(0, "row", oof_table.labels(self.table))
        return shown


def _truth(src: Source, names: set[str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The out-of-fold truth boxes and image sizes of ``names`` (every fold's validation images: None)."""
    folds = [src.fold(f) for f in range(src.k)]
    boxes = pd.concat([fd.val_boxes for fd in folds], ignore_index=True)
    images = pd.concat([fd.val_images for fd in folds], ignore_index=True).drop_duplicates("NAME")
    if names is not None:
        boxes, images = boxes[boxes["NAME"].isin(names)], images[images["NAME"].isin(names)]
    return boxes.reset_index(drop=True), images.reset_index(drop=True)


def _setting(label: str, preds: pd.DataFrame, boxes: pd.DataFrame, images: pd.DataFrame) -> Setting:
    truth, test = synthetic_truth(boxes)
    preds = one_view(preds)
    sub = make_submission(preds[preds["NAME"].isin(test["NAME"])], test, images)
    return Setting(label, preds, score(truth, sub), sub)


def build(src: Source, cfg, classifier: bool = True, n_boot: int = 1000, config: Path | None = None,
          device: str | None = None) -> OOFTable:
    """The tuned table of ``src``'s dataset (beside ``config`` or the one the last tuning recorded), else
    the same table computed on ``cfg``'s settings; the best row's predictions scored for the sections."""
    from infer import oof_table
    from infer.config import device as resolve_device
    from infer.tune import VARIANTS

    notes: list[str] = []
    found = oof_table.find(src.ds, config)
    if found is not None:
        table, meta = found
        names = set(meta.get("images") or [])
        boxes, images = _truth(src, names or None)
        labels = oof_table.labels(table)
        best = labels[int(np.argmax(table["score"].to_numpy(dtype=float)))]
        notes.append(f"the out-of-fold table tuning computed ({meta['path']}), on {meta.get('n_images')} "
                     "images: the same cells as the terminal and make score")
        variants = Path(src.preds_dir("ensemble", "oof")) / VARIANTS
        setting = None
        if variants.is_file():
            preds = predictions.read(variants)
            setting = _setting(best, preds[preds["model"] == best], boxes, images)
        else:
            notes.append(f"{variants} not found: no per-class / error sections (run make tune-ensemble)")
        truth = synthetic_truth(boxes)[0]
        return OOFTable(table, truth, images, notes, str(meta.get("fusion", "")), setting)
    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device, device))
    table, meta, ev, rows = oof_table.fallback(cfg, src.data, n_boot, classifier)
    notes.append("no tuned out-of-fold table for this dataset (make tune-ensemble): computed here on the "
                 f"ensemble config's own settings, {meta['n_images']} images")
    best = max(rows, key=lambda r: ev.result(r.settings).total)
    boxes, images = ev.oof.truth_boxes, ev.oof.images
    setting = _setting(best.label, ev.table(best.settings), boxes, images)
    return OOFTable(table, synthetic_truth(boxes)[0], images, notes, meta["fusion"], setting)


def describe(table: OOFTable) -> str:
    """One line of the best setting, for the terminal."""
    best = table.best
    if best is None:
        return "no out-of-fold scores"
    return f"best out-of-fold setting: {best.label} {best.result.total:.4f}"
