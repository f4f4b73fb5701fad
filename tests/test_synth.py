"""The synthetic smear generator (prepare.synth): layout, tables, determinism, realism checks."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cytocore import images, tables
from cytocore.classes import CLASSES
from prepare.synth import make as synth
from prepare.synth.classes import BOX_COUNTS, RECIPES
from prepare.synth.plan import make_plan, multi_probability
from prepare.synth.smear import render

pytestmark = pytest.mark.unit

NAME_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]\.jpg$")


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    """200 images, seed 0, built once for the module."""
    out = tmp_path_factory.mktemp("synth") / "demo"
    assert synth.main(["--out", str(out), "--images", "200", "--seed", "0"]) == 0
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_recipes_cover_the_23_classes_in_order():
    assert tuple(RECIPES) == CLASSES
    assert tuple(BOX_COUNTS) == CLASSES


@pytest.mark.smoke
def test_layout_headers_and_table_validation(ds):
    assert sorted(p.name for p in ds.iterdir()) == [
        "contact_sheet.png", "images", "synth.json", "test.csv", "test_labels.csv", "train.csv"]
    assert (ds / "train.csv").read_text().splitlines()[0] == "NAME,x1,y1,x2,y2,class"
    assert (ds / "test.csv").read_text().splitlines()[0] == "trustii_id,NAME"
    assert (ds / "test_labels.csv").read_text().splitlines()[0] == "trustii_id,NAME,x1,y1,x2,y2,class"
    train = tables.read(ds / "train.csv", "train")
    test = tables.read(ds / "test.csv", "test")
    tables.read(ds / "test_labels.csv", "submission")  # raises on a bad table
    files = sorted(p.name for p in (ds / "images").iterdir())
    assert len(files) == 200 and all(NAME_RE.match(f) for f in files)
    assert set(train["NAME"]) | set(test["NAME"]) == set(files)
    assert not set(train["NAME"]) & set(test["NAME"])
    # integer pixel coordinates, like the real files
    assert (train[["x1", "y1", "x2", "y2"]] % 1 == 0).all().all()


@pytest.mark.smoke
def test_test_and_labels_agree(ds):
    test = tables.read(ds / "test.csv", "test")
    labels = tables.read(ds / "test_labels.csv", "submission")
    assert test["trustii_id"].tolist() == labels["trustii_id"].tolist()
    assert test["NAME"].tolist() == labels["NAME"].tolist()
    assert test["trustii_id"].is_unique and test["trustii_id"].min() >= 2
    assert not test["trustii_id"].is_monotonic_increasing  # shuffled like the real test.csv
    # one row per cell: an image's row count is its number of boxes
    assert len(labels) >= test["NAME"].nunique()


@pytest.mark.smoke
def test_every_class_in_train_and_a_spread_in_test(ds):
    train = pd.read_csv(ds / "train.csv")
    labels = pd.read_csv(ds / "test_labels.csv")
    assert set(train["class"]) == set(CLASSES)
    assert train["class"].value_counts().min() >= 3
    assert labels["class"].nunique() >= 15
    assert 0.18 <= labels["NAME"].nunique() / 200 <= 0.32


@pytest.mark.smoke
def test_image_sizes(ds):
    sizes = [images.read_size(p) for p in (ds / "images").iterdir()]
    small = [(w, h) for w, h in sizes if 340 <= w <= 380 and 340 <= h <= 380]
    large = [(w, h) for w, h in sizes if 590 <= w <= 620 and 590 <= h <= 620]
    assert len(small) + len(large) == len(sizes)
    assert 0 < len(large) <= 0.15 * len(sizes)


@pytest.mark.smoke
def test_mostly_single_cell_images_and_some_border_boxes(ds):
    boxes = pd.concat([pd.read_csv(ds / "train.csv"), pd.read_csv(ds / "test_labels.csv").iloc[:, 1:]])
    per_image = boxes.groupby("NAME").size()
    assert 0.86 <= (per_image == 1).mean() <= 0.98
    assert per_image.max() >= 3
    sizes = {p.name: images.read_size(p) for p in (ds / "images").iterdir()}
    w = boxes["NAME"].map(lambda n: sizes[n][0])
    h = boxes["NAME"].map(lambda n: sizes[n][1])
    outside = (boxes.x1 < 0) | (boxes.y1 < 0) | (boxes.x2 > w - 1) | (boxes.y2 > h - 1)
    assert 1 <= outside.sum() <= 0.08 * len(boxes)


def test_plan_covers_all_classes_for_100_images():
    for seed in range(5):
        plans = make_plan(100, seed)
        train = pd.Series([p.classes[0] for p in plans if not p.test]).value_counts()
        assert set(train.index) == set(CLASSES) and train.min() >= 3
        assert 15 <= sum(p.test for p in plans) <= 35


def test_plan_multi_cell_share_and_names():
    plans = make_plan(5000, 1)
    single = np.mean([len(p.classes) == 1 for p in plans])
    assert 0.91 <= single <= 0.95  # real train.csv: 45,283 / 48,417 = 0.935
    assert multi_probability("LF") > 5 * multi_probability("SS")
    names = [p.name for p in plans]
    assert len(set(names)) == len(names) and all(NAME_RE.match(n) for n in names)
    assert [p.name for p in make_plan(50, 1)] != [p.name for p in make_plan(50, 2)]


def test_boxes_enclose_the_drawn_cells():
    for i, code in enumerate(CLASSES):
        for cells in ([code], [code, code, "LY"]):
            scene = render(360, 360, cells, False, np.random.default_rng([7, i, len(cells)]))
            gray = scene.rgb.astype(np.float32).mean(axis=2)
            background = np.percentile(gray[scene.labels == 0], 95)
            for k, (x1, y1, x2, y2) in enumerate(scene.boxes, start=1):
                ys, xs = np.nonzero(scene.labels == k)
                pad = np.array([xs.min() - x1, ys.min() - y1, x2 - xs.max(), y2 - ys.max()])
                assert (pad >= 1).all(), (code, pad)  # every visible cell pixel is inside its box
                if len(cells) == 1 and x1 >= 0 and y1 >= 0 and x2 < 360 and y2 < 360:
                    assert (pad <= 4).all(), (code, pad)  # tight: the cell's extent + 1 to 4 px
                # the cell stains differently from the pale background around it
                assert gray[scene.labels == k].mean() < background - 15, code


def test_render_is_deterministic_and_seed_dependent():
    plan = make_plan(3, 5)[0]
    a, qa = synth.render_image(plan, 5)
    b, qb = synth.render_image(plan, 5)
    c, _ = synth.render_image(plan, 6)
    assert qa == qb and 85 <= qa <= 95
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.rgb, c.rgb)


@pytest.mark.smoke
def test_same_seed_same_bytes_with_any_workers(tmp_path):
    synth.build(tmp_path / "a", 8, 3, workers=1)
    synth.build(tmp_path / "b", 8, 3, workers=2)
    synth.build(tmp_path / "c", 8, 4, workers=1)
    da, db, dc = (_digest(tmp_path / n) for n in "abc")
    assert da == db
    assert da["train.csv"] != dc["train.csv"]
    assert not set(k for k in da if k.startswith("images/")) & set(k for k in dc if k.startswith("images/"))


@pytest.mark.smoke
def test_existing_folder_rules(tmp_path, capsys):
    out = tmp_path / "d"
    assert synth.main(["--out", str(out), "--images", "3", "--seed", "1"]) == 0
    before = _digest(out)
    assert synth.main(["--out", str(out), "--images", "3", "--seed", "1"]) == 0
    assert "already holds" in capsys.readouterr().out
    with pytest.raises(FileExistsError):
        synth.build(out, 4, 1)
    assert _digest(out) == before  # untouched
    synth.build(out, 4, 1, force=True)
    assert len(list((out / "images").iterdir())) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    (tmp_path / "empty").mkdir()
    assert synth.build(tmp_path / "empty", 2, 1) is not None


@pytest.mark.smoke
def test_contact_sheet_shows_every_class(ds):
    sheet = cv2.imread(str(ds / "contact_sheet.png"))
    assert sheet.shape == (23 * 96, 96 + 6 * 96, 3)
    tiles = sheet[:, 96:].reshape(23, 96, 6 * 96, 3)
    assert (tiles.reshape(23, -1).std(axis=1) > 10).all()  # no blank row


@pytest.mark.smoke  # a subprocess or a real search: seconds, not the unit tier
def test_baseline_learns_the_classes_from_simple_features(ds):
    """The yardstick printed beside the demo's score: far above chance, and fewer images train it less."""
    from prepare.synth.baseline import baseline

    full, few = baseline(ds), baseline(ds, train_images=60)
    assert few["train_images"] == 60 and full["train_images"] > 100
    assert full["test_boxes"] == len(pd.read_csv(ds / "test_labels.csv"))
    assert full["accuracy"] > 0.3, full  # chance is about 1 / 23 = 0.04
    assert few["accuracy"] < full["accuracy"]


@pytest.mark.slow
def test_classes_are_learnable_from_simple_features(tmp_path):
    from prepare.synth.baseline import baseline

    out = tmp_path / "sep"
    synth.build(out, 400, 11)
    accuracy = baseline(out)["accuracy"]
    assert accuracy > 0.4, accuracy  # chance is about 1 / 23 = 0.04
