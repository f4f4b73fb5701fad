"""Blending classifier and detector probabilities (infer/blend.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cytokit import classes, config, predictions
from infer import blend
from train import checkpoint
from train.cls import model as cls_model
from train.cls.adapter import ClassifierAdapter, ClassifierConfig

pytestmark = pytest.mark.unit

P = list(classes.PROB_COLUMNS)


def test_blend_probs_arithmetic():
    det = np.array([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3]])
    cls = np.array([[0.0, 0.5, 0.5], [0.6, 0.2, 0.2]])
    out = blend.blend_probs(det, cls, 0.25)
    np.testing.assert_allclose(out, [
        [0.75 * 1.0 + 0.25 * 0.0, 0.25 * 0.5, 0.25 * 0.5],
        [0.75 * 0.2 + 0.25 * 0.6, 0.75 * 0.5 + 0.25 * 0.2, 0.75 * 0.3 + 0.25 * 0.2],
    ])
    np.testing.assert_allclose(blend.blend_probs(det, cls, 0.0), det)
    np.testing.assert_allclose(blend.blend_probs(det, cls, 1.0), cls)
    full = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    out = blend.blend_probs(det, cls, 0.5, full, full_weight=0.4, single=np.array([False, True]))
    np.testing.assert_allclose(out[0], 0.5 * cls[0] + 0.5 * det[0])  # not a single-cell row: no full
    c1 = 0.6 * cls[1] + 0.4 * full[1]
    np.testing.assert_allclose(out[1], 0.5 * c1 + 0.5 * det[1])


@pytest.mark.parametrize("args, match", [
    ((np.ones((2, 3)), np.ones((2, 4)), 0.5), "one shape"),
    ((np.ones((2, 3)), np.ones((2, 3)), 1.5), r"must lie in \[0, 1\]"),
    ((np.ones((2, 3)), np.full((2, 3), np.nan), 0.5), "finite"),
])
def test_blend_probs_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        blend.blend_probs(*args)


def _pad(rows):
    out = np.zeros((len(rows), classes.NUM_CLASSES))
    out[:, :3] = rows
    return out


def test_tune_blend_weight_hand_case():
    # Row 0 is right (class 1) when w > 1/4, row 1 (class 0) and row 2 (class 2) when w < 2/3.
    det = _pad([[0.6, 0.4, 0.0], [0.6, 0.4, 0.0], [0.0, 0.3, 0.7]])
    cls = _pad([[0.2, 0.8, 0.0], [0.45, 0.55, 0.0], [0.0, 0.6, 0.4]])
    best, table = blend.tune_blend_weight(det, cls, [1, 0, 2], grid=[0.0, 0.2, 0.5, 0.8, 1.0])
    assert best == 0.5
    # w <= 0.2: predictions 0, 0, 2 -> F1 = (2/3 + 0 + 1) / 3; w >= 0.8: 1, 1, 1 -> F1 = (0 + 1/2 + 0) / 3
    assert table["macro_f1"].tolist() == pytest.approx([5 / 9, 5 / 9, 1.0, 1 / 6, 1 / 6])
    assert table["accuracy"].tolist() == pytest.approx([2 / 3, 2 / 3, 1.0, 1 / 3, 1 / 3])
    codes = [classes.CLASSES[i] for i in (1, 0, 2)]
    assert blend.tune_blend_weight(det, cls, codes, grid=[0.0, 0.2, 0.5, 0.8, 1.0])[0] == 0.5


def _checkpoint(tmp_path, mode="crop"):
    cfg = config.from_dict(ClassifierConfig, {"backbone": "resnet10t", "imgsz": 32, "mode": mode})
    path = tmp_path / f"{mode}.pt"
    checkpoint.save(path, cls_model.build_model("resnet10t"), config.to_dict(cfg), 0, metric=0.0)
    return path


@pytest.fixture
def fused(tmp_path):
    """Two images; image a has three boxes without p_ columns, image b one."""
    rng = np.random.default_rng(1)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(tmp_path / name)
    a = predictions.make("a.jpg", [[0, 0, 20, 20], [10, 10, 40, 40], [30, 5, 59, 49]], [0.9, 0.2, 0.6],
                         [0, 1, 2], 60, 50, "ens", -1, "fused")
    b = predictions.make("b.jpg", [[5, 5, 45, 45]], [0.7], [3], 60, 50, "ens", -1, "fused")
    return pd.concat([a, b], ignore_index=True)


@pytest.mark.smoke
def test_apply_classifier_blends_crop_probabilities(tmp_path, fused):
    weights = _checkpoint(tmp_path)
    out = blend.apply_classifier(fused, tmp_path, [(weights, None)], weight=0.3)
    predictions.validate(out)
    pd.testing.assert_frame_equal(out[fused.columns.drop("class")], fused[fused.columns.drop("class")])
    model = ClassifierAdapter().load(weights)
    ims = [np.asarray(Image.open(tmp_path / n).convert("RGB")) for n in ("a.jpg", "b.jpg")]
    xyxy = fused[["x1", "y1", "x2", "y2"]].to_numpy()
    cls = np.concatenate(model.classify_boxes(ims, [xyxy[:3], xyxy[3:]]))
    expected = 0.3 * cls + 0.7 * np.eye(23)[[0, 1, 2, 3]]
    np.testing.assert_allclose(out[P].to_numpy(), expected, atol=1e-6)
    assert out["class"].tolist() == [classes.CLASSES[i] for i in expected.argmax(1)]
    same = blend.apply_classifier(fused, tmp_path, [(weights, None)], weight=0.0)
    assert same["class"].tolist() == fused["class"].tolist()


@pytest.mark.smoke
def test_apply_classifier_top_n_and_full_image_members(tmp_path, fused):
    crop, full = _checkpoint(tmp_path, "crop"), _checkpoint(tmp_path, "full")
    n_cells = {"a.jpg": 2, "b.jpg": 1}
    members = blend.load_members([(crop, None), (full, None)])
    probs = blend.classifier_probs(fused, tmp_path, members, True, n_cells)
    # image a: its top-2 rows by score (0.9, 0.6) are classified, the 0.2 row is not
    assert np.isnan(probs.crop).any(axis=1).tolist() == [False, True, False, False]
    assert probs.single.tolist() == [False, False, False, True]
    assert np.isnan(probs.full).any(axis=1).tolist() == [True, True, True, False]
    out = blend.apply_classifier(fused, tmp_path, [(crop, None), (full, None)], 0.5, n_cells=n_cells,
                                 full_weight=0.25)
    det = np.eye(23)[[0, 1, 2, 3]]
    np.testing.assert_allclose(out[P].to_numpy()[1], det[1])  # not classified: the detector's
    c3 = 0.75 * probs.crop[3] + 0.25 * probs.full[3]
    np.testing.assert_allclose(out[P].to_numpy()[3], 0.5 * c3 + 0.5 * det[3], atol=1e-6)


def test_det_probs_prefers_p_columns():
    probs = np.full((1, 23), 1 / 23)
    t = predictions.make("a.jpg", [[0, 0, 5, 5]], [0.5], [4], 10, 10, "m", 0, probs=probs)
    np.testing.assert_allclose(blend.det_probs(t), probs)
    np.testing.assert_allclose(blend.det_probs(t.drop(columns=P)), np.eye(23)[[4]])


def test_blended_table_makes_a_valid_submission(tmp_path, fused):
    from cytokit import submission
    from submit import validate, writer

    crop = np.full((4, 23), 0.01)
    crop[:, classes.CLASS_TO_ID["EO"]] = 0.78  # the classifier says EO everywhere
    probs = blend.ClassifierProbs(crop, None, np.array([False, False, False, True]))
    out = blend.blend_table(fused, probs, weight=0.6)
    assert out["class"].tolist() == ["EO"] * 4  # 0.6 * 0.78 > 0.4 * 1 + 0.6 * 0.01
    test = pd.DataFrame({"trustii_id": [5, 9, 7], "NAME": ["a.jpg", "b.jpg", "a.jpg"]})
    test.to_csv(tmp_path / "test.csv", index=False)
    sub = submission.make_submission(out, test, submission.image_sizes(test["NAME"], tmp_path, out))
    path = writer.write_submission(sub, tmp_path / "test.csv", tmp_path / "subs", tmp_path)
    problems = validate.validate_submission(path, tmp_path / "test.csv", tmp_path)
    assert [p for p in problems if p.level == "error"] == []
    written = pd.read_csv(path)
    assert written["trustii_id"].tolist() == [5, 9, 7] and set(written["class"]) == {"EO"}
