"""Fusion of prediction tables: slots and weights, class-agnostic fusion with averaged probabilities."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytocore import classes, predictions
from infer import fuse

pytestmark = pytest.mark.unit

PNN, LY = classes.CLASS_TO_ID["PNN"], classes.CLASS_TO_ID["LY"]


def probs(**p):
    out = np.zeros(classes.NUM_CLASSES)
    for code, v in p.items():
        out[classes.CLASS_TO_ID[code]] = v
    return out


def rows(name, boxes, scores, labels, model, fold=0, view="identity", p=None, size=(100, 100)):
    return predictions.make(name, np.array(boxes, float), scores, labels, *size, model, fold, view,
                            None if p is None else np.array(p))


M1 = rows("a.jpg", [[10, 10, 50, 50]], [0.9], [PNN], "m1", p=[probs(PNN=0.6, LY=0.4)])
M2 = rows("a.jpg", [[12, 12, 52, 52]], [0.6], [LY], "m2", p=[probs(PNN=0.2, LY=0.8)])


def test_agnostic_averages_probabilities():
    out = fuse.fuse(pd.concat([M1, M2]), fuse.FuseParams(iou_thr=0.55, mode="agnostic"), progress=False)
    assert len(out) == 1
    # p = score-weighted mean: PNN (0.9*0.6 + 0.6*0.2)/1.5 = 0.44, LY (0.9*0.4 + 0.6*0.8)/1.5 = 0.56
    np.testing.assert_allclose(out["p_PNN"], [(0.9 * 0.6 + 0.6 * 0.2) / 1.5])
    np.testing.assert_allclose(out["p_LY"], [(0.9 * 0.4 + 0.6 * 0.8) / 1.5])
    assert out["class"].tolist() == ["LY"]
    np.testing.assert_allclose(out["score"], [(0.9 + 0.6) / 2 * 2 / 2], rtol=1e-6)
    x1 = (0.9 * 10 + 0.6 * 12) / 1.5
    np.testing.assert_allclose(out["x1"], [x1], rtol=1e-6)
    assert out[["model", "fold", "view"]].iloc[0].tolist() == ["ensemble", -1, "fused"]
    predictions.validate(out)


def test_agnostic_one_hot_times_score_without_probs():
    m2 = rows("a.jpg", [[12, 12, 52, 52]], [0.6], [LY], "m2")  # no p_ columns: one-hot x 0.6
    out = fuse.fuse(pd.concat([M1, m2]), fuse.FuseParams(iou_thr=0.55, mode="agnostic"), progress=False)
    pnn = (0.9 * 0.6 + 0.6 * 0.0) / 1.5
    ly = (0.9 * 0.4 + 0.6 * 0.6) / 1.5
    # written normalised to sum 1
    np.testing.assert_allclose(out[["p_PNN", "p_LY"]].to_numpy(), [[pnn / (pnn + ly), ly / (pnn + ly)]])
    assert out["class"].tolist() == ["LY"]


def test_agnostic_model_weights_change_the_class():
    params = fuse.FuseParams(iou_thr=0.55, mode="agnostic", weights={"m1": 3.0, "m2": 1.0})
    out = fuse.fuse(pd.concat([M1, M2]), params, progress=False)
    # weights: 0.9*3 = 2.7 and 0.6*1 = 0.6 -> PNN (2.7*0.6 + 0.6*0.2)/3.3 = 0.527 > LY 0.473
    np.testing.assert_allclose(out["p_PNN"], [(2.7 * 0.6 + 0.6 * 0.2) / 3.3])
    assert out["class"].tolist() == ["PNN"]


def test_class_aware_wbf_keeps_classes_apart():
    out = fuse.fuse(pd.concat([M1, M2]), fuse.FuseParams(iou_thr=0.55, mode="wbf"), progress=False)
    assert out["class"].tolist() == ["PNN", "LY"]
    np.testing.assert_allclose(out["score"], [0.9 / 2, 0.6 / 2], rtol=1e-6)
    # p_ of a class-aware box: its own members' probabilities (one member each here)
    np.testing.assert_allclose(out[["p_PNN", "p_LY"]].to_numpy(), [[0.6, 0.4], [0.2, 0.8]])


def test_weight_is_split_over_a_models_slots():
    views = pd.concat([rows("a.jpg", [[10, 10, 50, 50]], [0.8], [PNN], "m1", view=v)
                       for v in ("identity", "hflip")])
    other = rows("a.jpg", [[10, 10, 50, 50]], [0.4], [PNN], "m2")
    g = fuse.group(pd.concat([views, other]))
    assert g.slot_names == ["m1|0|hflip", "m1|0|identity", "m2|0|identity"]
    np.testing.assert_allclose(g.slot_weights({"m1": 2.0}), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(g.slot_weights(), [0.5, 0.5, 1.0])
    out = fuse.fuse_grouped(g, fuse.FuseParams(iou_thr=0.55), progress=False)
    # scores x slot weights: 0.4, 0.4, 0.4; mean over 3 boxes x min(3, 3) / sum of weights (2)
    np.testing.assert_allclose(out["score"], [(0.4 + 0.4 + 0.4) / 3 * 3 / 2], rtol=1e-6)
    np.testing.assert_allclose(g.slot_weights({"m3": 5.0}), [0.5, 0.5, 1.0])  # a model without rows: no slot
    np.testing.assert_allclose(g.slot_weights({"m1": 2.0}, ("identity",)), [0.0, 2.0, 1.0])  # hflip left out
    out = fuse.fuse_grouped(g, fuse.FuseParams(iou_thr=0.55, views=("hflip",)), progress=False)
    np.testing.assert_allclose(out["score"], [0.8], rtol=1e-6)  # m1's hflip slot alone (m2 has no hflip view)


def test_folds_are_slots_for_test_and_merged_out_of_fold():
    f0 = rows("a.jpg", [[10, 10, 50, 50]], [0.8], [PNN], "m1", fold=0)
    f1 = rows("b.jpg", [[10, 10, 50, 50]], [0.8], [PNN], "m1", fold=1)
    assert fuse.group(pd.concat([f0, f1])).slot_names == ["m1|0|identity", "m1|1|identity"]
    g = fuse.group(pd.concat([f0, f1]), oof=True)
    assert g.slot_names == ["m1|*|identity"]
    out = fuse.fuse_grouped(g, fuse.FuseParams(iou_thr=0.55), progress=False)
    np.testing.assert_allclose(out["score"], [0.8, 0.8], rtol=1e-6)  # one slot: nothing dilutes
    both = rows("a.jpg", [[10, 10, 50, 50]], [0.8], [PNN], "m1", fold=1)
    with pytest.raises(ValueError, match="several folds"):
        fuse.group(pd.concat([f0, both]), oof=True)


def test_max_det_and_skip_thr_per_slot():
    boxes = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]
    many = rows("a.jpg", boxes, [0.3, 0.9, 0.6], [PNN] * 3, "m1")
    g = fuse.group(many, max_det=2)
    np.testing.assert_allclose(g.scores, [0.9, 0.6])
    g = fuse.group(many, skip_box_thr=0.5)
    np.testing.assert_allclose(g.scores, [0.9, 0.6])


def test_images_stay_apart_and_sizes_are_per_image():
    a = rows("a.jpg", [[10, 10, 50, 50]], [0.8], [PNN], "m1", size=(100, 200))
    b = rows("b.jpg", [[10, 10, 50, 50]], [0.7], [LY], "m1", size=(300, 100))
    out = fuse.fuse(pd.concat([b, a]), fuse.FuseParams(iou_thr=0.55), progress=False)
    assert out["NAME"].tolist() == ["a.jpg", "b.jpg"]
    assert out["width"].tolist() == [100, 300] and out["height"].tolist() == [200, 100]
    np.testing.assert_allclose(out[["x1", "y1", "x2", "y2"]].to_numpy(), [[10, 10, 50, 50]] * 2, rtol=1e-6)


def test_bad_predictions_raise():
    bad = M1.copy()
    bad.loc[0, "x2"] = 1.0  # inverted
    with pytest.raises(ValueError, match="m1.*inverted"):
        fuse.fuse(pd.concat([bad, M2]), fuse.FuseParams(iou_thr=0.55), progress=False)
    with pytest.raises(ValueError, match="fusion mode"):
        fuse.fuse(M1, fuse.FuseParams(iou_thr=0.55, mode="mean"), progress=False)
    assert len(fuse.fuse(predictions.empty(), fuse.FuseParams(iou_thr=0.55), progress=False)) == 0


def test_zero_weight_model_is_left_out():
    params = fuse.FuseParams(iou_thr=0.55, mode="agnostic", weights={"m1": 0.0, "m2": 1.0})
    out = fuse.fuse(pd.concat([M1, M2]), params, progress=False)
    assert out["class"].tolist() == ["LY"]
    got = out[["x1", "y1", "x2", "y2", "score"]].to_numpy()
    np.testing.assert_allclose(got, [[12, 12, 52, 52, 0.6]], rtol=1e-6)
    np.testing.assert_allclose(out["p_LY"], [0.8])


def test_boxes_left_out_of_the_fusion_do_not_vote():
    # m2's LY box is below skip_box_thr: it is not fused and its probabilities do not count
    low = rows("a.jpg", [[12, 12, 52, 52]], [0.05], [LY], "m2", p=[probs(PNN=0.0, LY=1.0)])
    g = fuse.group(pd.concat([M1, low]))
    out = fuse.fuse_grouped(g, fuse.FuseParams(mode="agnostic", iou_thr=0.55, skip_box_thr=0.1),
                            progress=False)
    np.testing.assert_allclose(out[["p_PNN", "p_LY"]].to_numpy(), [[0.6, 0.4]])
    # class-aware: a box whose class has no fused box does not vote for another class's box
    far = rows("a.jpg", [[60, 60, 90, 90]], [0.5], [LY], "m2", p=[probs(LY=1.0)])
    out = fuse.fuse(pd.concat([M1, far]), fuse.FuseParams(iou_thr=0.55, mode="wbf"), progress=False)
    np.testing.assert_allclose(out[["p_PNN", "p_LY"]].to_numpy(), [[0.6, 0.4], [0.0, 1.0]])
