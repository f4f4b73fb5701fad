"""The WBF wrapper: hand-computed fusions (expected values written as their arithmetic), bad input."""
from __future__ import annotations

import numpy as np
import pytest

from infer import wbf

pytestmark = pytest.mark.unit


def member(boxes, scores, labels):
    return np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores, dtype=float), np.array(labels)


A = member([[10, 10, 50, 50]], [0.8], [2])
B = member([[14, 14, 54, 54]], [0.4], [2])  # IoU with A = 36*36 / (1600 + 1600 - 1296) = 0.68 > 0.55


def test_two_boxes_one_cluster_avg():
    b, s, lab = wbf.fuse_image([A, B], 100, 100, iou_thr=0.55)
    # coordinates: score-weighted mean; score: mean of scores x min(members, boxes) / sum(weights)
    x1 = (0.8 * 10 + 0.4 * 14) / (0.8 + 0.4)
    x2 = (0.8 * 50 + 0.4 * 54) / (0.8 + 0.4)
    np.testing.assert_allclose(b, [[x1, x1, x2, x2]], rtol=1e-6)
    np.testing.assert_allclose(s, [(0.8 + 0.4) / 2 * min(2, 2) / 2], rtol=1e-6)
    assert lab.tolist() == [2] and lab.dtype == np.int64


def test_two_boxes_weighted():
    b, s, _ = wbf.fuse_image([A, B], 100, 100, weights=[2, 1], iou_thr=0.55)
    # each score is multiplied by its member's weight first: 1.6 and 0.4
    x1 = (1.6 * 10 + 0.4 * 14) / (1.6 + 0.4)
    np.testing.assert_allclose(b[0, 0], x1, rtol=1e-6)
    np.testing.assert_allclose(s, [(1.6 + 0.4) / 2 * min(2, 2) / (2 + 1)], rtol=1e-6)


def test_two_boxes_conf_type_max():
    _, s, _ = wbf.fuse_image([A, B], 100, 100, weights=[2, 1], conf_type="max", iou_thr=0.55)
    np.testing.assert_allclose(s, [max(0.8 * 2, 0.4 * 1) / max(2, 1)], rtol=1e-6)


def test_three_boxes_two_clusters():
    a = member([[10, 10, 50, 50]], [0.9], [1])
    b = member([[12, 12, 52, 52]], [0.6], [1])
    c = member([[70, 70, 90, 90]], [0.3], [1])
    boxes, s, lab = wbf.fuse_image([a, b, c], 200, 100, iou_thr=0.55)
    x = (0.9 * 10 + 0.6 * 12) / 1.5
    x2 = (0.9 * 50 + 0.6 * 52) / 1.5
    np.testing.assert_allclose(boxes, [[x, x, x2, x2], [70, 70, 90, 90]], rtol=1e-6)
    np.testing.assert_allclose(s, [(0.9 + 0.6) / 2 * min(3, 2) / 3, 0.3 * min(3, 1) / 3], rtol=1e-6)
    assert lab.tolist() == [1, 1]


def test_different_labels_do_not_merge():
    a = member([[10, 10, 50, 50]], [0.8], [1])
    boxes, s, lab = wbf.fuse_image([a, B], 100, 100, iou_thr=0.55)
    np.testing.assert_allclose(s, [0.8 * 1 / 2, 0.4 * 1 / 2], rtol=1e-6)
    assert lab.tolist() == [1, 2]
    np.testing.assert_allclose(boxes, [[10, 10, 50, 50], [14, 14, 54, 54]], rtol=1e-6)


def test_empty_members():
    empty = member([], [], [])
    boxes, s, lab = wbf.fuse_image([A, empty], 100, 100, iou_thr=0.55)
    np.testing.assert_allclose(boxes, [[10, 10, 50, 50]], rtol=1e-6)
    np.testing.assert_allclose(s, [0.8 * min(2, 1) / 2], rtol=1e-6)  # the empty member still counts
    boxes, s, lab = wbf.fuse_image([empty, empty], 100, 100, iou_thr=0.55)
    assert boxes.shape == (0, 4) and s.shape == (0,) and lab.shape == (0,)
    assert wbf.fuse_image([], 100, 100, iou_thr=0.55)[0].shape == (0, 4)


def test_non_square_image_normalisation():
    a = member([[100, 10, 300, 50]], [0.5], [0])
    boxes, _, _ = wbf.fuse_image([a], 400, 60, iou_thr=0.55)
    np.testing.assert_allclose(boxes, [[100, 10, 300, 50]], rtol=1e-6)


def test_clip_rule():
    # partly outside: the inside part is kept; entirely outside or flat: dropped
    part = member([[-10, 20, 50, 130]], [0.5], [0])
    boxes, _, _ = wbf.fuse_image([part], 100, 100, iou_thr=0.55)
    np.testing.assert_allclose(boxes, [[0, 20, 50, 100]], rtol=1e-6)
    outside = member([[110, 10, 120, 20], [10, 10, 10, 30]], [0.5, 0.5], [0, 0])
    boxes, s, _ = wbf.fuse_image([outside], 100, 100, iou_thr=0.55)
    assert len(boxes) == 0


def test_skip_box_thr():
    low = member([[10, 10, 50, 50]], [0.05], [0])
    assert len(wbf.fuse_image([low], 100, 100, skip_box_thr=0.1, iou_thr=0.55)[0]) == 0
    assert len(wbf.fuse_image([low], 100, 100, skip_box_thr=0.01, iou_thr=0.55)[0]) == 1


@pytest.mark.parametrize(
    "bad, match",
    [
        (member([[np.nan, 0, 10, 10]], [0.5], [0]), "yolo fold0.*NaN"),
        (member([[20, 0, 10, 10]], [0.5], [0]), "yolo fold0.*inverted"),
        (member([[0, 30, 10, 10]], [0.5], [0]), "yolo fold0.*inverted"),
        (member([[0, 0, 10, 10]], [1.5], [0]), "yolo fold0.*score"),
        (member([[0, 0, 10, 10]], [np.nan], [0]), "yolo fold0.*score"),
        (member([[0, 0, 10, 10]], [0.5], [0.5]), "yolo fold0.*label"),
        ((np.zeros((2, 4)), np.zeros(1), np.zeros(2, int)), "must match"),
    ],
)
def test_bad_boxes_raise_naming_the_member(bad, match):
    with pytest.raises(ValueError, match=match):
        wbf.fuse_image([A, bad], 100, 100, names=["good", "yolo fold0"], iou_thr=0.55)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="conf_type"):
        wbf.fuse_image([A], 100, 100, conf_type="mean", iou_thr=0.55)
    with pytest.raises(ValueError, match="iou_thr"):
        wbf.fuse_image([A], 100, 100, iou_thr=0)
    with pytest.raises(ValueError, match="skip_box_thr"):
        wbf.fuse_image([A], 100, 100, skip_box_thr=2, iou_thr=0.55)
    with pytest.raises(ValueError, match="weights"):
        wbf.fuse_image([A, B], 100, 100, weights=[1], iou_thr=0.55)
    with pytest.raises(ValueError, match="weights"):
        wbf.fuse_image([A, B], 100, 100, weights=[0, 0], iou_thr=0.55)
    with pytest.raises(ValueError, match="size"):
        wbf.fuse_image([A], 0, 100, iou_thr=0.55)


def test_float_labels_are_cast_back_to_int():
    a = member([[10, 10, 50, 50]], [0.8], [7.0])
    _, _, lab = wbf.fuse_image([a], 100, 100, iou_thr=0.55)
    assert lab.dtype == np.int64 and lab.tolist() == [7]
