"""From a prediction table to the challenge's submission rows: top-N per image, fillers, scoring.

``make_submission(preds, test, sizes)`` gives each test image as many rows as
test.csv has for it: its N most confident detections go to its trustii_ids in
test.csv order; when it has fewer, the other rows get a full-image box
``(0, 0, W-1, H-1)`` with the image's most likely class (docs/CHALLENGE.md section 3). Rows
that would repeat an exact (box, class) inside an image are nudged by a
sub-pixel offset, since the metric drops repeats.

``oof_score(preds, truth_boxes, images)`` scores a prediction table exactly as
the leaderboard would score the submission made from it: out-of-fold truth
gets synthetic trustii_ids (``synthetic_truth``), the table goes through
``make_submission`` and then ``cytocore.metric.score``. Training (best epoch),
tuning and ``make score`` all use it, so every local number is the metric's.
Writing the CSV (validation, atomic file, ``submission.csv`` link) is
``submit.writer``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import classes, images, predictions
from cytocore.metric import ScoreResult, score
from cytocore.tables import COORDS
from cytocore.tables import SUBMISSION_COLUMNS as COLUMNS

log = logging.getLogger(__name__)
VIEW_PREFERENCE = ("fused", "identity")  # the view scored when a table holds several TTA views
DECIMALS = 2  # coordinates are written rounded to this many decimals
NUDGE = 10.0 ** -DECIMALS  # shift of x1 and y1 per repeat of an exact (box, class) in one image
DEFAULT_CLASS = "PNN"  # filler class when there is no detection at all


def fill_classes(preds: pd.DataFrame) -> tuple[pd.Series, str]:
    """Per image, the most likely class (score-weighted sum of per-class probabilities,
    or of scores per predicted class without them); and the overall most frequent class."""
    if preds.empty:
        return pd.Series(dtype=object), DEFAULT_CLASS
    if predictions.has_probs(preds):
        weighted = preds[list(predictions.PROB_COLUMNS)].mul(preds["score"].to_numpy(), axis=0)
        per_image = weighted.groupby(preds["NAME"].to_numpy(), sort=False).sum()
        best = pd.Series(np.asarray(classes.CLASSES, dtype=object)[per_image.to_numpy().argmax(axis=1)],
                         index=per_image.index)
    else:
        sums = preds.groupby(["NAME", "class"], sort=False)["score"].sum().reset_index()
        sums = sums.sort_values(["NAME", "score"], ascending=[True, False], kind="stable")
        best = sums.drop_duplicates("NAME").set_index("NAME")["class"]
    counts = preds["class"].value_counts()
    return best, str(counts.index[0])


def _nudge(df: pd.DataFrame) -> pd.DataFrame:
    """Shift x1, y1 of the k-th repeat of an exact (box, class) in one image by k * NUDGE."""
    key = ["NAME", *COORDS, "class"]
    for _ in range(10):
        k = df.groupby(key, sort=False).cumcount().to_numpy()
        if not k.any():
            return df
        shift = np.round(k * NUDGE, DECIMALS)
        df["x1"] = np.round(df["x1"].to_numpy() + shift, DECIMALS)
        df["y1"] = np.round(df["y1"].to_numpy() + shift, DECIMALS)
    raise ValueError("could not separate repeated (box, class) rows by nudging")


def make_submission(preds: pd.DataFrame, test: pd.DataFrame, sizes: pd.DataFrame) -> pd.DataFrame:
    """The submission table (``trustii_id,NAME,x1,y1,x2,y2,class``, test.csv order).

    ``preds``: one set of detections (prediction contract; one model's or the fused
    table); ``test``: ``trustii_id,NAME`` rows as in test.csv; ``sizes``:
    ``NAME,width,height`` of the test images (needed for images that get fillers;
    the predictions' own width/height are used when an image is missing there).
    """
    preds = predictions.validate(preds, "predictions")
    test = test[["trustii_id", "NAME"]].reset_index(drop=True)
    names = pd.unique(test["NAME"])
    preds = preds[preds["NAME"].isin(names)]
    out = test.assign(slot=test.groupby("NAME", sort=False).cumcount())
    ranked = preds.sort_values(["NAME", "score"], ascending=[True, False], kind="stable")
    ranked = ranked.assign(slot=ranked.groupby("NAME", sort=False).cumcount())
    out = out.merge(ranked[["NAME", "slot", *COORDS, "class"]], on=["NAME", "slot"], how="left",
                    validate="1:1")

    fill = out["x1"].isna().to_numpy()
    if fill.any():
        known = pd.concat([sizes[["NAME", "width", "height"]], preds[["NAME", "width", "height"]]])
        known = known.drop_duplicates("NAME").set_index("NAME")
        need = out.loc[fill, "NAME"]
        lacking = pd.unique(need[~need.isin(known.index)])
        if len(lacking):
            raise ValueError(f"no image size for {len(lacking)} test image(s) that need a full-image box "
                             f"(first: {lacking[0]}); pass their sizes")
        w = known["width"].reindex(need).to_numpy(np.float64)
        h = known["height"].reindex(need).to_numpy(np.float64)
        out.loc[fill, COORDS] = np.column_stack([np.zeros_like(w), np.zeros_like(h), w - 1, h - 1])
        per_image, overall = fill_classes(preds)
        out.loc[fill, "class"] = need.map(per_image).astype(object).fillna(overall).to_numpy(dtype=object)
        log.info("%d of %d rows filled with a full-image box", int(fill.sum()), len(out))
    out[COORDS] = out[COORDS].astype(np.float64).round(DECIMALS)
    out["class"] = out["class"].astype(object)
    return _nudge(out[COLUMNS].copy())


def image_sizes(names, images_dir: Path | None, preds: pd.DataFrame | None = None) -> pd.DataFrame:
    """``NAME,width,height`` for ``names``: from the predictions' columns, else the image headers."""
    names = pd.unique(pd.Series(list(names), dtype=object))
    rows = []
    if preds is not None and len(preds):
        rows.append(preds[["NAME", "width", "height"]].drop_duplicates("NAME"))
    have = set(rows[0]["NAME"]) if rows else set()
    rest = [n for n in names if n not in have]
    if rest and images_dir is not None:
        wh = [images.read_size(Path(images_dir) / n) for n in rest]
        rows.append(pd.DataFrame({"NAME": rest, "width": [s[0] for s in wh], "height": [s[1] for s in wh]}))
    if not rows:
        return pd.DataFrame({"NAME": pd.Series(dtype=object), "width": pd.Series(dtype=np.int64),
                             "height": pd.Series(dtype=np.int64)})
    return pd.concat(rows, ignore_index=True)



def synthetic_truth(boxes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A truth table (``trustii_id,NAME,x1,y1,x2,y2,class``) and its test.csv-like table.

    trustii_ids are 1..n in the order of a stable sort of ``boxes`` by NAME, so the
    same boxes always get the same ids.
    """
    b = boxes.sort_values("NAME", kind="stable").reset_index(drop=True)
    truth = pd.DataFrame({"trustii_id": np.arange(1, len(b) + 1, dtype=np.int64),
                          "NAME": b["NAME"].to_numpy()})
    for col in COORDS:
        truth[col] = b[col].to_numpy(np.float64)
    truth["class"] = b["class"].astype(str).to_numpy(dtype=object)
    return truth, truth[["trustii_id", "NAME"]].copy()


def one_view(preds: pd.DataFrame) -> pd.DataFrame:
    """The rows of one TTA view: the only one, else ``fused``, else ``identity``."""
    views = pd.unique(preds["view"])
    if len(views) <= 1:
        return preds
    for view in VIEW_PREFERENCE:
        if view in views:
            return preds[preds["view"] == view]
    raise ValueError(f"predictions hold several views ({', '.join(map(str, views))}) and none of "
                     f"{', '.join(VIEW_PREFERENCE)}; fuse them first")


def oof_score(preds: pd.DataFrame, truth_boxes: pd.DataFrame, images: pd.DataFrame) -> ScoreResult:
    """Score out-of-fold ``preds`` against ``truth_boxes`` (NAME,x1,y1,x2,y2,class) as the leaderboard would.

    ``images``: ``NAME,width,height`` of the scored images (full-image fillers).
    Predictions on other images are ignored.
    """
    truth, test = synthetic_truth(truth_boxes)
    preds = one_view(preds)
    sub = make_submission(preds[preds["NAME"].isin(test["NAME"])], test, images)  # validates the contract
    return score(truth, sub)


