"""Blending classifier and detector probabilities (infer/blend.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cytocore import classes, config, predictions
from infer import blend
from train import checkpoint
from train.cls import data as cls_data
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


def _checkpoint(tmp_path, mode="crop", box_size=False):
    cfg = config.from_dict(ClassifierConfig, {"backbone": "resnet10t", "imgsz": 32, "mode": mode,
                                              "box_size": box_size})
    path = tmp_path / f"{mode}{'_size' if box_size else ''}.pt"
    torch.manual_seed(0)
    model = cls_model.build_model("resnet10t", box_size=box_size)
    checkpoint.save(path, model, config.to_dict(cfg), 0, metric=0.0)
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
@pytest.mark.parametrize("box_size", [False, True])
def test_apply_classifier_blends_crop_probabilities(tmp_path, fused, box_size):
    weights = _checkpoint(tmp_path, box_size=box_size)
    out = blend.apply_classifier(fused, tmp_path, [(weights, None)], weight=0.3)
    predictions.validate(out)
    pd.testing.assert_frame_equal(out[fused.columns.drop("class")], fused[fused.columns.drop("class")])
    model = ClassifierAdapter().load(weights)
    assert model.takes_size == box_size
    ims = [np.asarray(Image.open(tmp_path / n).convert("RGB")) for n in ("a.jpg", "b.jpg")]
    xyxy = fused[["x1", "y1", "x2", "y2"]].to_numpy()
    cls = np.concatenate(model.classify_boxes(ims, [xyxy[:3], xyxy[3:]]))
    crops = np.concatenate([model.crops(ims[0], xyxy[:3]), model.crops(ims[1], xyxy[3:])])
    sizes = cls_data.box_size_features(xyxy)
    np.testing.assert_array_equal(cls, model.classify(crops, sizes=sizes))
    # the blend gave each crop its own box's size: other sizes give other probabilities (size-aware only)
    assert np.allclose(cls, model.classify(crops, sizes=sizes + 1.0)) != box_size
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


def test_weight_zero_keeps_the_detectors_classes(fused):
    probs = np.full((4, 23), 0.5 / 22)
    probs[:, 0] = 0.5  # the detector's p_ columns disagree with its class on rows 1..3
    table = fused.assign(**{c: probs[:, j] for j, c in enumerate(P)})
    crop = np.eye(23)[[5, 5, 5, 5]]
    out = blend.blend_table(table, blend.ClassifierProbs(crop, None, np.zeros(4, bool)), weight=0.0)
    pd.testing.assert_frame_equal(out, table)
    assert (
        blend.blend_table(table, blend.ClassifierProbs(crop, None, np.zeros(4, bool)), 1.0)["class"].tolist()
        == [classes.CLASSES[5]] * 4
    )


def test_crop_windows_match_crop_window():
    from infer.oof_cls import crop_windows
    from train.cls.data import crop_window

    rng = np.random.default_rng(0)
    x, y = np.sort(rng.uniform(-20, 140, (200, 2)), axis=1), np.sort(rng.uniform(-20, 140, (200, 2)), axis=1)
    xyxy = np.column_stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]])
    w, h = rng.integers(60, 130, 200), rng.integers(60, 130, 200)
    for margin in (0, 16):
        got = crop_windows(xyxy, w, h, margin)
        want = [crop_window(b, wi, hi, margin) for b, wi, hi in zip(xyxy, w, h)]
        np.testing.assert_array_equal(got, np.asarray(want))


class _Dataset:
    """What infer.oof_cls needs of a prepared dataset: images with their folds, the images folder."""

    def __init__(self, root, folds):
        self.root, self.images_dir, self.folds = root, root, folds

    def images(self):
        return pd.DataFrame({"NAME": list(self.folds), "fold": list(self.folds.values())})


@pytest.mark.smoke  # a subprocess or a real search: seconds, not the unit tier
@pytest.mark.parametrize("box_size", [False, True])
def test_oof_classifier_uses_the_other_fold_and_caches_crops(tmp_path, fused, box_size):
    from infer.oof_cls import OOFClassifier

    ck = {f: _checkpoint(tmp_path / f"f{f}", box_size=box_size) for f in (0, 1)}
    full = _checkpoint(tmp_path / "full", "full", box_size)
    ds = _Dataset(tmp_path, {"a.jpg": 0, "b.jpg": 1})
    found = [("cls", 0, ck[0]), ("cls", 1, ck[1]), ("cls_full", 1, full)]
    oof = OOFClassifier(ds, found)
    n_cells = {"a.jpg": 2, "b.jpg": 1}
    for tta in (True, False):
        got = oof.probs(fused, tta, n_cells)
        # image a (fold 0) by fold 0's crop model alone; image b (fold 1) by fold 1's crop and full models
        want_a = blend.classifier_probs(
            fused.iloc[:3], tmp_path, blend.load_members([(ck[0], None)]), tta, n_cells
        )
        want_b = blend.classifier_probs(
            fused.iloc[3:], tmp_path, blend.load_members([(ck[1], None), (full, None)]), tta, n_cells
        )
        np.testing.assert_allclose(got.crop, np.concatenate([want_a.crop, want_b.crop]), atol=1e-6)
        np.testing.assert_allclose(got.full[3], want_b.full[0], atol=1e-6)
        assert np.isnan(got.full[:3]).all() and got.single.tolist() == [False, False, False, True]
    assert oof.computed == 3 + 1  # two top crops of a, one of b, one whole image; each once for both TTAs
    moved = fused.assign(x1=fused["x1"] + 0.3)  # the same integer crop windows and box sizes
    oof.probs(moved, True, n_cells)
    assert oof.computed == 4 and oof.reused >= 6
    # the same windows, boxes 1 px narrower: new crops for a size-aware model only
    narrower = fused.assign(x1=fused["x1"] + 0.8, x2=fused["x2"] - 0.1)
    got = oof.probs(narrower, True, n_cells)
    assert oof.computed == 4 + (3 if box_size else 0)
    want_a = blend.classifier_probs(narrower.iloc[:3], tmp_path, blend.load_members([(ck[0], None)]), True,
                                    n_cells)
    np.testing.assert_allclose(got.crop[:3], want_a.crop, atol=1e-6)


def test_det_probs_prefers_p_columns():
    probs = np.full((1, 23), 1 / 23)
    t = predictions.make("a.jpg", [[0, 0, 5, 5]], [0.5], [4], 10, 10, "m", 0, probs=probs)
    np.testing.assert_allclose(blend.det_probs(t), probs)
    np.testing.assert_allclose(blend.det_probs(t.drop(columns=P)), np.eye(23)[[4]])


def test_blended_table_makes_a_valid_submission(tmp_path, fused):
    from cytocore import submission
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
