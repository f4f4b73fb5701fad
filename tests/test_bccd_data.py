"""prepare.bccd: BCCD written as a CytologIA data folder (upstream split), on a tiny fake BCCD layout
and, when ../shared is there, on the real one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cytocore import io, tables
from prepare import bccd as bccd_data

pytestmark = pytest.mark.unit

SUBTYPES = """trustii_id,NAME,x1,y1,x2,y2,class
0,BloodImage_00000.jpg,10,12,40,44,PNN
1,BloodImage_00001.jpg,5,6,30,31,EO
2,BloodImage_00002.jpg,20,8,60,40,LY
3,BloodImage_00003.jpg,1,2,20,22,MO
"""


def fake_bccd(root: Path) -> Path:
    """Four 64x48 images with one box each; 00000 train, 00001 val, 00002 test, 00003 in no list."""
    jpegs = root / "BCCD" / "JPEGImages"
    jpegs.mkdir(parents=True)
    for i in range(5):  # 00004 has no subtype row (like BCCD's images without a single WBC)
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(jpegs / f"BloodImage_{i:05d}.jpg")
    lists = root / "BCCD" / "ImageSets" / "Main"
    lists.mkdir(parents=True)
    for part, stems in (("train", ["BloodImage_00000", "BloodImage_00004"]), ("val", ["BloodImage_00001"]),
                        ("test", ["BloodImage_00002"])):
        (lists / f"{part}.txt").write_text("\n".join(stems) + "\n")
    (root / bccd_data.SUBTYPES).write_text(SUBTYPES)
    return root


def test_writes_the_challenge_layout_with_the_upstream_split(tmp_path):
    bccd, out = fake_bccd(tmp_path / "bccd"), tmp_path / "data"
    raw = {p: p.read_bytes() for p in bccd.rglob("*") if p.is_file()}
    counts = bccd_data.write(bccd, out)
    assert counts == {"train_images": 2, "train_boxes": 2, "test_images": 1, "test_boxes": 1}
    train = tables.read(out / "train.csv", "train")
    assert train["NAME"].tolist() == ["BloodImage_00000.jpg", "BloodImage_00001.jpg"]
    assert train["class"].tolist() == ["PNN", "EO"]
    assert (out / "train.csv").read_text().splitlines()[1] == "BloodImage_00000.jpg,10,12,40,44,PNN"
    test, labels = tables.read(out / "test.csv", "test"), tables.read(out / "test_labels.csv", "submission")
    assert test.values.tolist() == [[2, "BloodImage_00002.jpg"]]
    row = labels[["trustii_id", "x1", "y1", "x2", "y2", "class"]].values.tolist()
    assert row == [[2, 20, 8, 60, 40, "LY"]]
    # images: the three listed images with a subtype, hard links to the raw files, raw data untouched
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"BloodImage_{i:05d}.jpg" for i in range(3)]
    src, dst = bccd / "BCCD" / "JPEGImages" / "BloodImage_00000.jpg", out / "images" / "BloodImage_00000.jpg"
    assert src.stat().st_ino == dst.stat().st_ino
    assert {p: p.read_bytes() for p in bccd.rglob("*") if p.is_file()} == raw

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    bccd_data.write(bccd, out)  # again: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert not list(out.rglob("*.tmp"))


def test_bad_bccd_folders_are_one_line_errors(tmp_path, capsys):
    bccd = fake_bccd(tmp_path / "bccd")
    (bccd / "BCCD" / "ImageSets" / "Main" / "test.txt").write_text("BloodImage_00002\nBloodImage_00000\n")
    with pytest.raises(io.DataError, match="BloodImage_00000 is listed in both"):
        bccd_data.write(bccd, tmp_path / "out")
    (bccd / "BCCD" / "ImageSets" / "Main" / "test.txt").write_text("BloodImage_00002\n")
    (bccd / "BCCD" / "JPEGImages" / "BloodImage_00001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 image"):
        bccd_data.write(bccd, tmp_path / "out")
    code = io.cli(bccd_data.main, ["--bccd", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert code != 0 and "cytologia_wbc_subtypes.csv" in capsys.readouterr().err
    assert not (tmp_path / "out" / "train.csv").exists()


def test_real_bccd_upstream_split(bccd_dir, tmp_path):
    frames = bccd_data.tables_of(bccd_dir)
    # 341 single-WBC images with a subtype: 277 in train.txt + val.txt, 64 in test.txt
    assert (len(frames["train"]), len(frames["test"])) == (277, 64)
    assert not set(frames["train"]["NAME"]) & set(frames["test"]["NAME"])
    assert frames["test"]["trustii_id"].equals(frames["test_labels"]["trustii_id"])
