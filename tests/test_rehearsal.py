"""make rehearsal: the placeholder images, the subset, the extrapolation, the per-step peak memory."""
from __future__ import annotations

import re
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cytocore import paths
from pipeline import rehearsal as run_rehearsal
from pipeline import run
from prepare import dedup, rehearsal

pytestmark = pytest.mark.unit


def _tables():
    train = pd.DataFrame({"NAME": ["a.jpg", "a.jpg", "b.jpg", "c.jpg"], "x1": [10, 50, 10, 20],
                          "y1": [10, 60, 10, 30], "x2": [100, 200, 500, 150], "y2": [90, 210, 300, 160],
                          "class": ["PNN", "LY", "MO", "PNN"]})
    test = pd.DataFrame({"trustii_id": [1, 2, 3], "NAME": ["t1.jpg", "t1.jpg", "t2.jpg"]})
    return train, test


def test_placeholders_are_deterministic_distinct_and_sized():
    a, again, b = (rehearsal.placeholder("a.jpg", 360, 352), rehearsal.placeholder("a.jpg", 360, 352),
                   rehearsal.placeholder("b.jpg", 360, 352))
    assert a.shape == (352, 360, 3) and a.dtype == np.uint8
    assert np.array_equal(a, again)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 20  # different colour fields, not noise apart


def test_placeholders_are_not_grouped_as_duplicates(tmp_path):
    one = dedup.hasher("phash", 8)  # configs/folds.yaml: phash, 8, distance 2
    hashes = {}
    for i in range(40):
        path = tmp_path / f"n{i}.jpg"
        path.write_bytes(rehearsal.encode(rehearsal.placeholder(path.name, 360, 360)))
        hashes[path.name] = one(path)
    groups = dedup.group_duplicates(pd.Series(hashes), 2)
    assert groups.nunique() == 40


def test_sizes_follow_the_boxes_and_the_subset_keeps_proportions():
    train, test = _tables()
    sizes = rehearsal.image_sizes(train, test).set_index("NAME")
    assert list(sizes.index) == ["a.jpg", "b.jpg", "c.jpg", "t1.jpg", "t2.jpg"]  # each name once
    assert sizes.loc["b.jpg", "width"] == sizes.loc["b.jpg", "height"] == rehearsal.BIG_SIDE  # box to 500
    assert 352 <= sizes.loc["a.jpg", "width"] <= 370 and sizes.loc["a.jpg", "width"] == sizes.loc["a.jpg",
                                                                                                "height"]
    big = pd.DataFrame({"NAME": [f"n{i}.jpg" for i in range(1000)], "width": 360, "height": 360,
                        "split": ["train"] * 700 + ["test"] * 300})
    ten, hundred = rehearsal.subset(big, 10), rehearsal.subset(big, 100)
    assert len(ten) == 10 and (ten["split"] == "train").sum() == 7
    assert set(ten["NAME"]) <= set(hundred["NAME"])  # nested: the small run's images are reused
    assert rehearsal.subset(big, None) is big and len(rehearsal.subset(big, 5000)) == 1000


def test_build_writes_the_data_folder_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    source = tmp_path / "src"
    source.mkdir()
    train, test = _tables()
    train.to_csv(source / "train.csv", index=False)
    test.to_csv(source / "test.csv", index=False)
    lines = []
    data = rehearsal.build(None, source, workers=1, echo=lines.append)
    assert data == paths.data_copy("rehearsal") / "all"
    sizes = rehearsal.image_sizes(train, test).set_index("NAME")
    for name, row in sizes.iterrows():
        with Image.open(data / "images" / name) as im:
            assert im.size == (row["width"], row["height"]) and im.format == "JPEG"
    assert pd.read_csv(data / "train.csv").equals(train) and pd.read_csv(data / "test.csv").equals(test)
    lines.clear()
    assert rehearsal.build(None, source, workers=1, echo=lines.append) == data
    assert "reused" in lines[-1] and not any("drawing" in line for line in lines)
    small = rehearsal.build(2, source, workers=1, echo=lines.append)  # from the pool: nothing drawn
    assert small.name == "n2" and len(list((small / "images").iterdir())) == 2
    assert "0 drawn now" in lines[-1]


def _scale(images, wall, rss, page=None):
    return run_rehearsal.Scale(images, images, {"folds": wall, "train": wall * 10},
                               {"folds": rss, "train": rss}, page)


def test_extrapolation_is_the_line_through_two_scales_or_proportional_from_one():
    two = run_rehearsal.extrapolate([_scale(1000, 30.0, 1.0), _scale(2000, 50.0, 1.5)], 10_000)
    assert two["folds"]["wall_s"] == pytest.approx(50.0 + 20.0 / 1000 * 8000)  # 10 s + 0.02 s per image
    assert two["folds"]["rss_gib"] == pytest.approx(1.5 + 0.5 / 1000 * 8000)
    one = run_rehearsal.extrapolate([_scale(2000, 50.0, 1.5)], 10_000)
    assert one["folds"]["wall_s"] == pytest.approx(250.0) and one["folds"]["rss_gib"] is None
    lines = run_rehearsal.table(_scale(2000, 50.0, 2.0, page=1.0), [_scale(1000, 30.0, 1.0, page=0.5)],
                                10_000)
    folds = next(line for line in lines if line.strip().startswith("folds"))
    assert "3.5 min" in folds and "10.00 GiB" in folds and folds.endswith("MISS (memory)")
    train = next(line for line in lines if line.strip().startswith("train"))
    assert train.endswith("MISS (memory)")  # 35 min, but training has no time target
    page = next(line for line in lines if "report page" in line)
    assert "full: 5.0 MB" in page and "MISS" not in page


def test_rss_sampler_sees_an_allocation_in_this_process():
    own, child, total = run.tree_rss()
    assert own > 10 * 2**20 and child >= 0 and total >= child
    sampler = run.RssSampler(interval=0.05)
    block = np.ones(100 * 2**20 // 8)  # 100 MiB, every page touched
    time.sleep(0.3)
    before_free = run.tree_rss()[0]
    del block
    peak = sampler.stop()
    assert peak["main_mb"] >= before_free / 2**20 - 1 >= own / 2**20 + 90
    assert peak["tree_mb"] >= peak["main_mb"]


def test_steps_record_peak_memory_in_the_table():
    out = []
    steps = run.Steps(out.append)
    steps("allocate", lambda: np.ones(50 * 2**20 // 8).sum())
    assert steps.rss["allocate"]["main_mb"] > 50 and "peak RSS" in out[-1]
    run._summary({"steps": steps.times, "steps_cpu": steps.cpu, "steps_rss": steps.rss, "total_s": 1.0,
                  "total_cpu_s": 1.0, "failures": []}, out.append)
    row = next(line for line in out if line.strip().startswith("allocate"))
    assert re.search(r"\d+\.\d\d GiB +\d+\.\d\d GiB$", row)


def test_makefile_lists_rehearsal_with_an_images_subset():
    makefile = (paths.ROOT / "Makefile").read_text()
    assert re.search(r"^rehearsal:.*## .*IMAGES=", makefile, flags=re.M)
    phony = re.search(r"^\.PHONY:(.*)$", makefile, flags=re.M).group(1).split()
    assert "rehearsal" in phony


@pytest.mark.smoke
def test_make_help_shows_rehearsal_and_images_only_when_given():
    listed = subprocess.run(["make", "help"], cwd=paths.ROOT, capture_output=True, text=True, check=True)
    assert re.search(r"make rehearsal +make all at full scale", listed.stdout)
    dry = subprocess.run(["make", "-n", "rehearsal", "IMAGES=2000"], cwd=paths.ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "-m pipeline.rehearsal --images 2000" in dry
    plain = subprocess.run(["make", "-n", "rehearsal"], cwd=paths.ROOT, capture_output=True, text=True,
                           check=True).stdout
    assert "-m pipeline.rehearsal" in plain and "--images" not in plain  # not the demo-data's IMAGES=1200
