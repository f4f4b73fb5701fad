"""Bad input to ``python -m prepare.folds``: a clear message with file and line, a non-zero exit
where it is an error, no traceback, nothing written half-way, the raw folder untouched.

(The later steps' bad inputs and OS faults: tests/test_faults.py; the dataset identity:
tests/test_identity.py; caches: tests/test_caches.py.)"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cytocore import dataset, images, io, paths
from prepare import folds, sizes

pytestmark = pytest.mark.unit

K, SEED = 2, 3
GOOD = [
    "aaaaaaaa-0.jpg,5,6,40,44,PNN",
    "bbbbbbbb-0.jpg,2,3,30,33,MO",
    "cccccccc-0.jpg,10,10,50,50,EO",
    "dddddddd-0.jpg,1,1,20,25,LY",
]


def write_data(root: Path, lines: list[str], header: str = "NAME,x1,y1,x2,y2,class") -> Path:
    """train.csv with ``lines`` and a 64 x 48 noise JPEG for every name in GOOD."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    for line in GOOD:
        blocks = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(blocks).resize((64, 48), Image.Resampling.NEAREST)
        image.save(root / "images" / line.split(",")[0])
    (root / "train.csv").write_text("\n".join([header, *lines]) + "\n")
    (root / "test.csv").write_text("trustii_id,NAME\n2,eeeeeeee-0.jpg\n")
    return root


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    return tmp_path


def run(data: Path, capsys, *extra: str) -> tuple[int, str, str]:
    before = snapshot(data)
    rc = io.cli(folds.main, ["--data", str(data), "--k", str(K), "--seed", str(SEED), *extra])
    out, err = capsys.readouterr()
    assert snapshot(data) == before, "the raw folder changed"
    assert "Traceback" not in out + err
    return rc, out, err


def report_path(data: Path) -> Path:
    return paths.fold_file(dataset.resolve(data).id).with_name("folds_report.json")


def assert_nothing_written(data: Path) -> None:
    """No fold file, no dataset folder (caches of image sizes may exist)."""
    assert dataset.prepared(data) == []
    for folder in (paths.folds_dir(), paths.datasets_dir()):
        assert not folder.exists() or not any(folder.iterdir()), folder


@pytest.mark.parametrize(
    ("lines", "header", "expected"),
    [
        (GOOD, "NAME,x1,y1,x2,y2,Class", ["train.csv:1: error", "should be spelled 'class'"]),
        ([GOOD[0], "bbbbbbbb-0.jpg,nan,3,30,33,MO", *GOOD[2:]], None,
         ["train.csv:3: error: column 'x1': not a finite number: 'nan'"]),
        ([*GOOD[:2], "cccccccc-0.jpg,60,10,50,50,EO", GOOD[3]], None,
         ["train.csv:4: error: column 'x2': x2 (50) must be greater than x1 (60)"]),
        ([*GOOD[:3], "dddddddd-0.jpg,1,1,20,25,LH_LyAc"], None,
         ["train.csv:5: error: column 'class': unknown class 'LH_LyAc'; did you mean 'LH_lyAct'?"]),
        ([*GOOD, "eeeeeeee-0.jpg,1,1,9,9,PNN", GOOD[0], "ffffffff-0.jpg,1,1,9,9,MO"], None,
         ["train.csv:6: error: column 'NAME': image not found:", "eeeeeeee-0.jpg",
          "train.csv:8: error: column 'NAME': image not found:", "ffffffff-0.jpg",
          "images: error: 2 of 6 images named in", "this folder holds 4 file(s)",
          "3 error(s), 0 warning(s)"]),
    ],
    ids=["header-Class", "nan-coordinate", "x2-before-x1", "unknown-class", "images-missing"],
)
def test_table_errors(env, capsys, lines, header, expected):
    data = write_data(env / "raw", lines, header or "NAME,x1,y1,x2,y2,class")
    rc, _, err = run(data, capsys)
    assert rc == 1
    for text in expected:
        assert text in err
    assert str(data / "train.csv") in err
    assert_nothing_written(data)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "file is empty"), ("jpeg", "not a text CSV file (cannot be decoded as UTF-8)")],
    ids=["empty-csv", "jpeg-as-csv"],
)
def test_unreadable_csv(env, capsys, content, expected):
    data = write_data(env / "raw", GOOD)
    if content == "jpeg":
        content = (data / "images" / "aaaaaaaa-0.jpg").read_bytes()
    (data / "train.csv").write_bytes(content)
    rc, _, err = run(data, capsys)
    assert rc == 1 and f"{data / 'train.csv'}: error: {expected}" in err
    assert_nothing_written(data)


def test_missing_train_csv(env, capsys):
    data = write_data(env / "raw", GOOD)
    (data / "train.csv").unlink()
    rc, _, err = run(data, capsys)
    assert rc == 1 and f"{data / 'train.csv'}: error: file not found" in err


def test_duplicate_row_is_dropped_and_counted(env, capsys, caplog):
    data = write_data(env / "raw", [*GOOD, GOOD[1]])
    with caplog.at_level(logging.WARNING):
        rc, out, _ = run(data, capsys)
    assert rc == 0
    assert "train.csv:6: warning: duplicate row (same as line 3)" in caplog.text
    report = json.loads(report_path(data).read_text())
    first = report["cleaning"]["steps"][0]
    assert (first["step"], first["boxes_removed"], first["boxes"]) == ("duplicate rows", 1, 4)
    assert out.splitlines()[2].split() == ["duplicate", "rows", "1", "0", "0", "4", "4"]


def test_unreadable_image(env, capsys):
    data = write_data(env / "raw", GOOD)
    (data / "images" / "cccccccc-0.jpg").write_bytes(b"this is not an image")
    rc, _, err = run(data, capsys)
    assert rc == 1
    assert "train.csv:4: error: column 'NAME': image " in err and "not a readable image" in err
    assert_nothing_written(data)


def test_truncated_jpeg_needs_repair(env, capsys):
    data = write_data(env / "raw", GOOD)
    raw = data / "images" / "bbbbbbbb-0.jpg"
    raw.write_bytes(raw.read_bytes()[:-300])
    rc, _, err = run(data, capsys)
    assert rc == 1
    assert "train.csv:3: error: column 'NAME': image" in err and "is truncated" in err and "--repair" in err
    assert_nothing_written(data)

    rc, _, _ = run(data, capsys, "--repair")
    assert rc == 0
    sha1 = hashlib.sha1(raw.read_bytes()).hexdigest()
    repaired = sizes.cache_root(data) / "repaired" / sha1 / "bbbbbbbb-0.jpg"
    with Image.open(repaired) as im:
        assert (im.format, im.size) == ("JPEG", (64, 48))
    link = dataset.resolve(data).root / "yolo" / "images" / "bbbbbbbb-0.jpg"
    assert Path(os.readlink(link)) == repaired.resolve()
    report = json.loads(report_path(data).read_text())
    assert report["repaired"] == ["bbbbbbbb-0.jpg"]


def test_grayscale_and_rgba_accepted(env, capsys):
    data = write_data(env / "raw", [*GOOD, "gray0000-0.jpg,1,1,30,30,SS", "rgba0000-0.png,2,2,20,20,BA"])
    rng = np.random.default_rng(9)
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(data / "images" / "gray0000-0.jpg")
    rgba = Image.fromarray(rng.integers(0, 255, (30, 36, 4), dtype=np.uint8), "RGBA")
    rgba.save(data / "images" / "rgba0000-0.png")
    rc, _, err = run(data, capsys, "--resize", "32")
    assert rc == 0, err
    root = dataset.resolve(data).root
    rows = (root / "images.csv").read_text().splitlines()
    images = {line.split(",")[0]: line.split(",")[1:3] for line in rows}
    assert images["gray0000-0.jpg"] == ["50", "40"] and images["rgba0000-0.png"] == ["36", "30"]
    for name, size in (("gray0000-0.jpg", (32, 26)), ("rgba0000-0.png", (32, 27))):
        with Image.open(root / "yolo" / "images" / name) as im:
            assert (im.mode, im.size) == ("RGB", size)


def test_bad_override_lists_valid_keys(env, capsys):
    data = write_data(env / "raw", GOOD)
    rc, _, err = run(data, capsys, "hash_dist=3")
    assert rc == 1 and "unknown key(s) hash_dist; valid keys:" in err and "hash_distance" in err
    assert_nothing_written(data)


@pytest.mark.parametrize("case", ["unknown-class", "jpeg-as-csv"])
@pytest.mark.smoke
def test_cli_subprocess_exits_cleanly(env, case):
    data = write_data(env / "raw", [*GOOD[:3], "dddddddd-0.jpg,1,1,20,25,LH_LyAc"])
    if case == "jpeg-as-csv":
        (data / "train.csv").write_bytes((data / "images" / "aaaaaaaa-0.jpg").read_bytes())
    before = snapshot(data)
    proc = subprocess.run([sys.executable, "-m", "prepare.folds", "--data", str(data), "--k", "2"],
                          cwd=paths.ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CYTOKIT_WORK": str(env / "work")})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    expected = "did you mean 'LH_lyAct'?" if case == "unknown-class" else "not a text CSV file"
    assert expected in proc.stderr and str(data / "train.csv") in proc.stderr
    assert snapshot(data) == before
    assert not (env / "work" / "folds").exists() and not (env / "work" / "datasets").exists()


def test_too_few_images_for_k(env, capsys):
    data = write_data(env / "raw", GOOD[:1])
    rc, _, err = run(data, capsys, "--k", "3")
    assert rc == 1 and "cannot make 3 folds from 1 image group(s)" in err
    assert_nothing_written(data)


def bomb_jpeg(path: Path, side: int = 20000) -> Path:
    """A small JPEG whose header claims ``side`` x ``side`` pixels (SOF0 height and width patched)."""
    buf = BytesIO()
    Image.new("RGB", (64, 48)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    at = data.index(b"\xff\xc0")  # SOF0: marker, length (2), precision (1), height (2), width (2)
    data[at + 5:at + 9] = side.to_bytes(2, "big") * 2
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            [*GOOD, "../escape.jpg,1,1,20,25,LY"],
            "train.csv:6: error: column 'NAME': '../escape.jpg' is not a plain file name inside images/",
        ),
        (
            [*GOOD, "/tmp/abs.jpg,1,1,20,25,LY"],
            "train.csv:6: error: column 'NAME': '/tmp/abs.jpg' is not a plain file name inside images/",
        ),
        (
            [*GOOD, "sub/x.jpg,1,1,20,25,LY"],
            "train.csv:6: error: column 'NAME': 'sub/x.jpg' is not a plain file name inside images/",
        ),
        (
            [*GOOD, "aaaaaaaa-0.png,1,1,20,25,LY"],
            "train.csv:6: error: column 'NAME': 'aaaaaaaa-0.png' and 'aaaaaaaa-0.jpg' (line 2) "
            "have the same stem",
        ),
        (
            [*GOOD, "AAAAAAAA-0.jpg,1,1,20,25,LY"],
            (
                "train.csv:6: error: column 'NAME': 'AAAAAAAA-0.jpg' and 'aaaaaaaa-0.jpg' (line 2) "
                "have the same stem when case is ignored"
            ),
        ),
    ],
    ids=["dot-dot", "absolute", "folder-part", "same-stem", "same-name-but-case"],
)
def test_names_that_cannot_be_one_file_each(env, capsys, lines, expected):
    data = write_data(env / "raw", lines)
    for name in ("aaaaaaaa-0.png", "AAAAAAAA-0.jpg"):
        shutil.copyfile(data / "images" / "aaaaaaaa-0.jpg", data / "images" / name)
    (env / "escape.jpg").write_bytes((data / "images" / "aaaaaaaa-0.jpg").read_bytes())
    rc, _, err = run(data, capsys)
    assert rc == 1 and expected in err
    assert_nothing_written(data)
    assert {p.name for p in env.iterdir()} <= {"escape.jpg", "raw", "work"}  # no link made outside


def test_header_claiming_too_many_pixels(env, capsys):
    data = write_data(env / "raw", GOOD)
    bomb_jpeg(data / "images" / "cccccccc-0.jpg")
    rc, _, err = run(data, capsys)
    assert rc == 1
    assert (
        "train.csv:4: error: column 'NAME': image" in err
        and "cccccccc-0.jpg: not a usable image: its header "
        "claims 400,000,000 pixels, more than the 178,956,970 Pillow accepts"
        in err
    )
    assert_nothing_written(data)
    with pytest.raises(images.ImageError, match="cccccccc-0.jpg: cannot decode image: its header claims"):
        images.load_rgb(data / "images" / "cccccccc-0.jpg")


def test_semicolon_separated_csv_gets_a_hint(env, capsys):
    data = write_data(env / "raw", [line.replace(",", ";") for line in GOOD], header="NAME;x1;y1;x2;y2;class")
    rc, _, err = run(data, capsys)
    assert rc == 1
    assert "train.csv:1: error: the fields seem to be separated by semicolons; the challenge files are " \
           "comma-separated CSV" in err
    assert_nothing_written(data)


def test_missing_config_file_is_an_error(env, capsys):
    data = write_data(env / "raw", GOOD)
    rc, _, err = run(data, capsys, "--config", str(env / "missing.yaml"))
    assert rc == 1 and err.strip() == f"{env / 'missing.yaml'}: config file not found"
    assert_nothing_written(data)
