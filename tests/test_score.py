"""The challenge scorer: one hand-computed case per rule of docs/CHALLENGE.md section 4, its
figures, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from cytocore import metric
from cytocore.metric import score
from submit import score as score_mod

pytestmark = pytest.mark.unit

COLS = ["trustii_id", "NAME", "x1", "y1", "x2", "y2", "class"]


def table(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLS)


def per_box(truth, sub) -> pd.DataFrame:
    return score(truth, sub).per_box


# ---- one rule per test ---------------------------------------------------------------------------

def test_perfect_is_one():
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "b.jpg", 5, 5, 50, 60, "MO")])
    r = score(truth, truth.copy())
    assert (r.total, r.giou_term, r.f1_term, r.balanced_accuracy, r.n_unmatched) == (1.0, 1.0, 1.0, 1.0, 0)


def test_tie_goes_to_the_first_prediction():
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "a.jpg", 100, 100, 110, 110, "MO")])
    top = (1, "a.jpg", 0, 0, 10, 5, "PNN")  # vs GT 1: IoU 50/100, enclosing = GT: GIoU 0.5
    bottom = (2, "a.jpg", 0, 5, 10, 10, "LY")  # vs GT 1: the same 0.5
    pb = per_box(truth, table([top, bottom]))
    assert pb["pred_class"].tolist() == ["PNN", "LY"]
    # GT 2 vs bottom: IoU 0, union 150, enclosing 110 x 105: GIoU = -(11550 - 150) / 11550
    # (beats top's, whose enclosing box is 110 x 110)
    np.testing.assert_allclose(pb["giou"], [0.5, -(11550 - 150) / 11550], rtol=0, atol=1e-12)
    assert per_box(truth, table([bottom, top]))["pred_class"].tolist() == ["LY", "LY"]


def test_repeated_trustii_id_keeps_the_first_row():
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN")])
    sub = table([(1, "a.jpg", 0, 0, 5, 5, "MO"), (1, "a.jpg", 0, 0, 10, 10, "PNN")])
    r = score(truth, sub)
    # kept: the 5x5 box: IoU 25/100, enclosing = GT: GIoU 0.25; labels PNN, MO both F1 0
    assert r.per_box["pred_class"].tolist() == ["MO"]
    assert r.total == pytest.approx(0.2 * (0.25 + 1) / 2 + 0.8 * 0.0, abs=1e-12)


def test_trustii_id_repeats_are_dropped_before_box_repeats():
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "a.jpg", 20, 0, 30, 10, "MO")])
    sub = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"),
                 (1, "a.jpg", 20, 0, 30, 10, "MO"),  # repeated id: dropped first ...
                 (2, "a.jpg", 20, 0, 30, 10, "MO")])  # ... so this one is no longer a box repeat
    assert score(truth, sub).total == 1.0
    # box-then-id would drop row 3 as a repeat of row 2, then row 2 as a repeated id: GT 2 would get
    # the PNN box, GIoU = 0 - (300 - 200) / 300 and a wrong class.


def test_exact_box_and_class_repeat_is_dropped_but_another_class_is_kept():
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "a.jpg", 0, 0, 10, 10, "MO")])
    first = (1, "a.jpg", 0, 0, 10, 10, "PNN")
    rows = metric.usable_rows(truth, table([first, (2, "a.jpg", 0, 0, 10, 10, "PNN")]))
    assert rows.tolist() == [0]
    rows = metric.usable_rows(truth, table([first, (2, "a.jpg", 0, 0, 10, 10, "MO")]))
    assert rows.tolist() == [0, 1]


def test_prediction_with_another_images_trustii_id_is_ignored():
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "b.jpg", 0, 0, 10, 10, "MO")])
    sub = table([(2, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "b.jpg", 0, 0, 10, 10, "MO")])
    r = score(truth, sub)
    assert r.per_box["pred_class"].tolist() == ["None", "MO"] and r.per_box["giou"].tolist() == [-1.0, 1.0]
    # labels MO (F1 1), None (0), PNN (0)
    assert r.total == pytest.approx(0.2 * (0 + 1) / 2 + 0.8 * (1 + 0 + 0) / 3, abs=1e-12)
    assert r.n_unmatched == 1 and r.labels == ["MO", "None", "PNN"]


def test_image_without_prediction_scores_zero_and_label_none():
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "a.jpg", 20, 0, 30, 10, "PNN"),
                   (3, "b.jpg", 0, 0, 10, 10, "MO")])
    r = score(truth, truth.iloc[[2]])
    assert r.per_box["giou"].tolist() == [-1.0, -1.0, 1.0]
    assert r.total == pytest.approx(0.2 * (0 + 0 + 1) / 3 + 0.8 * (1 + 0 + 0) / 3, abs=1e-12)


def test_two_gt_boxes_may_take_the_same_prediction():
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "a.jpg", 20, 0, 30, 10, "PNN")])
    sub = table([(1, "a.jpg", 0, 0, 30, 10, "PNN"), (2, "a.jpg", 100, 100, 101, 101, "MO")])
    r = score(truth, sub)
    # each GT vs the wide box: IoU 100/300, enclosing = the wide box: GIoU 1/3
    np.testing.assert_allclose(r.per_box["giou"], [1 / 3, 1 / 3], rtol=0, atol=1e-12)
    assert r.per_box["pred_class"].tolist() == ["PNN", "PNN"]
    assert r.total == pytest.approx(0.2 * (1 / 3 + 1) / 2 + 0.8 * 1.0, abs=1e-12)


def test_degenerate_inverted_and_nan_boxes():
    truth = table([(1, "a.jpg", 10, 10, 20, 20, "PNN")])
    r = score(truth, table([(1, "a.jpg", 0, 0, 0, 0, "PNN")]))
    # IoU 0, union 100 + 0, enclosing 20 x 20: GIoU = -(400 - 100) / 400 = -0.75
    assert r.per_box["giou"].iat[0] == pytest.approx(-0.75, abs=1e-12)
    assert r.total == pytest.approx(0.2 * (1 - 0.75) / 2 + 0.8, abs=1e-12)
    # an inverted box, computed as the reference computes it (signed areas, unclipped enclosure)
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN")])
    g = per_box(truth, table([(1, "a.jpg", 20, 20, 10, 10, "PNN")]))["giou"].iat[0]
    # area_b = (10 - 20) * (10 - 20) = 100, inter 0, union 200, enclosing (10 - 0) * (10 - 0) = 100
    assert g == pytest.approx(0 - (100 - 200) / 100, abs=1e-12)
    # a NaN box gives a NaN GIoU, which wins the argmax (np.argmax) and rescales to 0
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "a.jpg", 50, 50, 60, 60, "PNN")])
    sub = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "a.jpg", np.nan, 50, 60, 60, "MO")])
    r = score(truth, sub)
    assert r.per_box["pred_class"].tolist() == ["MO", "MO"] and r.per_box["giou"].isna().all()
    assert r.giou_term == 0.0


@pytest.mark.parametrize("bad", [np.nan, None, "LH_LyAc"])
def test_nan_or_unknown_class_is_its_own_label(bad):
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "LH_lyAct"), (2, "b.jpg", 0, 0, 10, 10, "MO")])
    sub = truth.copy()
    sub["class"] = sub["class"].astype(object)
    sub.loc[0, "class"] = bad
    r = score(truth, sub)
    want = "LH_LyAc" if bad == "LH_LyAc" else "nan"
    assert sorted(r.labels) == sorted(["LH_lyAct", "MO", want])
    assert r.total == pytest.approx(0.2 * 1.0 + 0.8 * (0 + 1 + 0) / 3, abs=1e-12)


def test_nan_class_read_from_csv_does_not_crash(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text("trustii_id,NAME,x1,y1,x2,y2,class\n1,a.jpg,0,0,10,10,\n2,b.jpg,0,0,10,10,MO\n")
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "b.jpg", 0, 0, 10, 10, "MO")])
    r = score(truth, score_mod.read_submission_lenient(path))
    assert r.labels == ["MO", "PNN", "nan"] and r.total == pytest.approx(0.2 + 0.8 / 3, abs=1e-12)


def test_missing_image_and_nan_class_are_two_labels():
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "b.jpg", 0, 0, 10, 10, "PNN")])
    r = score(truth, table([(2, "b.jpg", 0, 0, 10, 10, np.nan)]))
    assert r.labels == ["None", "PNN", "nan"] and r.f1_term == 0.0


def test_f1_and_balanced_accuracy_agree_with_sklearn():
    rng = np.random.default_rng(3)
    codes = ["PNN", "MO", "LY", "EO"]
    truth = table([(i + 1, f"{i // 2}.jpg", 0, 0, 10 + i, 10, codes[i % 4]) for i in range(40)])
    sub = truth.copy()
    sub["class"] = rng.choice(codes + ["XX"], size=len(sub))
    r = score(truth, sub.drop(index=[0, 1]))
    y_true, y_pred = r.per_box["class"], r.per_box["pred_class"]
    assert r.f1_term == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-12)
    with pytest.warns(UserWarning):  # labels only predicted have no recall: sklearn warns and skips them
        ba = balanced_accuracy_score(y_true, y_pred)
    assert r.balanced_accuracy == pytest.approx(ba, abs=1e-12)
    assert r.confusion.sum() == 40 and r.per_class["support"].sum() == 40


def test_bad_inputs_raise():
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN")])
    with pytest.raises(ValueError, match="missing column"):
        score(truth, truth.drop(columns="class"))
    with pytest.raises(ValueError, match="integers"):
        score(truth.assign(trustii_id=[1.5]), truth)


# ---- the figures of docs/CHALLENGE.md section 4 on 1,621 real boxes ----------------------------------

def spec_subset(train_csv) -> pd.DataFrame:
    """The boxes of 1,500 train images drawn with random_state=0: 1,621 boxes, all 23 classes."""
    train = pd.read_csv(train_csv)
    names = pd.Series(pd.unique(train["NAME"])).sample(n=1500, random_state=0)
    rows = train[train["NAME"].isin(set(names))].reset_index(drop=True)
    rows.insert(0, "trustii_id", np.arange(1, len(rows) + 1))
    return rows


@pytest.fixture(scope="module")
def real(real_train_csv):
    return spec_subset(real_train_csv)


def test_spec_subset_shape(real):
    assert len(real) == 1621 and real["class"].nunique() == 23
    assert real["class"].value_counts()[["PNN", "MO", "PM"]].tolist() == [223, 70, 46]


def test_spec_figures(real):
    def total(sub):
        return score(real, sub).total

    assert total(real.copy()) == 1.0
    nan = real.copy()
    nan.loc[0, "class"] = np.nan  # row 0 is MO (70 boxes): F1 138/139; 24 labels
    assert total(nan) == pytest.approx(0.2 + 0.8 * (22 + 138 / 139) / 24, abs=1e-12)
    assert round(total(nan), 3) == 0.966
    typo = real.copy()
    typo.loc[0, "class"] = "Mo"
    assert total(typo) == pytest.approx(total(nan), abs=1e-12)
    single = real["NAME"].map(real["NAME"].value_counts()) == 1
    assert round(total(real.drop(index=np.flatnonzero(single)[0])), 3) == 0.966
    wrong = real.copy()
    assert wrong.loc[1, "class"] == "PM"
    wrong.loc[1, "class"] = "MO"  # PM: 45 of 46 found, F1 90/91; MO: 70 of 71 right, F1 140/141
    assert total(wrong) == pytest.approx(0.2 + 0.8 * (21 + 90 / 91 + 140 / 141) / 23, abs=1e-12)
    assert round(total(wrong), 4) == 0.9994
    assert round(total(real.assign(**{"class": "PNN"})), 3) == 0.208
    assert round(total(real.assign(x1=0, y1=0, x2=0, y2=0)), 3) == 0.819
    width = real["x2"] - real["x1"]
    assert round(total(real.assign(x1=real["x1"] + 0.1 * width, x2=real["x2"] + 0.1 * width)), 3) == 0.982
    within = real.copy()
    within["trustii_id"] = within.groupby("NAME")["trustii_id"].transform(lambda s: s.iloc[::-1].to_numpy())
    assert total(within) == 1.0
    across = real.copy()
    across["trustii_id"] = np.random.default_rng(0).permutation(across["trustii_id"].to_numpy())
    assert round(total(across), 3) == 0.0
    rolled = real.sort_values("NAME").reset_index(drop=True)
    rolled["trustii_id"] = np.roll(rolled["trustii_id"].to_numpy(), 11)  # at most 11 boxes per image
    assert total(rolled) == 0.0


# ---- command line ---------------------------------------------------------------------------------

def test_cli_prints_terms_and_writes_json_and_png(tmp_path, capsys):
    truth = table([(1, "a.jpg", 0, 0, 10, 10, "PNN"), (2, "b.jpg", 0, 0, 10, 10, "MO")])
    truth.to_csv(tmp_path / "truth.csv", index=False)
    sub = truth.copy()
    sub.loc[1, "class"] = "PNN"
    sub.to_csv(tmp_path / "sub.csv", index=False)
    argv = ["--truth", str(tmp_path / "truth.csv"), "--submission", str(tmp_path / "sub.csv"),
            "--json", str(tmp_path / "s.json"), "--confusion", str(tmp_path / "cm.png")]
    assert score_mod.main(argv) == 0
    out = capsys.readouterr().out
    # PNN: precision 1/2, recall 1, F1 2/3; MO: F1 0 -> macro 1/3
    expected = 0.2 * 1.0 + 0.8 * (2 / 3 + 0) / 2
    assert f"score              {expected:.6f}" in out and "macro-F1 term" in out and "GIoU term" in out
    assert out.index("\nPNN ") < out.index("\nMO ")  # sorted by F1
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["total"] == pytest.approx(expected) and data["giou_term"] == 1.0
    assert {row["label"] for row in data["per_class"]} == {"PNN", "MO"}
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_missing_submission_is_one_line_error(tmp_path, capsys):
    from cytocore import io

    table([(1, "a.jpg", 0, 0, 10, 10, "PNN")]).to_csv(tmp_path / "truth.csv", index=False)
    argv = ["--truth", str(tmp_path / "truth.csv"), "--submission", str(tmp_path / "no.csv")]
    code = io.cli(score_mod.main, argv)
    assert code == 1 and "not found" in capsys.readouterr().err
