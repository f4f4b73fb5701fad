"""Submission writer: top-N per image, full-image fillers, nudged repeats, atomic timestamped files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cytocore import classes, io, predictions, submission, tables
from cytocore.metric import score
from submit import write, writer

pytestmark = pytest.mark.unit

TEST = pd.DataFrame({"trustii_id": [10, 20, 11, 30, 40, 41, 42],
                     "NAME": ["a.jpg", "b.jpg", "a.jpg", "c.jpg", "d.jpg", "d.jpg", "d.jpg"]})
SIZES = pd.DataFrame({"NAME": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "width": [100, 120, 90, 60],
                      "height": [80, 110, 70, 50]})


def dets(name, rows, probs=None):
    """rows: (x1, y1, x2, y2, score, class)."""
    xyxy = np.array([r[:4] for r in rows], dtype=np.float64)
    size = SIZES.set_index("NAME").loc[name]
    return predictions.make(name, xyxy, [r[4] for r in rows], [classes.CLASS_TO_ID[r[5]] for r in rows],
                            int(size["width"]), int(size["height"]), "m", 0, probs=probs)


def test_top_n_by_confidence_in_test_order_and_fillers():
    preds = pd.concat([
        dets("a.jpg", [(1, 1, 20, 20, 0.3, "MO"), (30, 30, 50, 50, 0.9, "PNN"),
                       (5.123456, 5, 9, 9, 0.6, "LY")]),
        dets("b.jpg", [(2, 2, 40, 40, 0.8, "EO"), (3, 3, 30, 30, 0.7, "EO")]),
        dets("c.jpg", [(2, 2, 40, 40, 0.5, "EO")]),
    ])
    sub = submission.make_submission(preds, TEST, SIZES)
    assert sub.columns.tolist() == ["trustii_id", "NAME", "x1", "y1", "x2", "y2", "class"]
    assert sub["trustii_id"].tolist() == TEST["trustii_id"].tolist()
    rows = sub.set_index("trustii_id")
    # a.jpg: 2 rows -> the two most confident, in test.csv order (10 then 11); 5.123456 rounds to 5.12
    assert rows.loc[10, ["x1", "y1", "x2", "y2", "class"]].tolist() == [30.0, 30.0, 50.0, 50.0, "PNN"]
    assert rows.loc[11, ["x1", "class"]].tolist() == [5.12, "LY"]
    assert rows.loc[20, "class"] == "EO" and rows.loc[30, "class"] == "EO"
    # d.jpg: 3 rows, no detection: full-image boxes (0, 0, 59, 49) with the overall most frequent class
    # (EO: 3 of 6 detections), the 2nd and 3rd nudged by 0.01 and 0.02 so the metric keeps them
    d = rows.loc[[40, 41, 42]]
    assert d["x1"].tolist() == [0.0, 0.01, 0.02] and d["y1"].tolist() == [0.0, 0.01, 0.02]
    assert d["x2"].tolist() == [59.0] * 3 and d["y2"].tolist() == [49.0] * 3 and set(d["class"]) == {"EO"}


def test_filler_class_from_the_images_own_detections():
    probs = np.zeros((2, classes.NUM_CLASSES))
    probs[0, classes.CLASS_TO_ID["MO"]], probs[0, classes.CLASS_TO_ID["LY"]] = 0.6, 0.4
    probs[1, classes.CLASS_TO_ID["MO"]], probs[1, classes.CLASS_TO_ID["LY"]] = 0.1, 0.9
    # score-weighted sums: MO 0.9*0.6 + 0.5*0.1 = 0.59, LY 0.9*0.4 + 0.5*0.9 = 0.81 -> LY
    preds = dets("d.jpg", [(1, 1, 20, 20, 0.9, "MO"), (30, 30, 50, 48, 0.5, "LY")], probs=probs)
    test = TEST[TEST["NAME"] == "d.jpg"]
    sub = submission.make_submission(preds, test, SIZES)
    assert sub["class"].tolist() == ["MO", "LY", "LY"] and sub["x2"].tolist() == [20.0, 50.0, 59.0]
    # without probabilities: summed scores per predicted class, MO 0.9 > LY 0.5
    sub = submission.make_submission(preds.drop(columns=list(predictions.PROB_COLUMNS)), test, SIZES)
    assert sub["class"].tolist() == ["MO", "LY", "MO"]


def test_no_detection_at_all_fills_pnn_and_needs_sizes():
    sub = submission.make_submission(predictions.empty(), TEST, SIZES)
    assert set(sub["class"]) == {"PNN"} and len(sub) == len(TEST)
    with pytest.raises(ValueError, match="no image size for 1 test image"):
        submission.make_submission(predictions.empty(), TEST, SIZES[SIZES["NAME"] != "c.jpg"])


def test_writer_output_scores_like_the_detections():
    truth = TEST.assign(x1=[1, 2, 30, 4, 5, 6, 7], y1=1, x2=[20, 40, 50, 40, 30, 30, 30],
                        y2=[20, 40, 50, 30, 30, 30, 30],
                        **{"class": ["MO", "EO", "PNN", "LY", "B", "M", "MM"]})
    preds = pd.concat([dets(n, [(*box, 0.9, c)]) for n, box, c in
                       zip(truth["NAME"], truth[["x1", "y1", "x2", "y2"]].to_numpy(), truth["class"])])
    assert score(truth, submission.make_submission(preds, TEST, SIZES)).total == pytest.approx(1.0, abs=1e-12)


def _write_test_csv(tmp_path):
    path = tmp_path / "test.csv"
    TEST.to_csv(path, index=False)
    return path


def test_write_submission_is_timestamped_validated_and_linked(tmp_path):
    test_path = _write_test_csv(tmp_path)
    out = tmp_path / "subs"
    sub = submission.make_submission(predictions.empty(), TEST, SIZES)
    first = writer.write_submission(sub, test_path, out)
    second = writer.write_submission(sub.assign(y2=sub["y2"] - 1), test_path, out)
    assert first != second and first.exists() and second.name.startswith("submission_")
    latest = out / "submission.csv"
    assert latest.resolve() == second.resolve()
    back = tables.read(latest, "submission")
    assert back["y2"].tolist() == (sub["y2"] - 1).tolist()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("submission_")) == ["submission.csv"]
    bad = sub.copy()
    bad.loc[0, "class"] = "Pnn"
    with pytest.raises(io.DataError, match="did you mean 'PNN'"):
        writer.write_submission(bad, test_path, out)
    assert len(list(out.iterdir())) == 3 and latest.resolve() == second.resolve()


def test_cli_writes_from_parquet_and_images(tmp_path, capsys):
    test_path = _write_test_csv(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    for row in SIZES.itertuples():
        Image.new("RGB", (row.width, row.height)).save(images / row.NAME)
    preds_path = predictions.write(dets("a.jpg", [(1, 1, 20, 20, 0.3, "MO")]), tmp_path / "p.parquet")
    argv = ["--preds", str(preds_path), "--test", str(test_path), "--images", str(images),
            "--out", str(tmp_path / "subs")]
    assert write.main(argv) == 0
    sub = tables.read(tmp_path / "subs" / "submission.csv", "submission")
    assert sub.loc[sub["NAME"] == "b.jpg", ["x2", "y2"]].values.tolist() == [[119.0, 109.0]]
    assert "wrote" in capsys.readouterr().out
    code = io.cli(write.main, argv[:4] + ["--out", str(tmp_path / "subs2")])  # no images: sizes unknown
    assert code == 1 and "no image size" in capsys.readouterr().err
