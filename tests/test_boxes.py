"""The one box module: conversions, clipping, validation, IoU/GIoU (lists, arrays, tensors)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cytocore import boxes

pytestmark = pytest.mark.unit

XYXY = [[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 2.0]]
XYWH = [[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 1.0, 2.0]]
CXCYWH = [[30.0, 50.0, 40.0, 60.0], [0.5, 1.0, 1.0, 2.0]]


@pytest.mark.parametrize("kind", ["list", "ndarray", "tensor"])
@pytest.mark.parametrize(
    "src,dst,data_in,data_out",
    [
        ("xyxy", "xywh", XYXY, XYWH),
        ("xyxy", "cxcywh", XYXY, CXCYWH),
        ("xywh", "xyxy", XYWH, XYXY),
        ("cxcywh", "xyxy", CXCYWH, XYXY),
        ("xywh", "cxcywh", XYWH, CXCYWH),
        ("cxcywh", "xywh", CXCYWH, XYWH),
    ],
)
def test_convert_known_values(kind, src, dst, data_in, data_out):
    data = {"list": data_in, "ndarray": np.array(data_in), "tensor": torch.tensor(data_in)}[kind]
    out = boxes.convert(data, src, dst)
    if kind == "tensor":
        assert isinstance(out, torch.Tensor)
        out = out.numpy()
    np.testing.assert_allclose(out, data_out)


def test_unknown_format_names_valid_ones():
    with pytest.raises(ValueError, match="xyxy, xywh, cxcywh"):
        boxes.convert(XYXY, "tlrb", "xyxy")


def test_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        boxes.convert([[1, 2, 3]], "xyxy", "xywh")


def test_empty_boxes_keep_shape():
    out = boxes.convert([], "xyxy", "cxcywh")
    assert out.shape == (0, 4)
    assert boxes.iou_matrix(out, XYXY).shape == (0, 2)


box_strategy = st.tuples(
    st.floats(-100, 700), st.floats(-100, 700), st.floats(0.5, 400), st.floats(0.5, 400)
).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@settings(max_examples=60, deadline=None)
@given(st.lists(box_strategy, min_size=1, max_size=8), st.sampled_from(["xywh", "cxcywh"]))
def test_round_trip_through_every_format(bs, fmt):
    back = boxes.convert(boxes.convert(bs, "xyxy", fmt), fmt, "xyxy")
    np.testing.assert_allclose(back, bs, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(box_strategy, min_size=1, max_size=8), st.integers(1, 2000), st.integers(1, 2000))
def test_normalize_round_trip(bs, w, h):
    back = boxes.denormalize(boxes.normalize(bs, w, h), w, h)
    np.testing.assert_allclose(back, bs, rtol=1e-12, atol=1e-9)


def test_normalize_per_box_sizes():
    out = boxes.normalize([[0, 0, 100, 50], [0, 0, 100, 50]], np.array([200, 100]), np.array([100, 50]))
    np.testing.assert_allclose(out, [[0, 0, 0.5, 0.5], [0, 0, 1.0, 1.0]])


def test_clip_like_the_real_data():
    # Real train.csv has x1 = -85 and x2 = 718 on ~360 px images.
    out = boxes.clip([[-85.0, -3.0, 120.0, 400.0], [300.0, 10.0, 718.0, 50.0]], 360, 370)
    np.testing.assert_allclose(out, [[0, 0, 120, 370], [300, 10, 360, 50]])
    t = boxes.clip(torch.tensor([[-85.0, -3.0, 120.0, 400.0]]), 360, 370)
    np.testing.assert_allclose(t.numpy(), [[0, 0, 120, 370]])


def test_is_valid_and_validate():
    mask = boxes.is_valid([[0, 0, 1, 1], [5, 5, 5, 6], [3, 0, 2, 1], [0, np.nan, 1, 1], [0, 0, np.inf, 1]])
    assert mask.tolist() == [True, False, False, False, False]
    with pytest.raises(ValueError, match="first at row 1"):
        boxes.validate([[0, 0, 1, 1], [2, 2, 1, 1]])


def test_area():
    np.testing.assert_allclose(boxes.area([[0, 0, 10, 5], [3, 3, 1, 1]]), [50, 0])


def test_iou_hand_computed():
    a = [[0, 0, 10, 10]]
    b = [[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30]]
    # overlap 5x5=25, union 100+100-25=175
    np.testing.assert_allclose(boxes.iou_matrix(a, b), [[25 / 175, 1.0, 0.0]])


def test_giou_hand_computed():
    a = [[0, 0, 10, 10]]
    b = [[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]]
    # pair 1: IoU 25/175, enclosing 15x15=225: GIoU = 25/175 - (225-175)/225
    # pair 2: IoU 0, union 200, enclosing 30x30=900: GIoU = 0 - (900-200)/900
    expected = [[25 / 175 - 50 / 225, -700 / 900, 1.0]]
    np.testing.assert_allclose(boxes.giou_matrix(a, b), expected)
    np.testing.assert_allclose(boxes.giou_matrix(torch.tensor(a, dtype=torch.float64),
                                                 torch.tensor(b, dtype=torch.float64)).numpy(), expected)


def test_giou_degenerate_boxes_are_finite():
    # A 0,0,0,0 prediction against a real box: IoU 0, enclosing = the real box (area 100,
    # union 100): GIoU = 0 - 0/100 = 0. Two zero boxes: every denominator floored at 1e-7.
    g = boxes.giou_matrix([[0, 0, 10, 10], [0, 0, 0, 0]], [[0, 0, 0, 0]])
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, [[0.0], [0.0]])


@settings(max_examples=60, deadline=None)
@given(st.lists(box_strategy, min_size=1, max_size=6), st.lists(box_strategy, min_size=1, max_size=6))
def test_giou_properties(a, b):
    g = boxes.giou_matrix(a, b)
    i = boxes.iou_matrix(a, b)
    assert g.shape == (len(a), len(b))
    assert np.all(g <= i + 1e-12) and np.all(g >= -1 - 1e-12) and np.all(i <= 1 + 1e-12)
    np.testing.assert_allclose(boxes.giou_matrix(b, a), g.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(boxes.giou_matrix(a, a)), 1.0, atol=1e-9)
