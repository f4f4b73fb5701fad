"""Detector diagnostics beside the challenge metric: COCO mAP50 and mAP50-95.

``coco_map(truth, preds)`` evaluates a prediction table (``cytocore.predictions``
contract) against truth boxes (``NAME,x1,y1,x2,y2,class``, absolute xyxy) with
faster-coco-eval, class-aware (23 categories) and class-agnostic (one "cell"
category: how well the boxes alone are found). Predictions on images absent
from the truth are ignored. These numbers explain a score; they are not the
challenge's metric (``cytocore.metric``).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from cytocore import boxes, classes
from cytocore.tables import COORDS

log = logging.getLogger(__name__)


def _coco_dicts(truth: pd.DataFrame, preds: pd.DataFrame, agnostic: bool) -> tuple[dict, list[dict]]:
    names = pd.unique(truth["NAME"])
    image_id = {n: i + 1 for i, n in enumerate(names)}
    size = {}
    for table in (preds, truth):
        if {"width", "height"} <= set(table.columns):
            first = table.drop_duplicates("NAME").set_index("NAME")
            size.update(first[["width", "height"]].T.to_dict("list"))
    images = [{"id": image_id[n], "file_name": str(n), "width": int(size.get(n, (0, 0))[0]),
               "height": int(size.get(n, (0, 0))[1])} for n in names]

    def category(cls: pd.Series) -> np.ndarray:
        if agnostic:
            return np.ones(len(cls), dtype=np.int64)
        return cls.map(classes.CLASS_TO_ID).fillna(-2).astype(np.int64).to_numpy() + 1

    xywh = boxes.convert(truth[COORDS].to_numpy(np.float64), "xyxy", "xywh")
    cats = category(truth["class"])
    anns = [{"id": i + 1, "image_id": image_id[n], "category_id": int(c), "bbox": [float(v) for v in b],
             "area": float(b[2] * b[3]), "iscrowd": 0}
            for i, (n, c, b) in enumerate(zip(truth["NAME"], cats, xywh))]
    n_cat = 1 if agnostic else classes.NUM_CLASSES
    names_of = ["cell"] if agnostic else list(classes.CLASSES)
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": i + 1, "name": names_of[i]} for i in range(n_cat)]}
    preds = preds[preds["NAME"].isin(image_id)]
    dxywh = boxes.convert(preds[COORDS].to_numpy(np.float64), "xyxy", "xywh")
    dets = [{"image_id": image_id[n], "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
            for n, c, b, s in zip(preds["NAME"], category(preds["class"]), dxywh, preds["score"])]
    return gt, dets


def _evaluate(gt: dict, dets: list[dict]) -> tuple[float, float]:
    """(mAP50-95, mAP50) of ``dets`` against the COCO dict ``gt``."""
    from faster_coco_eval import COCO, COCOeval_faster

    if not dets or not gt["annotations"]:
        return 0.0, 0.0
    coco_gt = COCO(gt, print_function=log.debug)
    coco_dt = coco_gt.loadRes(dets)
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=log.debug)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    stats = np.asarray(ev.stats, dtype=np.float64)
    return float(max(stats[0], 0.0)), float(max(stats[1], 0.0))


def coco_map(truth: pd.DataFrame, preds: pd.DataFrame) -> dict[str, float]:
    """``{"mAP50", "mAP50_95", "agnostic_mAP50", "agnostic_mAP50_95"}`` of ``preds`` on ``truth``."""
    out = {}
    for prefix, agnostic in (("", False), ("agnostic_", True)):
        m5095, m50 = _evaluate(*_coco_dicts(truth, preds, agnostic))
        out[f"{prefix}mAP50"] = m50
        out[f"{prefix}mAP50_95"] = m5095
    return out
