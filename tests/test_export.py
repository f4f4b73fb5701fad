"""``python -m prepare.folds`` on a tiny on-disk data set: the layout of cytocore/dataset.py."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cytocore import boxes as bx
from cytocore import classes, dataset, io, paths
from prepare import export, folds

pytestmark = pytest.mark.unit

K, SEED = 3, 7
ROWS = [  # name, x1, y1, x2, y2, class; sizes below
    ("00000001-0.jpg", 5, 6, 40, 44, "PNN"),
    ("00000002-0.jpg", -4, 10, 50, 70, "MO"),          # clipped at the left
    ("00000003-0.jpg", 2, 2, 30, 30, "LF"),
    ("00000003-0.jpg", 28, 28, 60, 62, "LF"),           # a two-cell LF image
    ("00000004-0.jpg", 10, 10, 70, 68, "EO"),           # past the bottom of a 64 px high image
    ("00000005-0.jpg", 3, 3, 33, 33, "LY"),
    ("00000006-0.jpg", 1, 1, 60, 60, "PNN"),
    ("00000007-0.jpg", 8, 9, 50, 52, "LLC"),
    ("00000008-0.jpg", 8, 9, 50, 52, "MO"),
    ("00000009-0.jpg", 8, 9, 50, 52, "LY"),
    ("dup00001-0.jpg", 5, 6, 40, 44, "PNN"),           # the same picture as 00000001
    ("dup00002-0.jpg", 5, 6, 40, 44, "PNN"),           # 00000001 re-encoded at another quality
]
WIDE = {"00000002-0.jpg", "00000005-0.jpg"}  # 96 x 64; the others are 64 x 64


def write_data(root: Path) -> Path:
    """The challenge layout: train.csv, test.csv, images/ with noise JPEGs (distinct hashes)."""
    rng = np.random.default_rng(5)
    (root / "images").mkdir(parents=True)
    for name in dict.fromkeys(r[0] for r in ROWS):
        if name.startswith("dup"):
            continue
        w = 96 if name in WIDE else 64
        blocks = rng.integers(0, 255, (8, 12 if name in WIDE else 8, 3), dtype=np.uint8)
        image = Image.fromarray(blocks).resize((w, 64), Image.Resampling.NEAREST)
        image.save(root / "images" / name, quality=95)
    (root / "images" / "dup00001-0.jpg").write_bytes((root / "images" / "00000001-0.jpg").read_bytes())
    with Image.open(root / "images" / "00000001-0.jpg") as im:
        im.save(root / "images" / "dup00002-0.jpg", quality=80)
    lines = ["NAME,x1,y1,x2,y2,class"] + [",".join(map(str, r)) for r in ROWS]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "test.csv").write_text("trustii_id,NAME\n2,ffffffff-0.jpg\n")
    return root


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = io.cli(folds.main, argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    data = write_data(base / "tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CYTOKIT_WORK", str(base / "work"))
        rc = io.cli(folds.main, ["--data", str(data), "--k", str(K), "--seed", str(SEED)])
        assert rc == 0
        ds = dataset.resolve(data)
        root, fold_file = ds.root, paths.fold_file(ds.id)
    return {"data": data, "work": base / "work", "root": root, "fold_file": fold_file}


@pytest.fixture
def work(prepared, monkeypatch):
    monkeypatch.setenv("CYTOKIT_WORK", str(prepared["work"]))
    return prepared


def test_layout(work):
    root = work["root"]
    assert root.parent == work["work"] / "datasets"
    assert re.fullmatch(rf"tiny-[0-9a-f]{{8}}_k{K}_s{SEED}", root.name)
    meta = json.loads((root / "meta.json").read_text())
    for key in ("data", "images_dir", "k", "seed", "fold_file", "resize", "classes", "n_images", "n_boxes",
                "source"):
        assert key in meta
    assert (
        meta["source"]["train_csv_sha256"]
        == hashlib.sha256((work["data"] / "train.csv").read_bytes()).hexdigest()
    )
    source = pd.read_csv(root / "source.csv")
    assert list(source.columns) == ["NAME", "bytes", "mtime_ns", "sha1"] and len(source) == 11
    raw = work["data"] / "images" / "00000002-0.jpg"
    row = source.set_index("NAME").loc["00000002-0.jpg"]
    assert (row["bytes"], row["mtime_ns"], row["sha1"]) == (
        raw.stat().st_size, raw.stat().st_mtime_ns, hashlib.sha1(raw.read_bytes()).hexdigest())
    got = (meta["k"], meta["seed"], meta["resize"], meta["n_images"], meta["n_boxes"])
    assert got == (K, SEED, None, 11, 12)
    assert meta["classes"] == list(classes.CLASSES)
    assert meta["images_dir"] == str(work["data"].resolve() / "images")
    images = pd.read_csv(root / "images.csv")
    assert list(images.columns) == ["NAME", "width", "height", "fold", "group"]
    assert images.set_index("NAME").loc["00000002-0.jpg", ["width", "height"]].tolist() == [96, 64]
    boxes = pd.read_csv(root / "boxes.csv")
    assert list(boxes.columns) == ["NAME", "x1", "y1", "x2", "y2", "class", "width", "height"]
    # Cleaned, original pixels: clipped at 0 and at the image edge.
    by_name = boxes.set_index("NAME")[["x1", "y1", "x2", "y2"]]
    assert by_name.loc["00000002-0.jpg"].tolist() == [0, 10, 50, 64]
    assert by_name.loc["00000004-0.jpg"].tolist() == [10, 10, 64, 64]
    fold_table = pd.read_csv(work["fold_file"])
    assert list(fold_table.columns) == ["NAME", "fold", "group"]
    assert fold_table.merge(images, on=["NAME", "fold", "group"]).shape[0] == 11
    assert work["fold_file"] == work["work"] / "folds" / root.name / "folds.csv"
    stem = work["fold_file"].with_suffix("")
    for suffix in ("_counts.csv", "_counts.png", "_report.json", "_config.yaml"):
        assert Path(f"{stem}{suffix}").exists(), suffix
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_duplicates_grouped(work):
    images = pd.read_csv(work["root"] / "images.csv").set_index("NAME")
    trio = images.loc[["00000001-0.jpg", "dup00001-0.jpg", "dup00002-0.jpg"]]
    assert trio["group"].nunique() == 1 and trio["fold"].nunique() == 1
    assert images["group"].nunique() == 9  # 11 images, one group of 3


def test_images_are_links(work):
    image_dir = work["root"] / "yolo" / "images"
    entries = sorted(image_dir.iterdir())
    assert len(entries) == 11
    for entry in entries:
        assert entry.is_symlink()
        assert Path(os.readlink(entry)) == (work["data"] / "images" / entry.name).resolve()


def test_labels_round_trip(work):
    root = work["root"]
    boxes = pd.read_csv(root / "boxes.csv")
    for name, group in boxes.groupby("NAME", sort=False):
        lines = (root / "yolo" / "labels" / f"{Path(name).stem}.txt").read_text().splitlines()
        values = np.array([[float(v) for v in line.split()] for line in lines])
        assert values[:, 0].astype(int).tolist() == [classes.CLASS_TO_ID[c] for c in group["class"]]
        w, h = group["width"].iloc[0], group["height"].iloc[0]
        back = bx.convert(bx.denormalize(values[:, 1:], w, h), "cxcywh", "xyxy")
        np.testing.assert_allclose(back, group[["x1", "y1", "x2", "y2"]].to_numpy(), rtol=0, atol=1e-6)


def test_fold_lists_and_data_yaml(work):
    root = work["root"]
    images = pd.read_csv(root / "images.csv")
    for fold in range(K):
        spec = yaml.safe_load((root / f"fold{fold}" / "data.yaml").read_text())
        assert spec["nc"] == 23 and spec["names"] == list(classes.CLASSES)
        assert Path(spec["path"]) == root
        lists = {part: Path(spec[part]).read_text().splitlines() for part in ("train", "val")}
        val = {Path(p).name for p in lists["val"]}
        train = {Path(p).name for p in lists["train"]}
        assert val == set(images.loc[images["fold"] == fold, "NAME"])
        assert train == set(images["NAME"]) - val
        for part in ("train", "val"):  # one folder per list (its own labels.cache), the same files
            folder = root / f"fold{fold}" / part
            assert all(Path(p).parent == folder / "images" and Path(p).exists() for p in lists[part])
            assert (folder / "images").resolve() == (root / "yolo" / "images").resolve()
            assert (folder / "labels").resolve() == (root / "yolo" / "labels").resolve()


def test_coco_loads_and_matches(work):
    from pycocotools.coco import COCO

    root = work["root"]
    images = pd.read_csv(root / "images.csv")
    boxes = pd.read_csv(root / "boxes.csv").merge(images[["NAME", "fold"]], on="NAME")
    for fold in range(K):
        for part, mask in (("train", boxes["fold"] != fold), ("val", boxes["fold"] == fold)):
            coco = COCO(str(root / f"fold{fold}" / f"coco_{part}.json"))
            want = boxes[mask]
            assert len(coco.getImgIds()) == want["NAME"].nunique()
            assert len(coco.getAnnIds()) == len(want)
            assert coco.getCatIds() == list(range(1, 24))
            assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(classes.CLASSES)
            by_name = {im["file_name"]: im["id"] for im in coco.loadImgs(coco.getImgIds())}
            for row in want.itertuples():
                anns = coco.loadAnns(coco.getAnnIds(imgIds=by_name[row.NAME]))
                got = {(a["category_id"], *np.round(a["bbox"], 6)) for a in anns}
                xywh = (row.x1, row.y1, row.x2 - row.x1, row.y2 - row.y1)
                assert (classes.CLASS_TO_ID[row[6]] + 1, *xywh) in got


def test_load_fold_contract(work):
    data = dataset.load_fold(work["data"], K, SEED, 0)
    assert len(data.val_images) + len(data.train_images) == 11
    assert len(data.val_boxes) + len(data.train_boxes) == 12
    assert data.yolo_yaml.exists() and data.coco_val.exists() and data.resize is None


def test_rerun_reuses_everything(work, capsys):
    before = work["fold_file"].stat().st_mtime_ns
    rc, out, _ = run(["--data", str(work["data"]), "--k", str(K), "--seed", str(SEED)], capsys)
    assert rc == 0
    assert "reusing" in out and "dataset up to date" in out
    assert work["fold_file"].stat().st_mtime_ns == before


def test_other_settings_need_force(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    data = write_data(tmp_path / "tiny")
    argv = ["--data", str(data), "--k", "2", "--seed", "0"]
    assert run(argv, capsys)[0] == 0
    ds = dataset.resolve(data)
    fold_file = paths.fold_file(ds.id)
    first = fold_file.read_text()
    ds.run_dir("yolov8", 0).mkdir(parents=True)
    rc, _, err = run([*argv, "min_side=30"], capsys)
    assert rc == 1 and "was made from other inputs" in err and "--force" in err and "Traceback" not in err
    assert fold_file.read_text() == first
    rc, out, err = run([*argv, "min_side=30", "--force"], capsys)
    assert rc == 0 and "wrote" in out
    assert dataset.resolve(data).id == ds.id  # same data: same id, the fold file replaced
    meta = json.loads((ds.root / "meta.json").read_text())
    assert meta["fingerprint"] == json.loads(folds.sidecar_path(fold_file).read_text())["fingerprint"]
    assert len(pd.read_csv(ds.root / "boxes.csv")) < 12


def test_changed_train_csv_is_a_new_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    data = write_data(tmp_path / "tiny")
    argv = ["--data", str(data), "--k", "2", "--seed", "0"]
    assert run(argv, capsys)[0] == 0
    old = dataset.resolve(data)
    train = data / "train.csv"
    train.write_text(train.read_text().replace("00000009-0.jpg,8,9,50,52,LY", "00000009-0.jpg,8,9,50,52,SS"))
    rc, out, _ = run(argv, capsys)
    assert rc == 0 and "a new dataset id" in out and old.id in out
    new = dataset.resolve(data)
    assert new.id != old.id and old.root.exists()  # the old dataset (and its runs) left alone
    assert (pd.read_csv(new.root / "boxes.csv")["class"] == "SS").sum() == 1


def test_resize_exports_copies(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    data = write_data(tmp_path / "tiny")
    assert run(["--data", str(data), "--k", "2", "--seed", "0", "--resize", "48"], capsys)[0] == 0
    root = dataset.resolve(data).root
    assert json.loads((root / "meta.json").read_text())["resize"] == 48
    wide = root / "yolo" / "images" / "00000002-0.jpg"
    assert not wide.is_symlink()
    with Image.open(wide) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (48, 32))  # 96 x 64 -> 48 x 32
    boxes = pd.read_csv(root / "boxes.csv").set_index("NAME")
    original = boxes.loc["00000002-0.jpg", ["x1", "y1", "x2", "y2"]].tolist()
    assert original == [0, 10, 50, 64]  # boxes.csv stays in original pixels
    coco = json.loads((root / "fold0" / "coco_train.json").read_text())
    coco_val = json.loads((root / "fold0" / "coco_val.json").read_text())
    both = coco["images"] + coco_val["images"]
    image = next(im for im in both if im["file_name"] == "00000002-0.jpg")
    assert (image["width"], image["height"]) == (48, 32)
    ann = next(a for a in coco["annotations"] + coco_val["annotations"] if a["image_id"] == image["id"])
    np.testing.assert_allclose(ann["bbox"], [0, 5, 25, 27], atol=1e-9)  # (0,10,50,64) * 0.5, as xywh
    label = (root / "yolo" / "labels" / "00000002-0.txt").read_text().split()
    np.testing.assert_allclose([float(v) for v in label[1:]], [25 / 96, 37 / 64, 50 / 96, 54 / 64], atol=1e-9)


def test_resized_size():
    assert export.resized_size(96, 64, 48) == (48, 32)
    assert export.resized_size(363, 370, 512) == (502, 512)
    assert export.resized_size(1000, 1, 10) == (10, 1)


def test_yolo_labels_text():
    boxes = pd.DataFrame({"NAME": ["b.jpg", "a.jpg", "b.jpg"], "x1": [0.0, 10, 50], "y1": [0.0, 20, 0],
                          "x2": [50.0, 30, 100], "y2": [100.0, 40, 50], "class": ["SS", "PNN", "LF"],
                          "width": [100, 40, 100], "height": [100, 80, 100]})
    texts = export.yolo_labels(boxes)
    assert texts.index.tolist() == ["a.jpg", "b.jpg"]
    assert texts["a.jpg"] == "0 0.5000000000 0.3750000000 0.5000000000 0.2500000000\n"
    assert texts["b.jpg"].splitlines() == ["22 0.2500000000 0.5000000000 0.5000000000 1.0000000000",
                                          "12 0.7500000000 0.2500000000 0.5000000000 0.5000000000"]


def test_balance_flag_is_counted(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    data = write_data(tmp_path / "tiny")
    assert run(["--data", str(data), "--k", "2", "--seed", "0", "--balance", "1"], capsys)[0] == 0
    fold_file = paths.fold_file(dataset.resolve(data).id)
    report = json.loads(fold_file.with_name("folds_report.json").read_text())
    step = report["cleaning"]["steps"][-1]
    # PNN is in 4 images (00000001, 00000006 and the two copies), MO in 2, LY in 2: one image each is
    # kept for them (LF, EO, LLC have one image each), so 3 + 1 + 1 = 5 images go, with 5 boxes.
    assert (step["step"], step["boxes_removed"], step["images_removed"]) == ("balance", 5, 5)
    assert step["class_boxes_before_after"]["PNN"] == [4, 1]
    assert len(pd.read_csv(fold_file)) == 6


@pytest.mark.smoke
def test_through_the_synthetic_generator(tmp_path, monkeypatch, capsys):
    synth = pytest.importorskip("prepare.synth.make")
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    data = tmp_path / "demo"
    assert synth.main(["--out", str(data), "--images", "8", "--seed", "0"]) == 0
    rc, _, err = run(["--data", str(data), "--k", "2", "--seed", "0"], capsys)
    assert rc == 0, err
    train = pd.read_csv(data / "train.csv")
    fold_data = dataset.load_fold(data, 2, 0, 1)
    assert len(fold_data.train_images) + len(fold_data.val_images) == train["NAME"].nunique()
    assert len(fold_data.train_boxes) + len(fold_data.val_boxes) == len(train)
