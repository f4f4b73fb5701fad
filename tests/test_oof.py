"""Out-of-fold scoring through the submission writer, per fold and overall; COCO mAP diagnostics."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cytokit import classes, coco_eval, dataset, paths, predictions, submission
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
    """A hand-made prepared dataset (cytokit/dataset.py layout) in a private work folder."""
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
    # "half" has fold 0 only, with b.jpg (MO) predicted as EO
    bad = BOXES[BOXES["NAME"].map(fold_of) == 0].assign(**{"class": ["EO", "PNN", "LY"]})
    out = dataset.resolve(prepared).preds_dir("half", 0) / "oof.parquet"
    predictions.write(preds_from(bad, "half", 0), out)
    assert oof.find_models(dataset.resolve(prepared)) == ["good", "half"]
    argv = ["--data", str(prepared), "--k", "2", "--seed", "7", "--json", str(tmp_path / "t.json")]
    assert oof.main(argv) == 0
    out = capsys.readouterr().out
    rows = {r["model"]: r for r in json.loads((tmp_path / "t.json").read_text())}
    good = rows["good"]
    assert good["fold0"] == good["fold1"] == good["oof"] == 1.0 and good["folds"] == 2
    # half, fold 0: labels EO, LY, MO, PNN; MO missed, EO wrongly predicted: F1 (0 + 1 + 0 + 1) / 4
    assert rows["half"]["fold0"] == pytest.approx(0.2 + 0.8 * 0.5, abs=1e-12)
    assert rows["half"]["fold1"] is None
    assert "good" in out and "1.000000" in out


def test_cli_without_predictions_is_an_error(prepared, capsys):
    from cytokit import io

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
