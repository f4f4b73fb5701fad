"""Out-of-fold scoring through the submission writer, per fold and overall; COCO mAP diagnostics."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cytocore import classes, coco_eval, dataset, paths, predictions, submission
from submit import oof

pytestmark = pytest.mark.unit

BOXES = pd.DataFrame({
    "NAME": ["b.jpg", "a.jpg", "a.jpg", "c.jpg", "d.jpg"],
    "x1": [10, 0, 50, 5, 20], "y1": [10, 0, 50, 5, 20],
    "x2": [60, 40, 90, 45, 70], "y2": [60, 40, 90, 45, 70],
    "class": ["MO", "PNN", "LY", "EO", "B"],
})
IMAGES = pd.DataFrame({"NAME": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "width": 100, "height": 100,
                       "fold": [0, 0, 1, 1], "group": [0, 1, 2, 3]})


def preds_from(boxes: pd.DataFrame, model: str = "m", fold: int = 0, view: str = "identity") -> pd.DataFrame:
    parts = [predictions.make(r.NAME, [[r.x1, r.y1, r.x2, r.y2]], [0.9], [classes.CLASS_TO_ID[c]], 100, 100,
                              model, fold, view) for r, c in zip(boxes.itertuples(), boxes["class"])]
    return pd.concat(parts, ignore_index=True)


def test_synthetic_truth_numbers_boxes_stably_by_name():
    truth, test = submission.synthetic_truth(BOXES)
    assert truth["trustii_id"].tolist() == [1, 2, 3, 4, 5]
    assert truth["NAME"].tolist() == ["a.jpg", "a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert truth["class"].tolist() == ["PNN", "LY", "MO", "EO", "B"]
    assert test.columns.tolist() == ["trustii_id", "NAME"] and len(test) == 5
    again, _ = submission.synthetic_truth(BOXES.iloc[::-1])
    cols = ["NAME", "class"]
    assert again[cols].iloc[2:].values.tolist() == truth[cols].iloc[2:].values.tolist()


def test_oof_score_goes_through_the_writer():
    assert submission.oof_score(preds_from(BOXES), BOXES, IMAGES).total == 1.0
    # a.jpg's LY cell missed: its row gets a full-image box (0, 0, 99, 99) with a.jpg's likely class PNN;
    # the LY GT box takes it (GIoU 40*40 / 99*99 beats the PNN box's), so LY loses its only box
    r = submission.oof_score(preds_from(BOXES.drop(index=2)), BOXES, IMAGES)
    assert r.per_box.set_index("class").loc["LY", "pred_class"] == "PNN"
    # labels B, EO, LY, MO, PNN: PNN predicted twice, right once -> F1 2/3; LY F1 0
    assert r.f1_term == pytest.approx((1 + 1 + 0 + 1 + 2 / 3) / 5, abs=1e-12)


def test_one_view_prefers_fused_then_identity():
    two = pd.concat([preds_from(BOXES, view="identity"), preds_from(BOXES, view="hflip")])
    assert set(submission.one_view(two)["view"]) == {"identity"}
    assert set(submission.one_view(pd.concat([two, preds_from(BOXES, view="fused")]))["view"]) == {"fused"}
    with pytest.raises(ValueError, match="several views"):
        submission.one_view(two[two["view"] == "hflip"].assign(view=["a", "b", "a", "b", "a"]))


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    """A hand-made prepared dataset (cytocore/dataset.py layout) in a private work folder."""
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    data = tmp_path / "mydata"
    data.mkdir()
    root = paths.dataset_root(dataset.new_id(data, 2, 7))
    root.mkdir(parents=True)
    (root / "meta.json").write_text(json.dumps({"data": str(data), "images_dir": str(data / "images"), "k": 2,
                                                "seed": 7, "resize": None}))
    IMAGES.to_csv(root / "images.csv", index=False)
    BOXES.assign(width=100, height=100).to_csv(root / "boxes.csv", index=False)
    return data


def test_cli_table_per_model_and_fold(prepared, capsys, tmp_path):
    fold_of = IMAGES.set_index("NAME")["fold"]
    for fold in (0, 1):
        part = BOXES[BOXES["NAME"].map(fold_of) == fold]
        out = dataset.resolve(prepared).preds_dir("good", fold) / "oof.parquet"
        predictions.write(preds_from(part, "good", fold), out)
    # "meh" has both folds, with d.jpg (B) predicted as EO
    for fold in (0, 1):
        part = BOXES[BOXES["NAME"].map(fold_of) == fold]
        part = part.assign(**{"class": part["class"].where(part["NAME"] != "d.jpg", "EO")})
        out = dataset.resolve(prepared).preds_dir("meh", fold) / "oof.parquet"
        predictions.write(preds_from(part, "meh", fold), out)
    # "half" has fold 0 only, with b.jpg (MO) predicted as EO
    bad = BOXES[BOXES["NAME"].map(fold_of) == 0].assign(**{"class": ["EO", "PNN", "LY"]})
    out = dataset.resolve(prepared).preds_dir("half", 0) / "oof.parquet"
    predictions.write(preds_from(bad, "half", 0), out)
    assert oof.find_models(dataset.resolve(prepared)) == ["good", "half", "meh"]
    argv = ["--data", str(prepared), "--k", "2", "--seed", "7", "--json", str(tmp_path / "t.json")]
    assert oof.main(argv) == 0
    out = capsys.readouterr().out
    written = json.loads((tmp_path / "t.json").read_text())
    assert written["ensemble"] is None  # no make tune-ensemble yet
    rows = {r["member"]: r for r in written["models"]}
    good = rows["good"]
    assert good["fold0"] == good["fold1"] == good["score"] == 1.0 and good["folds"] == 2
    # half, fold 0: labels EO, LY, MO, PNN; MO missed, EO wrongly predicted: F1 (0 + 1 + 0 + 1) / 4
    assert rows["half"]["fold0"] == pytest.approx(0.2 + 0.8 * 0.5, abs=1e-12)
    assert rows["half"]["fold1"] is None
    assert "good" in out and "1.0000" in out
    # "good" is the best model on both folds: the reference of the bootstrap column; "half" is not on the
    # same images, so it has none; "meh" lost B's F1 (1 -> 0) and EO's (1 -> 2/3) out of 5 labels
    assert good["vs_best"] == "" and rows["half"]["vs_best"] == ""
    assert rows["meh"]["score"] == pytest.approx(0.2 + 0.8 * (1 + 1 + 1 + 2 / 3 + 0) / 5, abs=1e-12)
    assert rows["meh"]["vs_best"].startswith(f"{rows['meh']['score'] - 1:+.4f} [")


def test_cli_without_predictions_is_an_error(prepared, capsys):
    from cytocore import io

    assert io.cli(oof.main, ["--data", str(prepared), "--k", "2", "--seed", "7"]) == 1
    assert "no out-of-fold predictions" in capsys.readouterr().err


def test_coco_map_perfect_and_class_agnostic():
    perfect = preds_from(BOXES)
    assert coco_eval.coco_map(BOXES, perfect) == {"mAP50": 1.0, "mAP50_95": 1.0, "agnostic_mAP50": 1.0,
                                                  "agnostic_mAP50_95": 1.0}
    wrong = perfect.assign(**{"class": "SS"})
    maps = coco_eval.coco_map(BOXES, wrong)
    assert maps["mAP50"] == 0.0 and maps["agnostic_mAP50"] == 1.0
    assert coco_eval.coco_map(BOXES, predictions.empty())["mAP50"] == 0.0
    assert np.isfinite(list(coco_eval.coco_map(BOXES, perfect.iloc[:2]).values())).all()


def _cls_fold(root, monkeypatch):
    """Four 48 x 40 px validation images of one coloured square each, as fold 0 of a tiny dataset."""
    from PIL import Image

    from cytocore.dataset import FoldData

    monkeypatch.setenv("CYTOKIT_WORK", str(root / "work"))
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(4):
        im = np.full((40, 48, 3), 235, np.uint8)
        im[10:26, 12:28] = (200, 40, 40) if i % 2 else (40, 40, 200)
        Image.fromarray(im).save(root / "images" / f"v{i}.jpg")
        rows.append({"NAME": f"v{i}.jpg", "x1": 12, "y1": 10, "x2": 28, "y2": 26, "class": "PNN",
                     "width": 48, "height": 40})
    boxes = pd.DataFrame(rows)
    sizes = boxes[["NAME", "width", "height"]]
    return FoldData(root=root / "ds", fold=0, k=2, seed=0, images_dir=root / "images", train_boxes=boxes,
                    val_boxes=boxes, val_images=sizes, train_images=sizes, yolo_yaml=root / "y",
                    coco_train=root / "c", coco_val=root / "v", resize=None)


def test_cls_oof_table_is_the_detectors_boxes_with_the_classifiers_classes(tmp_path, monkeypatch):
    from cytocore import config
    from cytocore.images import load_rgb
    from train import checkpoint
    from train.cls import model as cls_model
    from train.cls.adapter import ClassifierAdapter, ClassifierConfig

    fold = _cls_fold(tmp_path, monkeypatch)
    # the detector: the right box (score 0.9) and a stray one (0.2) per image, both called LY
    ly = np.eye(23)[[classes.CLASS_TO_ID["LY"]] * 2]
    det = pd.concat([predictions.make(f"v{i}.jpg", [[12, 10, 28, 26], [0, 0, 10, 10]], [0.9, 0.2],
                                      [classes.CLASS_TO_ID["LY"]] * 2, 48, 40, "det", 0, probs=ly)
                     for i in range(4)], ignore_index=True)
    predictions.write(det, fold.preds_dir("det") / "oof.parquet")
    cfg = config.from_dict(ClassifierConfig, {"backbone": "resnet10t", "imgsz": 32, "val_detector": "det"})
    checkpoint.save(
        tmp_path / "best.pt", cls_model.build_model("resnet10t"), config.to_dict(cfg), 0, metric=0.0
    )
    adapter = ClassifierAdapter()
    predictor = adapter.load(tmp_path / "best.pt", cfg)
    table = adapter.oof_predictions(predictor, cfg, fold)
    pd.testing.assert_frame_equal(table[["NAME", "x1", "y1", "x2", "y2", "score"]],
                                  det[["NAME", "x1", "y1", "x2", "y2", "score"]], check_dtype=False)
    assert set(table["model"]) == {"cls"}
    ims = [load_rgb(tmp_path / "images" / f"v{i}.jpg") for i in range(4)]
    probs = np.concatenate(predictor.classify_boxes(ims, [np.array([[12, 10, 28, 26]])] * 4))
    top = table["score"] == 0.9  # each image has one GT box: only its top box is classified
    np.testing.assert_allclose(table.loc[top, list(classes.PROB_COLUMNS)].to_numpy(), probs, atol=1e-6)
    assert table.loc[top, "class"].tolist() == [classes.CLASSES[j] for j in probs.argmax(1)]
    assert set(table.loc[~top, "class"]) == {"LY"}
    assert (
        adapter.oof_predictions(predictor, config.from_dict(ClassifierConfig, {"val_detector": ""}), fold)
        is None
    )


def test_run_fold_writes_the_adapters_own_oof_table(tmp_path, monkeypatch):
    from train import job
    from train.base import Adapter

    fold = _cls_fold(tmp_path, monkeypatch)
    own = preds_from(fold.val_boxes.assign(**{"class": "EO"}), "second")

    class Stage2(Adapter):
        name, config_cls = "second", object

        def train(self, cfg, fold_data, run_dir, resume=False):
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "best.pt").write_bytes(b"w")
            return run_dir / "best.pt"

        def load(self, weights, cfg, device="cpu"):
            return None

        def oof_predictions(self, predictor, cfg, fold_data):
            return own

    cfg = type("Cfg", (), {"device": "cpu", "conf": 0.001})()
    monkeypatch.setattr("train.runs.save_config", lambda cfg, run_dir: None)
    record = job.run_fold("second", Stage2(), cfg, fold, resume=False, force=False)
    written = predictions.read(fold.preds_dir("second") / "oof.parquet")
    pd.testing.assert_frame_equal(written, predictions.validate(own), check_dtype=False)
    assert record["f1_term"] == 0.0 and record["giou_term"] == 1.0  # the right boxes, every class wrong
