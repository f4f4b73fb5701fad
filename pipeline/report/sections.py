"""The report's sections about inputs and runs: data and cleaning, folds, training, last submission.

Each function returns the HTML body of its section and says what is missing (and which make target
makes it) instead of failing.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import yaml

from cytocore import paths
from pipeline.report import figures
from pipeline.report import page as p
from pipeline.report.sources import Source
from train import runs

log = logging.getLogger(__name__)


def data_section(src: Source, images: pd.DataFrame, boxes: pd.DataFrame) -> str:
    meta = src.meta()
    per_image = boxes.groupby("NAME").size().reindex(images["NAME"], fill_value=0)
    out = [p.cards([("train images", len(images)), ("boxes", len(boxes)),
                    ("classes present", boxes["class"].nunique()),
                    ("boxes per image", f"{per_image.mean():.2f}"),
                    ("images without a box", int((per_image == 0).sum())), ("folds", src.k)]),
           p.help_text(f"data {meta.get('data')}, images {meta.get('images_dir')}, "
                       f"resize {meta.get('resize')}")]
    out.append("<h3>Boxes per class</h3>" + p.img(figures.class_counts(boxes), "boxes per class"))
    counts = per_image.value_counts().sort_index()
    out.append("<h3>Images by their number of boxes</h3>" + p.table(pd.DataFrame(
        [["images", *counts.to_numpy()]], columns=["boxes in the image", *map(str, counts.index)]), digits=0))
    cleaning = src.cleaning()
    steps = cleaning.get("cleaning", {}).get("steps", [])
    if steps:
        shown = ["step", "boxes_removed", "images_removed", "boxes_changed", "boxes", "images"]
        frame = pd.DataFrame(steps)[shown]
        out.append("<h3>Cleaning (make folds)</h3>" + p.table(frame, digits=0))
        dup = cleaning.get("duplicates", {})
        out.append(p.help_text(f"duplicate groups: {dup.get('duplicate_groups', 0)} "
                               f"({dup.get('images_in_duplicate_groups', 0)} images, largest "
                               f"{dup.get('largest_group', 1)}); "
                               f"repaired images: {len(cleaning.get('repaired', []))}"))
    else:
        out.append(p.note("no cleaning report beside the fold file (run make folds)"))
    return "".join(out)


def folds_section(src: Source, images: pd.DataFrame, boxes: pd.DataFrame) -> str:
    fold_of = boxes["NAME"].map(images.set_index("NAME")["fold"])
    per_fold = images["fold"].value_counts().reindex(range(src.k), fill_value=0)
    table = pd.DataFrame({"fold": range(src.k), "images": per_fold.to_numpy(),
                          "boxes": fold_of.value_counts().reindex(range(src.k), fill_value=0).to_numpy(),
                          "classes": [boxes.loc[fold_of == f, "class"].nunique() for f in range(src.k)]})
    return (p.table(table, digits=0)
            + p.help_text("Each cell: boxes of the class in the fold; colour: the fold's share of that class "
                          f"(white = 1/{src.k}, red = more, blue = fewer). Groups of duplicates never span "
                          "folds.")
            + p.img(figures.fold_balance(images, boxes, src.k), "fold balance"))


def training_section(src: Source, models: list[str]) -> str:
    trained = src.trained(models)
    if not trained:
        return p.note("no training run found (make train MODEL=... FOLD=all)")
    rows, out = [], []
    for model, folds in trained.items():
        frames = {}
        for fold in folds:
            run = src.run_dir(model, fold)
            metrics = pd.read_csv(run / runs.METRICS) if (run / runs.METRICS).is_file() else pd.DataFrame()
            if len(metrics) and "epoch" in metrics:
                frames[fold] = metrics
            done = yaml.safe_load((run / runs.DONE).read_text()) if (run / runs.DONE).is_file() else {}
            config = yaml.safe_load((run / runs.CONFIG).read_text()) if (run / runs.CONFIG).is_file() \
                else {}
            rows.append({"member": model, "model": done.get("model", model), "fold": fold,
                         "epochs": len(metrics),
                         "pretrained": _started_from(run, config),
                         "out-of-fold score": float(done.get("challenge", float("nan"))),
                         "GIoU term": float(done.get("giou_term", float("nan"))),
                         "F1 term": float(done.get("f1_term", float("nan"))),
                         "state": "done" if done else ("trained" if (run / runs.TRAINED).is_file()
                                                       else "unfinished")})
        if frames:
            out.append(f"<h3>{p.esc(model)}</h3>" + p.img(figures.curves(model, frames), f"{model} curves"))
    return (p.table(pd.DataFrame(rows))
            + p.help_text("out-of-fold score: the challenge metric of the fold's best epoch on its "
                          "validation images (done.json); pretrained: the run's setting and the file it "
                          "started from (auto takes the model's file in weights/ when make weights put it "
                          "there)")
            + "".join(out))


def _started_from(run: Path, config: dict) -> str:
    """What the run started from: its pretrained.json (the resolved file), else its config's setting."""
    from train.weights.resolve import RECORD

    setting = str(config.get("pretrained", config.get("weights", "")) or "none")
    if not (run / RECORD).is_file():
        return setting
    record = json.loads((run / RECORD).read_text())
    return f"{record['pretrained']}: {Path(record['file']).name if record.get('file') else 'from scratch'}"


def submission_section(src: Source, path: Path | None = None) -> str:
    from cytocore import tables
    from submit.validate import validate_submission

    path = Path(path) if path else src.submission()
    files = paths.data_files(src.data)
    if not path.is_file():
        return p.note(f"no submission at {path} (make submission)")
    if not files["test"].is_file():
        return p.note(f"{files['test']} not found: the submission cannot be validated against this data")
    problems = validate_submission(path, files["test"], files["images"] if files["images"].is_dir() else None)
    errors = [x for x in problems if x.level == "error"]
    sub = pd.read_csv(path)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    out = [p.cards([("rows", len(sub)), ("images", sub["NAME"].nunique() if "NAME" in sub else 0),
                    ("errors", len(errors)), ("warnings", len(problems) - len(errors))]),
           p.help_text(f"{path.resolve()} (written {when}), validated against {files['test']}")]
    if problems:
        shown = "\n".join(str(x) for x in problems[:15])
        more = f"\n... {len(problems) - 15} more" if len(problems) > 15 else ""
        out.append(f"<pre>{p.esc(shown + more)}</pre>")
    else:
        out.append(p.help_text("validator: no problem found; ready to upload"))
    if "class" in sub:
        counts = sub["class"].value_counts()
        out.append("<h3>Predicted classes</h3>" + p.table(pd.DataFrame(
            {"class": counts.index, "rows": counts.to_numpy(), "share": (counts / len(sub)).to_numpy()})))
    if files["test_labels"].is_file() and not errors:
        from cytocore.metric import score

        r = score(tables.read(files["test_labels"], "submission"), tables.read(path, "submission"))
        out.append(p.cards([("local score", r.total), ("GIoU term", r.giou_term), ("F1 term", r.f1_term)])
                   + p.help_text(f"against {files['test_labels']}"))
    return "".join(out)
