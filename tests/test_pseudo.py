"""infer.pseudo (round one's sure test images as round two's training data) on hand-made tables, the
TRAIN_ONLY fold through prepare.folds and the exports, and the recipe switch end to end."""
from __future__ import annotations

import dataclasses
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


def test_per_fold_labels_train_only_their_fold_and_ensemble_labels_every_fold(tmp_path):
    """A test image sure to folds 0 and 1 is two training images (aliases), each in its own fold's
    training list only; an ensemble-labelled image is in every fold's; no fold validates on either."""
    fold_file = tmp_path / "folds.csv"
    pd.DataFrame({"NAME": ["a", "b", "c", "d"], "fold": [1, 0, 1, 0], "group": [0, 1, 2, 3]}).to_csv(
        fold_file, index=False)
    rows = fused([("t1.jpg", 0, 0, 10, 10, 0.9, "LY"), ("t1.jpg", 20, 0, 30, 10, 0.9, "MO"),
                  ("t1.jpg", 0, 0, 10, 10, 0.9, "EO"), ("t2.png", 0, 0, 9, 9, 0.9, "LY"),
                  ("t3.jpg", 0, 0, 9, 9, 0.9, "BA")]).assign(fold=[0, 0, 1, 1, dataset.TRAIN_ONLY])
    named, extra, aliases = pseudo.training_rows(rows)
    assert named["NAME"].tolist() == ["t1.pseudo-f0.jpg", "t1.pseudo-f0.jpg", "t1.pseudo-f1.jpg",
                                      "t2.pseudo-f1.png", "t3.jpg"]
    assert named["class"].tolist() == rows["class"].tolist()  # each fold keeps its own boxes
    assert aliases == {"t1.pseudo-f0.jpg": "t1.jpg", "t1.pseudo-f1.jpg": "t1.jpg",
                       "t2.pseudo-f1.png": "t2.png"}
    table = pseudo.round_two_folds(fold_file, extra)
    table.to_csv(tmp_path / "two.csv", index=False)
    names = pd.Series(table["NAME"])
    got = folds.assigned_folds(tmp_path / "two.csv", names, k=2).set_index("NAME")["fold"]
    assert got.to_dict() == {"a": 1, "b": 0, "c": 1, "d": 0, "t1.pseudo-f0.jpg": dataset.train_only_in(0),
                             "t1.pseudo-f1.jpg": dataset.train_only_in(1),
                             "t2.pseudo-f1.png": dataset.train_only_in(1), "t3.jpg": dataset.TRAIN_ONLY}
    assert got.loc[dataset.trains_in(got, 0)].index.tolist() == ["a", "c", "t1.pseudo-f0.jpg", "t3.jpg"]
    assert got.loc[dataset.trains_in(got, 1)].index.tolist() == [
        "b", "d", "t1.pseudo-f1.jpg", "t2.pseudo-f1.png", "t3.jpg"]
    assert not dataset.trains_in([0, 1, -1, -2, -3], 0)[0] and dataset.trains_in([-2], 0)[0]
    with pytest.raises(ValueError, match="a: a pseudo-labelled test image is also a train image"):
        pseudo.round_two_folds(fold_file, extra.assign(NAME=["t1", "a", "t2", "t3"]))
    only_pseudo = pd.DataFrame({"NAME": ["a", "b"], "fold": [0, -1], "group": [0, 1]})
    only_pseudo.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(io.DataError, match="not 0..1 for k=2"):  # every fold still needs validation images
        folds.assigned_folds(tmp_path / "bad.csv", pd.Series(["a", "b"]), k=2)
    no_such_fold = pd.DataFrame({"NAME": ["a", "b", "c"], "fold": [0, 1, dataset.train_only_in(2)],
                                 "group": [0, 1, 2]})
    no_such_fold.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(io.DataError, match="not 0..1 for k=2"):
        folds.assigned_folds(tmp_path / "bad.csv", pd.Series(["a", "b", "c"]), k=2)
    with pytest.raises(ConfigError, match="labels='best'; valid: fold, ensemble"):
        pseudo.PseudoConfig(labels="best")


def test_aliased_images_are_links_and_the_source_is_untouched(tmp_path):
    from prepare import derive

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    for name in ("a.jpg", "t1.jpg"):
        (src / "images" / name).write_bytes(name.encode())
    (src / "test.csv").write_text("trustii_id,NAME\n1,t1.jpg\n")
    train = pd.DataFrame({"NAME": ["a.jpg", "t1.pseudo-f0.jpg"], "x1": 0, "y1": 0, "x2": 5, "y2": 5,
                          "class": "LY"})
    dst = derive.write_folder(src, tmp_path / "dst", train, aliases={"t1.pseudo-f0.jpg": "t1.jpg"})
    images = dst / "images"
    assert images.is_dir() and not images.is_symlink()
    assert sorted(p.name for p in images.iterdir()) == ["a.jpg", "t1.jpg", "t1.pseudo-f0.jpg"]
    assert (images / "t1.pseudo-f0.jpg").read_bytes() == b"t1.jpg" and (images / "a.jpg").is_symlink()
    assert sorted(p.name for p in (src / "images").iterdir()) == ["a.jpg", "t1.jpg"]
    assert derive.write_folder(src, tmp_path / "dst", train, aliases={"t1.pseudo-f0.jpg": "t1.jpg"}) == dst
    with pytest.raises(FileExistsError, match="exists with other images"):
        derive.write_folder(src, tmp_path / "dst", train, aliases={"t1.pseudo-f1.jpg": "t1.jpg"})
    with pytest.raises(FileNotFoundError, match="image alias 'x.jpg' names no image"):
        derive.write_folder(src, tmp_path / "dst2", train, aliases={"x.jpg": "nope.jpg"})
    with pytest.raises(ValueError, match="is already an image of"):
        derive.write_folder(src, tmp_path / "dst3", train, aliases={"a.jpg": "t1.jpg"})
    assert not (tmp_path / "dst3" / "images").exists() and not list((tmp_path / "dst3").glob(".images*"))


def test_one_fold_keeps_each_member_of_that_fold_alone():
    from infer.config import EnsembleConfig, one_fold

    cfg = EnsembleConfig(members=[{"model": "yolov8"}, {"model": "yolov5", "folds": [1]}], k=2, seed=0,
                         iou_thr=0.55, classifier={"members": [{"model": "cls"}, {"model": "cls_full",
                                                                                  "folds": [1]}]})
    zero = one_fold(cfg, 0)
    assert [(m.name, m.folds) for m in zero.member_list()] == [("yolov8", [0])]
    assert [(m.name, m.folds) for m in zero.classifier_section().members] == [("cls", [0])]
    one = one_fold(cfg, 1)
    assert [(m.name, m.folds) for m in one.member_list()] == [("yolov8", [1]), ("yolov5", [1])]
    assert [m.name for m in one.classifier_section().members] == ["cls", "cls_full"]
    assert one_fold(dataclasses.replace(cfg, members=[{"model": "yolov5", "folds": [1]}]), 0) is None
    with pytest.raises(ValueError, match="bound to its dataset"):
        one_fold(dataclasses.replace(cfg, k=None), 0)


@pytest.mark.smoke
def test_make_all_with_pseudo_trains_round_two_on_sure_test_images(tiny_data, tmp_path, monkeypatch, capsys):
    """The recipe switch end to end: round one, each fold's selection, round two with each fold's
    pseudo images in that fold's training list only and in no validation list, and round two's
    out-of-fold score against round one's on the same images. A 1-epoch detector is sure of no test
    image, so the selection sees the test labels as the fused table (``select`` itself: the tests above)."""

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
    merged = ds.images().merge(images, on="NAME", suffixes=("_1", "_2"))  # train images keep their fold
    assert len(merged) == len(ds.images()) and (merged["fold_1"] == merged["fold_2"]).all()
    extra = images[images["fold"] < 0]
    assert set(used["fold"]) == set(range(ds.k))  # each fold labelled the test images itself
    assert set(extra["NAME"]) == {pseudo.alias_name(n, f) for n, f in zip(used["NAME"], used["fold"])}
    assert set(extra["fold"]) == {dataset.train_only_in(f) for f in range(ds.k)}
    for f in range(ds.k):
        fold = two.fold(f)
        mine = {pseudo.alias_name(n, f) for n in used.loc[used["fold"] == f, "NAME"]}
        others = set(extra["NAME"]) - mine
        assert mine and mine <= set(fold.train_images["NAME"]) and not others & set(fold.train_images["NAME"])
        assert not set(extra["NAME"]) & set(fold.val_images["NAME"])
        train_list = (two.root / f"fold{f}" / "train.txt").read_text().split()
        assert mine <= {Path(n).name for n in train_list} and not others & {Path(n).name for n in train_list}
        listed = (two.root / f"fold{f}" / "val.txt").read_text()
        assert not any(n in listed for n in extra["NAME"])
    assert "pseudo-labels (fold labels)" in page and "left out (test image x fold)" in page


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
