"""infer.pseudo (round one's sure test images as round two's training data) on hand-made tables, the
TRAIN_ONLY fold through prepare.folds and the exports, and the recipe switch end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_pipeline
from test_label_audit import two_round_recipe

from cytocore import dataset, io
from cytocore.config import ConfigError
from cytocore.tables import COORDS
from infer import pseudo
from prepare import folds

tiny_data = test_pipeline.tiny_data  # the fixture: 16 synthetic images, k=2, a work folder of its own

pytestmark = pytest.mark.unit


def fused(rows) -> pd.DataFrame:
    """``(NAME, x1, y1, x2, y2, score, class)`` rows of a fused table."""
    return pd.DataFrame(rows, columns=["NAME", *COORDS, "score", "class"])


# image a: 2 cells, both sure and agreeing -> kept; its third box is below the top 2 and ignored
# image b: 2 cells, one box only -> too few boxes
# image c: 1 cell, confidence 0.5 -> unsure
# image d: 1 cell, sure, but the detectors said another class -> classes disagree
# image e: 1 cell, sure, agrees -> kept
TABLE = fused([
    ("a", 0, 0, 10, 10, 0.9, "LY"), ("a", 20, 0, 30, 10, 0.8, "MO"), ("a", 40, 0, 50, 10, 0.1, "EO"),
    ("b", 0, 0, 10, 10, 0.9, "LY"),
    ("c", 0, 0, 10, 10, 0.5, "LY"),
    ("d", 0, 0, 10, 10, 0.95, "PNN"),
    ("e", 0, 0, 10, 10, 0.97, "EO"),
])
DETECTOR = ["LY", "MO", "LY", "LY", "LY", "LY", "EO"]
CONFIDENCE = [0.95, 0.92, 0.1, 0.99, 0.5, 0.99, 0.99]
CELLS = {"a": 2, "b": 2, "c": 1, "d": 1, "e": 1}


def test_select_keeps_only_images_whose_every_cell_is_sure_and_agrees():
    rows, counts = pseudo.select(TABLE, DETECTOR, CONFIDENCE, CELLS, pseudo.PseudoConfig(conf=0.9))
    assert list(rows.columns) == pseudo.LABEL_COLUMNS
    assert rows[["NAME", "class"]].values.tolist() == [["a", "LY"], ["a", "MO"], ["e", "EO"]]
    assert counts == {"test_images": 5, "kept_images": 2, "kept_boxes": 3,
                      "left_out": {"too_few_boxes": 1, "unsure": 1, "classes_disagree": 1}}
    loose, counts = pseudo.select(TABLE, DETECTOR, CONFIDENCE, CELLS,
                                  pseudo.PseudoConfig(conf=0.5, agree=False))
    assert sorted(pd.unique(loose["NAME"])) == ["a", "c", "d", "e"]
    assert counts["left_out"]["too_few_boxes"] == 1
    none, counts = pseudo.select(TABLE, DETECTOR, CONFIDENCE, CELLS, pseudo.PseudoConfig(conf=1.0))
    assert none.empty and counts["kept_images"] == 0
    only = pseudo.select(TABLE, DETECTOR, CONFIDENCE, {"e": 1}, pseudo.PseudoConfig())[0]
    assert only["NAME"].tolist() == ["e"]  # an image test.csv does not list is never a pseudo image


def test_cap_keeps_at_most_the_share_of_training_images_seeded():
    rows = fused([(n, 0, 0, 10, 10, 0.9, "LY") for n in "abcdefghij"])
    assert len(pseudo.cap(rows, 100, 0.3)) == 10  # 10 of 110 < 30 %
    capped = pseudo.cap(rows, 14, 0.3, seed=1)  # at most 0.3 / 0.7 * 14 = 6
    assert len(capped) == 6 and capped.equals(pseudo.cap(rows, 14, 0.3, seed=1))
    assert set(capped["NAME"]) != set(pseudo.cap(rows, 14, 0.3, seed=2)["NAME"])
    with pytest.raises(ConfigError, match="0 < share < 1"):
        pseudo.PseudoConfig(share=1.0)


def test_round_two_folds_put_pseudo_images_in_every_training_list(tmp_path):
    fold_file = tmp_path / "folds.csv"
    pd.DataFrame({"NAME": ["a", "b", "c", "d"], "fold": [1, 0, 1, 0], "group": [0, 1, 2, 3]}).to_csv(
        fold_file, index=False)
    table = pseudo.round_two_folds(fold_file, ["t2", "t1", "t1"])
    assert table.loc[table["NAME"].str.startswith("t"), "fold"].tolist() == [dataset.TRAIN_ONLY] * 2
    table.to_csv(tmp_path / "two.csv", index=False)
    got = folds.assigned_folds(tmp_path / "two.csv", pd.Series(["a", "b", "c", "d", "t1", "t2"]), k=2)
    assert got["fold"].tolist() == [1, 0, 1, 0, -1, -1]
    with pytest.raises(ValueError, match="a: a pseudo-labelled test image is also a train image"):
        pseudo.round_two_folds(fold_file, ["t1", "a"])
    only_pseudo = pd.DataFrame({"NAME": ["a", "b"], "fold": [0, -1], "group": [0, 1]})
    only_pseudo.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(io.DataError, match="not 0..1 for k=2"):  # every fold still needs validation images
        folds.assigned_folds(tmp_path / "bad.csv", pd.Series(["a", "b"]), k=2)


@pytest.mark.smoke
def test_make_all_with_pseudo_trains_round_two_on_sure_test_images(tiny_data, tmp_path, monkeypatch, capsys):
    """The recipe switch end to end: round one, the selection, round two with the test images in every
    fold's training list and in no validation list, and round two's out-of-fold score against round
    one's on the same images. A 1-epoch detector is sure of no test image, so the selection sees the
    test labels as the fused table (``select`` itself: the tests above)."""

    from cytocore import paths
    from pipeline.__main__ import main

    data = tiny_data
    monkeypatch.setenv("CYTOKIT_PREFLIGHT", "off")
    select = pseudo.select
    labels = pd.read_csv(data / "test_labels.csv").assign(score=0.9)
    monkeypatch.setattr(pseudo, "select", lambda f, d, c, n, cfg: select(
        labels, labels["class"], np.ones(len(labels)), n, cfg))
    before = (data / "train.csv").read_bytes()
    recipe = two_round_recipe(tmp_path / "pseudo.yaml", pseudo={"conf": 0.5, "agree": False, "share": 0.4})
    assert main(["--recipe", str(recipe), "--data", str(data), "--out", str(tmp_path / "subs")]) == 0
    out = capsys.readouterr().out
    assert "round two: the same recipe on pseudo-labels" in out and "out-of-fold, round two minus" in out
    ds = dataset.resolve(data)
    report = json.loads(paths.run_report(ds.id).read_text())["pseudo"]
    test_names = set(pd.read_csv(data / "test.csv")["NAME"])
    used = pd.read_csv(report["labels"])
    assert report["used_images"] == used["NAME"].nunique() > 0 and set(used["NAME"]) <= test_names
    assert report["round_two"]["status"] == "ok" and report["oof"]["images"] == len(ds.images())
    assert (data / "train.csv").read_bytes() == before  # the raw data untouched
    from pipeline.report import rounds

    record = json.loads((paths.logs_dir(ds.id) / rounds.FILE).read_text())
    assert record["oof"]["images"] == report["oof"]["images"] and record["what"] == "pseudo-labels"
    page = Path(json.loads(paths.run_report(ds.id).read_text())["report_page"]).read_text()
    assert "Round one vs round two" in page and "paired bootstrap 95 % interval" in page
    folder = Path(report["data"])
    recorded = json.loads((folder / pseudo.SUMMARY_FILE).read_text())
    assert recorded["test_images"] == report["test_images"] and "left_out" in recorded
    two = dataset.resolve(folder, ds.k, ds.seed)
    images = two.images()
    pseudo_names = set(images.loc[images["fold"] == dataset.TRAIN_ONLY, "NAME"])
    assert pseudo_names == set(used["NAME"])
    merged = ds.images().merge(images, on="NAME", suffixes=("_1", "_2"))  # train images keep their fold
    assert len(merged) == len(ds.images()) and (merged["fold_1"] == merged["fold_2"]).all()
    for f in range(ds.k):
        fold = two.fold(f)
        assert pseudo_names <= set(fold.train_images["NAME"])
        assert not pseudo_names & set(fold.val_images["NAME"])
        listed = (two.root / f"fold{f}" / "val.txt").read_text()
        assert not any(n in listed for n in pseudo_names)
        assert all(n in (two.root / f"fold{f}" / "train.txt").read_text() for n in pseudo_names)


def test_a_flow_value_split_by_make_at_its_spaces_is_joined_back():
    """``make demo ARGS="pseudo={conf: 0.9} jobs=1"`` reaches the command as separate words."""
    from cytocore.config import parse_overrides
    from pipeline import recipe

    assert parse_overrides(["pseudo={conf:", "0.9,", "share:", "0.2}", "jobs=1"]) == {
        "pseudo": {"conf": 0.9, "share": 0.2}, "jobs": 1}
    assert parse_overrides(["folds=[balance=0,", "workers=1]"]) == {"folds": ["balance=0", "workers=1"]}
    with pytest.raises(ConfigError, match="'b' is not of the form key=value"):
        parse_overrides(["a=1", "b"])
    r = recipe.load(Path("configs/demo.yaml"), ["pseudo={conf:", "0.8}", "clean={policy:", "[relabel]}"])
    assert r.pseudo_settings().conf == 0.8 and r.round_two()
    with pytest.raises(ConfigError, match="pseudo: need 0 < conf <= 1"):
        recipe.load(Path("configs/demo.yaml"), ["pseudo={conf: 0}"])
