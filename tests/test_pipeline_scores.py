"""The test-label tables of make all: the classifier on the true boxes (the second stage's ceiling), the
per-class F1 of every row."""
from __future__ import annotations

import pandas as pd
import pytest

from cytocore import classes
from pipeline import run as orch
from pipeline import scores

pytestmark = pytest.mark.unit


def truth_tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    truth = pd.DataFrame({"trustii_id": [1, 2, 3], "NAME": ["a.jpg", "a.jpg", "b.jpg"],
                          "x1": [10.0, 60.0, 5.0], "y1": [10.0, 60.0, 5.0], "x2": [50.0, 90.0, 40.0],
                          "y2": [50.0, 95.0, 30.0], "class": ["PNN", "EO", "LY"]})
    sizes = pd.DataFrame({"NAME": ["a.jpg", "b.jpg"], "width": [100, 64], "height": [100, 48]})
    return truth, truth[["trustii_id", "NAME"]], sizes


def test_ceiling_scores_the_classifier_alone_on_the_true_boxes():
    truth, test, sizes = truth_tables()
    seen = []

    def says_pnn(fused: pd.DataFrame) -> pd.DataFrame:  # a classifier that calls every cell PNN
        seen.append(fused.copy())
        return fused.assign(**{"class": "PNN"})

    result = scores.ceiling(truth, test, sizes, says_pnn)
    (fused,) = seen
    assert set(fused["class"]) == {classes.CLASSES[0]}  # the true class is not handed to the classifier
    assert (fused["score"] == 1.0).all()
    assert fused[["width", "height"]].values.tolist() == [[100, 100], [100, 100], [64, 48]]
    assert result.giou_term == pytest.approx(1.0)
    # PNN: 1 right of 3 calls (precision 1/3, recall 1, F1 0.5); EO and LY never called (F1 0)
    assert result.f1_term == pytest.approx(0.5 / 3)
    row = scores._row(scores.CEILING, result)
    assert row["per_class_f1"] == {"EO": 0.0, "LY": 0.0, "PNN": 0.5}
    assert row["score"] == pytest.approx(0.2 + 0.8 * 0.5 / 3) and row["f1"] == pytest.approx(0.5 / 3)


def test_a_perfect_classifier_reaches_one():
    truth, test, sizes = truth_tables()
    cls = dict(zip(truth["x1"], truth["class"]))
    result = scores.ceiling(truth, test, sizes, lambda t: t.assign(**{"class": t["x1"].map(cls)}))
    assert result.total == pytest.approx(1.0)


def test_per_class_table_lines_up_every_row():
    rows = [{"member": "det", "per_class_f1": {"PNN": 0.5, "EO": 0.0}},
            {"member": scores.CEILING, "per_class_f1": {"PNN": 1.0, "LY": 0.25}}]
    table = orch.per_class_table(rows)
    assert table.columns.tolist() == ["class", "det", scores.CEILING]  # one class per line
    assert table["class"].tolist() == ["PNN", "EO", "LY"]
    assert table["det"].tolist()[:2] == [0.5, 0.0] and pd.isna(table.loc[2, "det"])
    assert table[scores.CEILING].tolist()[0] == 1.0
