"""Detector-only vs blended report (infer/cls_report.py) on a hand-made case."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytocore import classes, predictions
from infer import blend, cls_report

pytestmark = pytest.mark.unit

EO, PNN = classes.CLASS_TO_ID["EO"], classes.CLASS_TO_ID["PNN"]


def test_compare_detector_classifier_and_tuned_blend(tmp_path):
    truth = pd.DataFrame({"NAME": ["a.jpg", "b.jpg"], "x1": [10.0, 0.0], "y1": [10.0, 0.0],
                          "x2": [50.0, 30.0], "y2": [50.0, 30.0], "class": ["EO", "PNN"]})
    sizes = pd.DataFrame({"NAME": ["a.jpg", "b.jpg"], "width": [60, 60], "height": [60, 60]})
    preds = pd.concat([predictions.make("a.jpg", [[10, 10, 50, 50]], [0.9], [PNN], 60, 60, "det", 0),
                       predictions.make("b.jpg", [[0, 0, 30, 30]], [0.8], [PNN], 60, 60, "det", 0)],
                      ignore_index=True)
    crop = np.zeros((2, 23))
    crop[0, [EO, PNN]] = [0.7, 0.3]
    crop[1, [EO, PNN]] = [0.4, 0.6]
    probs = blend.ClassifierProbs(crop, None, np.array([True, True]))
    comp = cls_report.compare(preds, truth, sizes, probs, weight=0.5)
    # detector: EO -> PNN wrong, PNN right: F1(EO) = 0, F1(PNN) = 2 * 1 / (2 + 1); boxes perfect
    # w = 0.5 on image a: EO 0.5 * 0.7 = 0.35 < PNN 0.5 * 1 + 0.5 * 0.3 = 0.65 -> still PNN
    # EO wins when 0.7 w > 1 - 0.7 w, i.e. w > 1 / 1.4 = 0.714...: the grid's 0.75
    det_f1 = (0 + 2 / 3) / 2
    variants = ["detector", "classifier", "blend w=0.5", "blend w=0.75 (tuned here)"]
    assert comp.table["variant"].tolist() == variants
    assert comp.table["f1_term"].tolist() == pytest.approx([det_f1, 1.0, det_f1, 1.0])
    assert comp.table["score"].tolist() == pytest.approx([0.2 + 0.8 * det_f1, 1.0, 0.2 + 0.8 * det_f1, 1.0])
    assert comp.best_weight == 0.75
    pc = comp.per_class.set_index("label")
    assert pc.loc["EO", "detector"] == 0.0 and pc.loc["EO", "classifier"] == 1.0
    assert pc.loc["PNN", "detector"] == pytest.approx(2 / 3)
    written = cls_report.save(comp, tmp_path)
    assert [p.name for p in written if p.suffix == ".png"] == [
        "confusion_0_detector.png", "confusion_3_blend_w_0_75__tuned_here.png"]
    assert "best blend weight on these images: 0.75" in cls_report.render(comp)
    assert comp.tune.set_index("weight").loc[0.75, "score"] == pytest.approx(1.0)


def test_a_fixed_blend_weight_is_not_chosen_on_the_scored_rows():
    truth = pd.DataFrame({"NAME": ["a.jpg"], "x1": [10.0], "y1": [10.0], "x2": [50.0], "y2": [50.0],
                          "class": ["EO"]})
    sizes = pd.DataFrame({"NAME": ["a.jpg"], "width": [60], "height": [60]})
    preds = predictions.make("a.jpg", [[10, 10, 50, 50]], [0.9], [PNN], 60, 60, "det", 0)
    crop = np.zeros((1, 23))
    crop[0, EO] = 1.0
    comp = cls_report.compare(preds, truth, sizes, blend.ClassifierProbs(crop, None, np.array([True])), 0.3,
                              tune=False)
    assert comp.table["variant"].tolist() == ["detector", "classifier", "blend w=0.3 (fixed default)"]
    assert comp.best_weight is None and comp.tune.empty
    assert "the fixed default, not chosen on these images" in cls_report.render(comp)



def test_the_crop_members_are_mixed_at_the_ensembles_shares(tmp_path):
    """Two crop members that disagree: at equal shares the blend keeps the detector's wrong class, at the
    tuned shares 3 : 1 (what the submission uses) it takes the right one; settings reads them."""
    truth = pd.DataFrame({"NAME": ["a.jpg"], "x1": [10.0], "y1": [10.0], "x2": [50.0], "y2": [50.0],
                          "class": ["EO"]})
    sizes = pd.DataFrame({"NAME": ["a.jpg"], "width": [60], "height": [60]})
    preds = predictions.make("a.jpg", [[10, 10, 50, 50]], [0.9], [PNN], 60, 60, "det", 0)
    good, bad = np.zeros((1, 23)), np.zeros((1, 23))
    good[0, [EO, PNN]], bad[0, PNN] = [0.8, 0.2], 1.0  # equal: EO 0.4 < PNN 0.6; 3 : 1: EO 0.6
    probs = blend.ClassifierProbs((good + bad) / 2, None, np.array([True]), {"c1": good, "c2": bad})
    equal = cls_report.compare(preds, truth, sizes, probs, 1.0, tune=False)
    tuned = cls_report.compare(preds, truth, sizes, probs, 1.0, tune=False, shares={"c1": 3.0, "c2": 1.0})
    assert equal.table["f1_term"].iloc[-1] == 0.0 and tuned.table["f1_term"].iloc[-1] == 1.0
    config = tmp_path / "ens.yaml"
    config.write_text("members: [{model: yolov8}]\nclassifier: {members: [{model: cls, name: c1, weight: 3}, "
                      "{model: cls, name: c2}], weight: 0.6}\n")
    args = cls_report.argparse.Namespace(data=tmp_path, k=None, seed=None, config=config, overrides=[],
                                         detector=None, classifier=None, weight=None, full_weight=None,
                                         no_tta=False, device=None)
    assert cls_report.settings(args)[-1] == {"c1": 3.0, "c2": 1.0}
    args.classifier = ["c2", "other"]
    assert cls_report.settings(args)[-1] == {"c2": 1.0, "other": 1.0}
