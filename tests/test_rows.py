"""Detections -> prediction rows (cytocore.rows), one conversion for OOF and inference; the YOLO letterbox."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytocore import classes, rows
from train.base import Detections

pytestmark = pytest.mark.unit


class Fixed:
    """A predictor returning the same detections for every image, counting its calls."""

    def __init__(self, det: Detections):
        self.det, self.calls = det, []

    def predict(self, images, conf=0.001):
        self.calls.append(len(images))
        return [self.det for _ in images]


# image 100 x 80: a box over the right edge, a zero-area one, a NaN one, three fine ones
DET = Detections(
    xyxy=np.array([[90, 10, 130, 30], [5, 5, 5, 20], [np.nan, 0, 1, 1], [10, 10, 20, 20],
                   [30, 30, 50, 50], [0, 0, 10, 10]], dtype=np.float64),
    scores=np.array([0.9, 0.99, 0.8, 0.5, 1.2, 0.7]),
    labels=np.array([1, 2, 3, 4, 5, 6]),
)


def test_rows_clip_drop_order_and_max_det():
    r = rows.Rows()
    assert r.add("a.jpg", DET, 100, 80, max_det=3) == 3
    t = r.table("m", 2)
    # best first, scores clipped to 1; the degenerate and the NaN box are gone; the edge box clipped at x=100
    assert t["score"].tolist() == [1.0, 0.9, 0.7]
    expected = [[30, 30, 50, 50], [90, 10, 100, 30], [0, 0, 10, 10]]
    assert t[["x1", "y1", "x2", "y2"]].values.tolist() == expected
    assert t["class"].tolist() == [classes.CLASSES[5], classes.CLASSES[1], classes.CLASSES[6]]
    assert (t["width"] == 100).all() and (t["height"] == 80).all() and (t["fold"] == 2).all()


def test_oof_and_inference_make_the_same_table(tmp_path):
    from PIL import Image

    from infer import predict, tta
    from train import oof

    img = np.zeros((80, 100, 3), np.uint8)
    for name in ("a.jpg", "b.png"):
        Image.fromarray(img).save(tmp_path / name)
    a = oof.predict_images(Fixed(DET), tmp_path, ["a.jpg", "b.png"], "m", 0, max_det=4, progress=False)
    b = predict.predict_arrays(Fixed(DET), [("a.jpg", img), ("b.png", img)], tta.get_views(["identity"]),
                               "m", 0, max_det=4)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 8 and a["x2"].max() == 100  # clipped, max_det applied in OOF too


def test_every_view_of_a_chunk_goes_in_one_call():
    from infer import predict, tta

    p = Fixed(DET)
    img = np.zeros((80, 100, 3), np.uint8)
    views = tta.get_views(["identity", "hflip", "vflip"])
    t = predict.predict_arrays(p, [(f"{i}.jpg", img) for i in range(5)], views, "m", 0, batch=2)
    assert p.calls == [6, 6, 3]
    assert t.groupby("view").size().to_dict() == {"hflip": 20, "identity": 20, "vflip": 20}
    # hflip maps the clipped edge box (90..100) to 0..10 of the view and back to 90..100
    flipped = t[(t["view"] == "hflip") & (t["NAME"] == "0.jpg")]
    assert flipped[["x1", "x2"]].values[1].tolist() == pytest.approx([0.0, 10.0])


def test_probabilities_missing_for_some_images_become_nan():
    with_p = Detections(DET.xyxy[3:4], DET.scores[3:4], DET.labels[3:4], np.full((1, 23), 1 / 23))
    r = rows.Rows()
    r.add("a.jpg", with_p, 100, 80)
    r.add("b.jpg", DET, 100, 80)
    t = r.table("m", 0)
    assert np.isnan(t.loc[t["NAME"] == "b.jpg", "p_" + classes.CLASSES[0]]).all()
    assert t.loc[t["NAME"] == "a.jpg", "p_" + classes.CLASSES[0]].tolist() == [pytest.approx(1 / 23)]


def test_bad_class_id_is_refused():
    bad = Detections(np.array([[0, 0, 5, 5.0]]), np.array([0.5]), np.array([23]))
    with pytest.raises(ValueError, match="class id"):
        rows.Rows().add("a.jpg", bad, 10, 10, what="m fold0")


@pytest.mark.parametrize("size", [160, 384])
def test_letterbox_matches_ultralytics(size):
    import torch
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.ops import scale_boxes

    from train.yolo.predict import letterbox_batch, unletterbox

    rng = np.random.default_rng(0)
    for h, w in ((360, 368), (575, 768), (100, 37), (size, size)):
        im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours, params = letterbox_batch([im], size)
        theirs = LetterBox((size, size), auto=False)(image=im)
        np.testing.assert_array_equal(ours[0], theirs)
        boxes = rng.uniform(0, size, (7, 4))
        boxes[:, 2:] = boxes[:, :2] + rng.uniform(1, 50, (7, 2))
        expected = scale_boxes((size, size), torch.tensor(boxes), (h, w)).numpy()
        np.testing.assert_allclose(unletterbox(boxes, params[0]), expected, atol=1e-9)
