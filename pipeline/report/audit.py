"""The report's label-audit section: the ground-truth boxes the out-of-fold ensemble contradicts
(``infer.label_audit``'s table of the run, when its recipe had a ``clean`` section), counts per kind,
the strongest suspects and crops of them."""
from __future__ import annotations

import pandas as pd

from cytocore import paths
from cytocore.tables import COORDS
from pipeline.report import figures
from pipeline.report import page as p

TOP, CROPS = 12, 6  # suspects listed, crops per kind
SHOWN = ["NAME", "row", "kind", "gt_class", "class", "score", "iou", "p_class", "p_gt"]
MEANING = {"class": "another class, confidently", "no_box": "no confident detection on it",
           "refine": "a confident box overlapping it only partly", "missing": "a confident cell with no box"}


def section(src, images_dir) -> str:
    from infer.label_audit import AUDIT_FILE, KINDS

    path = paths.logs_dir(src.key) / AUDIT_FILE
    if not path.is_file():
        return p.note("no label audit for this run (the recipe's clean: section is off)")
    table = pd.read_csv(path, dtype={"NAME": str})
    counts = pd.DataFrame({"kind": list(KINDS), "meaning": [MEANING[k] for k in KINDS],
                           "suspects": [int((table["kind"] == k).sum()) for k in KINDS]})
    out = [p.table(counts), p.help_text(f"from {paths.shown(path)}: each train image predicted by the "
                                        "folds that did not see it (the tuned ensemble)")]
    if table.empty:
        return "".join(out)
    top = table.groupby("kind", sort=False).head(TOP // len(KINDS) or 1)[SHOWN]
    out.append(p.table(top))
    rows = []
    for kind in KINDS:
        part = table[table["kind"] == kind].head(CROPS)
        if part.empty:
            continue
        cols = COORDS if kind == "missing" else [f"gt_{c}" for c in COORDS]  # the suggested box, or the GT
        crops = [figures.crop(figures.image_of(images_dir, name), box)
                 for name, box in zip(part["NAME"], part[cols].to_numpy(float))]
        label = "; ".join(f"{g}->{c}" if kind == "class" else str(c if kind == "missing" else g)
                          for g, c in zip(part["gt_class"], part["class"]))
        rows.append((f"{kind}: {label}", crops))
    out.append(p.img(figures.crop_rows(rows, CROPS), "label audit suspects"))
    return "".join(out)
