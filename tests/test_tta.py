"""TTA views: exact box inverses (property tests) and a fake model whose fused output is view-invariant."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cytocore import predictions
from infer import cache, fuse, predict, tta
from train.base import Detections, Predictor

pytestmark = pytest.mark.unit

ALL_VIEWS = [*tta.VIEWS, "scale1.25", "scale0.8", "scale2"]


@st.composite
def boxes_and_size(draw):
    w = draw(st.integers(4, 1200))
    h = draw(st.integers(4, 1200))
    n = draw(st.integers(1, 6))
    coord = st.floats(-0.3, 1.3, allow_nan=False)
    rows = []
    for _ in range(n):
        x = sorted(draw(st.lists(coord, min_size=2, max_size=2)))
        y = sorted(draw(st.lists(coord, min_size=2, max_size=2)))
        rows.append([x[0] * w, y[0] * h, x[1] * w, y[1] * h])
    return np.array(rows), w, h


@pytest.mark.parametrize("name", ALL_VIEWS)
@settings(max_examples=60, deadline=None)
@given(data=boxes_and_size())
def test_inverse_of_forward_is_identity(name, data):
    b, w, h = data
    view = tta.get_view(name)
    back = view.inverse(view.forward(b, w, h), w, h)
    np.testing.assert_allclose(back, b, rtol=0, atol=1e-9 * max(w, h))


@pytest.mark.parametrize("name", ALL_VIEWS)
@settings(max_examples=30, deadline=None)
@given(data=boxes_and_size())
def test_forward_keeps_box_order_and_size_frame(name, data):
    b, w, h = data
    view = tta.get_view(name)
    f = view.forward(b, w, h)
    assert (f[:, 2] >= f[:, 0]).all() and (f[:, 3] >= f[:, 1]).all()
    vw, vh = view.size(w, h)
    # a box covering the whole image covers the whole view image
    whole = view.forward(np.array([[0, 0, w, h]]), w, h)
    np.testing.assert_allclose(whole, [[0, 0, vw, vh]], atol=1e-9 * max(w, h))


def test_view_image_sizes_non_square():
    img = np.zeros((30, 50, 3), np.uint8)  # H=30, W=50
    for name in ALL_VIEWS:
        view = tta.get_view(name)
        vh, vw = view.image(img).shape[:2]
        assert (vw, vh) == view.size(50, 30), name
    assert tta.get_view("rot90").size(50, 30) == (30, 50)
    assert tta.get_view("scale1.25").size(50, 30) == (62, 38)  # round(62.5) = 62 (banker's), round(37.5) = 38


def test_rot90_maps_a_known_box():
    # W=50, H=30; rot90 (counter-clockwise): view x = y, view y = W - x
    b = np.array([[8.0, 5.0, 20.0, 12.0]])
    np.testing.assert_allclose(tta.get_view("rot90").forward(b, 50, 30), [[5.0, 50 - 20.0, 12.0, 50 - 8.0]])
    np.testing.assert_allclose(tta.get_view("hflip").forward(b, 50, 30), [[50 - 20.0, 5.0, 50 - 8.0, 12.0]])


@pytest.mark.parametrize("bad", ["rot45", "scale", "scale-1", "scalex", "", "Identity"])
def test_unknown_view_raises(bad):
    with pytest.raises(ValueError, match="unknown TTA view"):
        tta.get_view(bad)


def test_views_list_checks():
    with pytest.raises(ValueError, match="twice"):
        tta.get_views(["hflip", "hflip"])
    with pytest.raises(ValueError, match="at least one"):
        tta.get_views([])


class BrightRectPredictor(Predictor):
    """'Detects' the bright rectangle of an image by thresholding: its pixel extent, label 5."""

    def predict(self, images, conf=0.001):
        out = []
        for img in images:
            ys, xs = np.nonzero(img[..., 0] > 127)
            if not len(xs):
                out.append(Detections.empty())
                continue
            box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float64)
            out.append(Detections(box, np.array([0.9]), np.array([5])))
        return out


def _rect_image():
    img = np.zeros((80, 160, 3), np.uint8)  # W=160, H=80: every scale below maps the edges onto pixel edges
    img[20:40, 20:60] = 255
    return img, np.array([20.0, 20.0, 60.0, 40.0])


@pytest.mark.parametrize("name", ALL_VIEWS)
def test_fake_model_finds_the_same_box_in_every_view(name):
    img, rect = _rect_image()
    table = predict.predict_arrays(BrightRectPredictor(), [("a.jpg", img)], [tta.get_view(name)], "fake", 0)
    assert table["view"].tolist() == [name]
    np.testing.assert_allclose(table[["x1", "y1", "x2", "y2"]].to_numpy()[0], rect, atol=1e-9)


def test_fake_model_fused_over_all_views_is_invariant():
    img, rect = _rect_image()
    views = tta.get_views(ALL_VIEWS)
    pairs = [("a.jpg", img), ("b.jpg", img)]
    table = predict.predict_arrays(BrightRectPredictor(), pairs, views, "fake", 0, batch=1)
    assert len(table) == 2 * len(ALL_VIEWS)
    fused = fuse.fuse(table, fuse.FuseParams(iou_thr=0.55, mode="wbf"), progress=False)
    assert fused["NAME"].tolist() == ["a.jpg", "b.jpg"]
    np.testing.assert_allclose(fused[["x1", "y1", "x2", "y2"]].to_numpy(), [rect, rect], atol=1e-4)
    np.testing.assert_allclose(fused["score"], [0.9, 0.9], atol=1e-6)  # every slot agrees: avg = 0.9
    assert fused["class"].tolist() == ["MO", "MO"]  # label 5 = CLASSES[5]


def test_images_without_detections_give_no_rows():
    class Nothing(Predictor):
        def predict(self, images, conf=0.001):
            return [Detections.empty(with_probs=True) for _ in images]

    img, _ = _rect_image()
    views = tta.get_views(["identity", "rot90"])
    table = predict.predict_arrays(Nothing(), [("a.jpg", img)], views, "none", 0)
    assert len(table) == 0 and list(table.columns[:12]) == list(predictions.COLUMNS)


def test_cached_table_reuses_a_table_with_more_views(tmp_path):
    img, _ = _rect_image()
    made = []

    def make(names):
        made.append(names)
        views = tta.get_views(names)
        return predict.predict_arrays(BrightRectPredictor(), [("a.jpg", img)], views, "fake", 0)

    path = tmp_path / "test.parquet"
    meta = {"weights": "w.pt", "views": ["identity", "hflip"], "conf": 0.001}
    cache.cached_table(path, meta, lambda: make(["identity", "hflip"]))
    fewer = cache.cached_table(path, {**meta, "views": ["hflip"]}, lambda: make(["hflip"]))
    assert len(made) == 1 and fewer["view"].tolist() == ["hflip"]
    cache.cached_table(path, {**meta, "views": ["identity", "rot90"]}, lambda: make(["identity", "rot90"]))
    cache.cached_table(path, {**meta, "conf": 0.01}, lambda: make(["identity", "rot90"]))
    assert len(made) == 3  # a new view, then a new threshold: predicted again
