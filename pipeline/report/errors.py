"""The report's sections about results: the out-of-fold table, the best setting's per-class F1 and
confusion matrix, the most confused class pairs with example crops, the worst out-of-fold images."""
from __future__ import annotations

import pandas as pd

from pipeline.report import figures
from pipeline.report import page as p
from pipeline.report.oof import OOFTable

PAIRS, CROPS, WORST = 8, 6, 9  # confused pairs shown, crops per pair, worst images drawn


def oof_section(oof: OOFTable, n_boot: int) -> str:
    out = [p.note(n) for n in oof.notes]
    if oof.empty:
        return "".join(out)
    frame = oof.frame()
    best = frame["score"].idxmax()
    lo, hi = frame["lo"].to_numpy(dtype=float), frame["hi"].to_numpy(dtype=float)

    def cell(i: int, col: str) -> str:
        if col != "diff" or lo[i] != lo[i]:
            return ""
        return "gain" if lo[i] > 0 else "loss" if hi[i] < 0 else ""

    out.insert(0, p.table(frame, row_class=lambda i: "best" if i == best else "", cell_class=cell))
    out.insert(1, p.help_text(
        f"{len(oof.images)} out-of-fold images, {len(oof.truth)} boxes, every row scored on the same truth "
        f"with the challenge metric (fusion: {oof.fusion}). diff: score minus the tuned ensemble's "
        "(the last row), [lo, hi] its 95 % interval of a paired bootstrap over images (the whole metric "
        "recomputed on each resample); green: the interval is above 0 (a gain beyond noise), red: below 0; "
        "p_better: share of resamples where the row beat the ensemble. Bold: the best row."))
    return "".join(out)


def best_section(oof: OOFTable) -> str:
    best = oof.best
    if best is None:
        return p.note("no out-of-fold score yet")
    r = best.result
    per_class = r.per_class[r.per_class["support"] > 0]
    return (p.cards([("setting", best.label), ("score", r.total), ("GIoU term", r.giou_term),
                     ("F1 term (macro)", r.f1_term), ("unmatched boxes", r.n_unmatched)])
            + "<h3>Per-class F1</h3>" + p.img(figures.f1_bars(per_class), "per-class F1")
            + "<h3>Confusion matrix</h3>"
            + p.help_text("rows: true class; columns: the class the metric matched to each true box (its "
                          "best-GIoU prediction; None = no prediction in the image); colour: share of the "
                          "row")
            + p.img(figures.confusion(r.labels, r.confusion), "confusion matrix"))


def _truth_boxes(oof: OOFTable, per_box: pd.DataFrame) -> pd.DataFrame:
    """per_box rows with their true box coordinates (joined on the synthetic trustii_id)."""
    coords = oof.truth.set_index("trustii_id")[["x1", "y1", "x2", "y2"]]
    return per_box.join(coords, on="trustii_id")


def confused_section(oof: OOFTable, images_dir) -> str:
    best = oof.best
    if best is None:
        return p.note("no out-of-fold score yet")
    boxes = _truth_boxes(oof, best.result.per_box)
    detected = boxes["NAME"].isin(set(best.table["NAME"]))  # images without a detection get fillers only
    other = (boxes["class"] != boxes["pred_class"]) & ~boxes["pred_class"].isin(["None", "nan"])
    wrong = boxes[other & detected]
    missed = boxes.loc[~detected, "NAME"].nunique()
    left_out = p.help_text(f"left out: {int((~detected).sum())} true boxes of {missed} "
                           "images without any detection (their full-image filler boxes are not a class "
                           "confusion; they are among the worst images below)") if (~detected).any() else ""
    if wrong.empty:
        return p.help_text("no detected true box got another class") + left_out
    pairs = wrong.groupby(["class", "pred_class"]).size().sort_values(ascending=False).head(PAIRS)
    support = boxes["class"].value_counts()
    table = pd.DataFrame({"true class": [a for a, _ in pairs.index],
                          "predicted as": [b for _, b in pairs.index], "boxes": pairs.to_numpy(),
                          "share of the true class": [n / support[a] for (a, _), n in pairs.items()]})
    rows = []
    for (a, b), _ in pairs.items():
        examples = wrong[(wrong["class"] == a) & (wrong["pred_class"] == b)].head(CROPS)
        crops = [figures.crop(figures.image_of(images_dir, e.NAME), [e.x1, e.y1, e.x2, e.y2])
                 for e in examples.itertuples()]
        rows.append((f"{a} predicted as {b}", crops))
    return (p.table(table) + p.help_text(f"true boxes of the best setting ({best.label}) matched to a "
                                         "prediction of another class; crops: the true boxes, with a margin")
            + left_out
            + p.img(figures.crop_rows(rows, CROPS), "confused pairs"))


def worst_section(oof: OOFTable, images_dir) -> str:
    best = oof.best
    if best is None:
        return p.note("no out-of-fold score yet")
    boxes = best.result.per_box
    per_image = boxes.assign(hit=(boxes["class"] == boxes["pred_class"]).astype(float)).groupby("NAME").agg(
        giou=("rescaled_giou", "mean"), accuracy=("hit", "mean"), boxes=("hit", "size"))
    per_image["score"] = 0.2 * per_image["giou"] + 0.8 * per_image["accuracy"]
    worst = per_image.sort_values(["score", "boxes"], ascending=[True, False]).head(WORST)
    items = []
    for name, row in worst.iterrows():
        truth = oof.truth[oof.truth["NAME"] == name].assign(label=lambda t: t["class"])
        pred = best.submission[best.submission["NAME"] == name].assign(label=lambda t: t["class"])
        items.append((f"{name}: {row['score']:.2f} (GIoU {row['giou']:.2f}, right class "
                      f"{int(round(row['accuracy'] * row['boxes']))}/{int(row['boxes'])})",
                      figures.image_of(images_dir, name), truth, pred))
    table = worst.reset_index()[["NAME", "boxes", "giou", "accuracy", "score"]].rename(
        columns={"giou": "mean rescaled GIoU", "accuracy": "right class", "score": "image score"})
    return (p.help_text(f"the best setting ({best.label}); image score = 0.2 x mean rescaled GIoU + 0.8 x "
                        "share of its true boxes given the right class (the metric's terms, per image); "
                        "green: truth, magenta: the submission rows scored (top-N per image, full-image "
                        "fillers)")
            + p.table(table) + p.img(figures.boxes_grid(items), "worst out-of-fold images"))

