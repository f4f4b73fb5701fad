"""prepare.clean on hand-made boxes: each step's effect and its count."""
from __future__ import annotations

import pandas as pd
import pytest

from prepare import clean

pytestmark = pytest.mark.unit


def table(rows):
    return pd.DataFrame(rows, columns=["NAME", "x1", "y1", "x2", "y2", "class"]).astype(
        {c: float for c in ("x1", "y1", "x2", "y2")})


def sizes(**wh):
    return pd.DataFrame([(n, w, h) for n, (w, h) in wh.items()], columns=["NAME", "width", "height"])


def step(report, name):
    return next(s for s in report.steps if s["step"] == name)


def test_clip_degenerate_and_small():
    boxes = table([
        ("a", -5, 10, 50, 60, "PNN"),   # clipped to 0,10,40,50
        ("a", 39, 0, 45, 30, "MO"),     # clipped to 39,0,40,30: 1 px wide < min_side 2
        ("b", 50, 10, 60, 20, "EO"),    # entirely right of the 40 px wide image: degenerate
        ("c", 5, 5, 20, 20, "LY"),      # untouched
    ])
    out, report = clean.clean(boxes, sizes(a=(40, 50), b=(40, 50), c=(30, 30)), min_side=2)
    assert out[["x1", "y1", "x2", "y2"]].values.tolist() == [[0, 10, 40, 50], [5, 5, 20, 20]]
    assert out["NAME"].tolist() == ["a", "c"]
    assert out["width"].tolist() == [40, 30] and out["height"].tolist() == [50, 30]
    assert list(out.columns) == list(clean.BOX_COLUMNS)
    clip = step(report, "clip")
    assert (clip["boxes_changed"], clip["images_changed"], clip["boxes_removed"]) == (3, 2, 0)
    degenerate = step(report, "degenerate")
    assert (degenerate["boxes_removed"], degenerate["images_removed"]) == (1, 1)  # image b loses its only box
    small = step(report, "too small")
    assert (small["boxes_removed"], small["images_removed"], small["boxes"], small["images"]) == (1, 0, 2, 2)


def test_min_side_zero_keeps_slivers():
    boxes = table([("a", 39, 0, 45, 30, "MO")])
    out, _ = clean.clean(boxes, sizes(a=(40, 50)), min_side=0)
    assert out[["x1", "x2"]].values.tolist() == [[39, 40]]


def test_duplicate_rows_counted():
    boxes = table([("a", 1, 1, 9, 9, "PNN"), ("a", 1, 1, 9, 9, "PNN"), ("a", 1, 1, 9, 9, "MO")])
    out, report = clean.clean(boxes, sizes(a=(20, 20)))
    assert step(report, "duplicate rows")["boxes_removed"] == 1
    # The remaining PNN and MO boxes are the same box with two classes: IoU 1 > 0.7,
    # a cross-class pair, kept by the default policy.
    assert out["class"].tolist() == ["PNN", "MO"]
    assert step(report, "cross-class overlaps")["pairs"] == 1


def test_same_class_near_duplicate_kept_once():
    # IoU of the first two: intersection 39*39 = 1521, union 1600 + 1600 - 1521 = 1679 -> 0.906
    boxes = table([
        ("a", 10, 10, 50, 50, "PNN"),
        ("a", 11, 11, 51, 51, "PNN"),
        ("a", 12, 12, 52, 52, "PNN"),   # also a duplicate of the first (IoU 38*38/1756 = 0.822)
        ("a", 60, 60, 100, 100, "PNN"),
        ("b", 10, 10, 50, 50, "PNN"),
    ])
    out, report = clean.clean(boxes, sizes(a=(120, 120), b=(60, 60)))
    assert out[["NAME", "x1"]].values.tolist() == [["a", 10], ["a", 60], ["b", 10]]
    s = step(report, "same-class duplicates")
    assert (s["boxes_removed"], s["images_removed"]) == (2, 0)


def test_same_class_threshold_is_strict():
    # 20x40 boxes overlapping on half their width: IoU 400 / (800 + 800 - 400) = 1/3
    boxes = table([("a", 0, 0, 20, 40, "LY"), ("a", 10, 0, 30, 40, "LY")])
    out, _ = clean.clean(boxes, sizes(a=(50, 50)), same_class_iou=1 / 3)
    assert len(out) == 2  # IoU == threshold is not above it
    out, _ = clean.clean(boxes, sizes(a=(50, 50)), same_class_iou=0.33)
    assert len(out) == 1


def test_multi_cell_lf_image_untouched_by_default():
    # 11 LF cells, as in the busiest real image: a 4 x 3 grid of 50 px cells that overlap
    # their neighbours by 5 px (IoU 250 / 4750 = 0.053), minus one.
    rows = [("lf", 45 * i, 45 * j, 45 * i + 50, 45 * j + 50, "LF") for j in range(3) for i in range(4)][:11]
    rows.append(("lf", 130, 85, 185, 140, "LLC"))  # another class over a corner: IoU 500 / 5025
    boxes = table(rows)
    out, report = clean.clean(boxes, sizes(lf=(190, 150)))
    pd.testing.assert_frame_equal(out[["NAME", "x1", "y1", "x2", "y2", "class"]], boxes)
    assert all(s["boxes_removed"] == 0 and s["boxes_changed"] == 0 for s in report.steps)


@pytest.mark.parametrize(
    ("policy", "kept", "pairs"),
    [
        ("keep_both", ["PNN", "MO", "EO"], 1),
        ("drop_both", ["EO"], 1),
        ("keep_larger", ["PNN", "EO"], 1),
        ("drop_image", [], 1),
    ],
)
def test_cross_class_policies(policy, kept, pairs):
    # PNN 40x40 and MO 38x38 inside it: IoU 1444 / 1600 = 0.9025 > 0.7; EO elsewhere.
    boxes = table([
        ("a", 10, 10, 50, 50, "PNN"),
        ("a", 12, 12, 50, 50, "MO"),
        ("a", 60, 60, 90, 90, "EO"),
        ("b", 1, 1, 9, 9, "LY"),
    ])
    out, report = clean.clean(boxes, sizes(a=(100, 100), b=(10, 10)), cross_class_policy=policy)
    assert out.loc[out["NAME"] == "a", "class"].tolist() == kept
    assert out.loc[out["NAME"] == "b", "class"].tolist() == ["LY"]
    s = step(report, "cross-class overlaps")
    assert s["pairs"] == pairs and s["policy"] == policy
    assert s["boxes_removed"] == 3 - len(kept)
    assert s["images_removed"] == (1 if policy == "drop_image" else 0)


def test_keep_larger_on_equal_areas_drops_the_later_box():
    boxes = table([("a", 0, 0, 10, 10, "PNN"), ("a", 0, 1, 10, 11, "MO")])  # IoU 90 / 110 = 0.818
    out, _ = clean.clean(boxes, sizes(a=(20, 20)), cross_class_policy="keep_larger")
    assert out["class"].tolist() == ["PNN"]


def test_bad_inputs():
    boxes = table([("a", 0, 0, 10, 10, "PNN")])
    with pytest.raises(ValueError, match="1 image\\(s\\) have boxes but no size: a"):
        clean.clean(boxes, sizes(b=(20, 20)))
    with pytest.raises(ValueError, match="valid: keep_both, drop_both, keep_larger, drop_image"):
        clean.clean(boxes, sizes(a=(20, 20)), cross_class_policy="merge")
    with pytest.raises(ValueError, match="positive"):
        clean.clean(boxes, sizes(a=(0, 20)))


def test_report_table_lists_every_step():
    _, report = clean.clean(table([("a", 0, 0, 10, 10, "PNN")]), sizes(a=(20, 20)))
    lines = report.table().splitlines()
    assert [line.split("  ")[0] for line in lines[2:]] == [
        "duplicate rows", "clip", "degenerate", "too small", "same-class duplicates", "cross-class overlaps"]
    assert lines[2].split()[-2:] == ["1", "1"]


def test_balance_by_whole_images():
    # PNN: 5 single-box images; SS: 1 image with SS + PNN; per_class 2.
    rows = [(f"p{i}", 0, 0, 5, 5, "PNN") for i in range(5)]
    rows += [("s", 0, 0, 5, 5, "SS"), ("s", 6, 6, 9, 9, "PNN")]
    boxes = table(rows)
    out, detail = clean.balance(boxes, per_class=2, seed=0)
    assert "s" in set(out["NAME"])  # the only SS image is always kept
    counts = out["class"].value_counts()
    assert counts["SS"] == 1
    assert counts["PNN"] in (2, 3)  # 2, plus the one riding with SS when s comes after two PNN images
    assert detail["class_boxes_before_after"]["PNN"] == [6, int(counts["PNN"])]
    assert detail["class_boxes_before_after"]["SS"] == [1, 1]
    whole = boxes[boxes["NAME"].isin(out["NAME"])]
    assert out.groupby("NAME").size().to_dict() == whole.groupby("NAME").size().to_dict()
    again, _ = clean.balance(boxes, per_class=2, seed=0)
    pd.testing.assert_frame_equal(out, again)
    with pytest.raises(ValueError, match="positive"):
        clean.balance(boxes, per_class=0, seed=0)
