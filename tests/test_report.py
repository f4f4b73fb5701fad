"""make report: the page's content on a small prepared dataset with hand-made runs and predictions.

Two fake detectors (yolov8, yolo11) predict the out-of-fold truth with jitter, both TTA views, EO
boxes always called BA and one image missed entirely; an untrained classifier checkpoint per fold;
a submission. The page must show each setting with the numbers the metric gives, the bootstrap
intervals, the confused pair, the missed image among the worst, the validation, and embed every
image; with nothing but the folds it says what is missing.
"""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from cytocore import classes, dataset, paths, predictions

pytestmark = pytest.mark.smoke

MODELS = ("yolov8", "yolo11")


def fake_predictions(fd, model: str, rng: np.random.Generator, missed: str) -> pd.DataFrame:
    frames = []
    for name, truth in fd.val_boxes.groupby("NAME"):
        if name == missed:
            continue
        w, h = int(truth["width"].iat[0]), int(truth["height"].iat[0])
        labels = truth["class"].replace({"EO": "BA"}).map(classes.CLASS_TO_ID).to_numpy()
        for view in ("identity", "hflip"):
            xyxy = truth[["x1", "y1", "x2", "y2"]].to_numpy(float) + rng.normal(0, 2.0, (len(truth), 4))
            frames.append(predictions.make(name, np.clip(xyxy, 0, [w - 1, h - 1, w - 1, h - 1]),
                                           rng.uniform(0.5, 0.95, len(truth)), labels, w, h, model, fd.fold,
                                           view=view))
    return pd.concat(frames, ignore_index=True)


def fake_run(ds, model: str, fold: int, epochs: int = 4) -> None:
    from train import runs

    run = ds.run_dir(model, fold)
    run.mkdir(parents=True, exist_ok=True)
    for e in range(1, epochs + 1):
        runs.append_metrics(run, {"epoch": e, "train_box_loss": 2.0 / e, "train_cls_loss": 1.0 / e,
                                  "challenge": 0.3 + 0.1 * e})
    (run / "config.yaml").write_text("pretrained: auto\nepochs: 4\n")
    done = {"model": model, "fold": fold, "challenge": 0.7, "giou_term": 0.8, "f1_term": 0.67}
    (run / "done.json").write_text(json.dumps(done))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A 40-image synthetic dataset (k=2) in a work folder of this module's own."""
    from prepare import folds
    from prepare.synth import make as synth

    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CYTOKIT_WORK", str(root / "work"))
        data = root / "small"
        assert synth.main(["--out", str(data), "--images", "40", "--seed", "4"]) == 0
        assert folds.main(["--data", str(data), "--k", "2", "--seed", "0"]) == 0
        yield data


@pytest.fixture(scope="module")
def full(prepared):
    """Runs, out-of-fold tables of two detectors, a classifier per fold, a submission; the page."""
    import torch

    from cytocore import config as kit_config
    from cytocore.submission import image_sizes, make_submission
    from pipeline.report import build_report
    from train import checkpoint, registry
    from train.cls import model as cls_model

    rng = np.random.default_rng(0)
    ds = dataset.resolve(prepared)
    fds = [ds.fold(f) for f in range(2)]
    missed = fds[0].val_boxes["NAME"].iat[0]
    for model in MODELS:
        for fd in fds:
            predictions.write(fake_predictions(fd, model, rng, missed),
                              ds.preds_dir(model, fd.fold) / "oof_tta.parquet")
            fake_run(ds, model, fd.fold)
    cfg = registry.load_config("cls", ["backbone=resnet10t", "imgsz=32", "pretrained=none"])
    torch.manual_seed(0)
    for f in range(2):
        checkpoint.save(ds.run_dir("cls", f) / "best.pt", cls_model.build_model("resnet10t"),
                        kit_config.to_dict(cfg), 0)
    test = pd.read_csv(prepared / "test.csv")
    sizes = image_sizes(test["NAME"], prepared / "images")
    sub = make_submission(predictions.empty(), test, sizes)
    sub_path = prepared.parent / "submission.csv"
    sub.to_csv(sub_path, index=False)
    config = prepared.parent / "ensemble.yaml"  # both detectors: the table's members are the config's
    config.write_text(yaml.safe_dump({"members": [{"model": m} for m in MODELS]}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few crops: threads only spin when the machine is busy
    try:
        path = build_report(prepared, 2, 0, config=config, submission=sub_path, n_boot=200)
    finally:
        torch.set_num_threads(threads)
    return path, path.read_text(), missed, fds


def test_the_page_is_one_self_contained_file(full, prepared):
    path, text, _, _ = full
    assert path == paths.reports_dir("pages") / f"{dataset.resolve(prepared).id}.html"
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text
    assert not re.search(r"<script|<link|src=\"http|url\(", text)  # nothing fetched when it opens
    figures = re.findall(r'src="data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)"', text)
    assert len(figures) >= 8  # classes, folds, 2 curves, F1, confusion, crops, worst images
    magic = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}
    assert all(base64.b64decode(b).startswith(magic[kind]) for kind, b in figures)
    assert {kind for kind, _ in figures} == {"png", "jpeg"}  # charts PNG, photos JPEG
    assert "could not be drawn" not in text
    for anchor in ("data", "folds", "training", "oof", "best", "confused", "worst", "submission"):
        assert f'<section id="{anchor}">' in text


def part(text: str, anchor: str) -> str:
    """The HTML of one section."""
    start = text.index(f'<section id="{anchor}">')
    return text[start:text.index("</section>", start)]


def cells(text: str, label: str) -> list[str]:
    """The cells after the first one of the row whose first cell is ``label``."""
    row = re.search(rf"<tr[^>]*><td>{re.escape(label)}</td>(.*?)</tr>", text)
    assert row, f"no table row {label!r}"
    return re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))


def test_oof_rows_hold_the_metric_and_a_bootstrap_interval(full):
    from cytocore.submission import oof_score
    from infer.config import load_config
    from infer.fuse import FuseParams, fuse

    _, text, _, fds = full
    text = part(text, "oof")
    for label in ("yolov8", "yolov8 + TTA", "yolo11", "yolo11 + TTA", "yolov8 + TTA + classifier",
                  "ensemble + TTA"):
        cells(text, label)
    ref = cells(text, "ensemble + TTA + classifier")  # no tuned table: the config's settings, last row
    assert "computed here on the ensemble config&#x27;s own settings" in text
    mode = re.search(r"fusion: (wbf|agnostic)\)", text).group(1)
    cfg = load_config(paths.CONFIGS / "ensemble.yaml", {"k": 2, "seed": 0})
    truth = pd.concat([fd.val_boxes for fd in fds], ignore_index=True)
    imgs = pd.concat([fd.val_images for fd in fds], ignore_index=True)
    ds = fds[0].dataset
    table = pd.concat([predictions.read(ds.preds_dir("yolov8", f) / "oof_tta.parquet") for f in range(2)])
    params = FuseParams(mode=mode, iou_thr=cfg.iou_thr, skip_box_thr=cfg.skip_box_thr,
                        conf_type=cfg.conf_type, max_det=cfg.max_det)
    alone = oof_score(fuse(table[table["view"] == "identity"], params, progress=False), truth, imgs)
    tta = oof_score(fuse(table, FuseParams(**{**params.__dict__, "views": ("identity", "hflip")}),
                         progress=False), truth, imgs)
    assert cells(text, "yolov8")[3] == f"{alone.total:.4f}"  # member, tta, classifier, score, ...
    row = cells(text, "yolov8 + TTA")
    assert row[3] == f"{tta.total:.4f}"
    assert abs(float(row[6]) - (tta.total - float(ref[3]))) < 2e-4  # diff: minus the ensemble's score
    assert float(row[7]) <= float(row[6]) <= float(row[8])  # inside its bootstrap interval


def test_confused_pair_and_missed_image_are_shown(full):
    _, text, missed, _ = full
    assert re.search(r"<td>EO</td><td>BA</td><td>\d+</td><td>1\.0000</td>", text)  # every EO called BA
    worst = part(text, "worst")
    assert f"<td>{missed}</td>" in worst and "0.0000" in worst  # no prediction at all: image score 0


def test_data_folds_training_and_submission_sections(full, prepared):
    _, text, _, _ = full
    n_images = len(pd.read_csv(dataset.resolve(prepared).root / "images.csv"))
    assert f"<b>{n_images}</b><span>train images</span>" in text
    assert "<td>clip</td>" in text and "duplicate groups:" in text
    training = part(text, "training")
    assert re.search(r"<td>yolo11</td><td>1</td><td>4</td><td>auto</td><td>0\.7000</td>", training)
    assert training.count("<img") == 2  # the curves of each model, its folds in one figure
    sub = part(text, "submission")
    assert "<span>errors</span>" in sub and "validator: no problem found" in sub
    assert "local score" in sub  # synthetic data has test_labels.csv


def test_with_only_the_folds_the_page_says_what_is_missing(prepared, tmp_path, monkeypatch):
    from pipeline.report import build_report

    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    from prepare import folds

    assert folds.main(["--data", str(prepared), "--k", "2", "--seed", "0"]) == 0
    text = build_report(prepared, 2, 0, submission=tmp_path / "none.csv").read_text()
    assert "no training run found (make train" in text
    assert "no out-of-fold table: FileNotFoundError" in text
    assert f"no submission at {tmp_path / 'none.csv'} (make submission)" in text
    assert "could not be drawn" not in text


def test_cli_names_the_page_and_refuses_an_unprepared_dataset(prepared, tmp_path, capsys):
    from cytocore.io import cli
    from pipeline.report.__main__ import main

    assert cli(main, ["--data", str(tmp_path / "nothing"), "--k", "2", "--seed", "0"]) == 1
    assert "no prepared dataset with K=2 SEED=0; run `make folds DATA=" in capsys.readouterr().err
    out = tmp_path / "r.html"
    assert cli(main, ["--data", str(prepared), "--k", "2", "--seed", "0", "--out", str(out),
                      "--no-classifier", "--bootstrap", "50"]) == 0
    first, last = capsys.readouterr().out.strip().splitlines()  # the ensemble settings used, the page
    assert first.startswith("ensemble settings: ") and last == f"report: {out}"
    assert out.stat().st_size > 10_000
