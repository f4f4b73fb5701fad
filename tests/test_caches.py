"""Caches keyed by the image files themselves: per-file facts, prediction tables, exports, repairs.

A changed image (even with its size and mtime put back) is read again; another data folder with
the same image names never reuses the first one's predictions; a rerun with nothing changed
reuses everything.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cytocore import classes, dataset, images, io, paths, predictions
from infer import __main__ as infer_cli
from infer import predict
from train.base import Detections, Predictor

pytestmark = pytest.mark.unit


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    return tmp_path / "work"


def noise(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    return path


def test_cached_reads_only_changed_files_and_keeps_the_others(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)
    calls: list[list[str]] = []

    def compute(paths_):
        calls.append([p.name for p in paths_])
        return pd.DataFrame({"length": [len(p.read_text()) for p in paths_]})

    cache = tmp_path / "cache" / "lengths.csv"
    first = images.cached(cache, images.file_stats(tmp_path, ["a", "b"]), compute)
    assert first[["NAME", "length"]].values.tolist() == [["a", 1], ["b", 1]]
    assert images.cached(cache, images.file_stats(tmp_path, ["c"]), compute)["length"].tolist() == [1]
    assert sorted(pd.read_csv(cache)["NAME"]) == ["a", "b", "c"]  # c's row did not push out a and b
    assert images.cached(cache, images.file_stats(tmp_path, ["a", "b"]), compute)["length"].tolist() == [1, 1]
    (tmp_path / "b").write_text("bbb")  # new size: read again
    assert images.cached(cache, images.file_stats(tmp_path, ["a", "b"]), compute)["length"].tolist() == [1, 3]
    assert calls == [["a", "b"], ["c"], ["b"]]


def test_same_size_and_mtime_put_back_is_still_read_again(tmp_path):
    a = noise(tmp_path / "a.png", 1)
    before = images.file_facts(tmp_path, ["a.png"]).iloc[0]
    st = a.stat()
    data = bytearray(a.read_bytes())
    data[-20] ^= 0xFF  # same size, other content
    a.write_bytes(bytes(data))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: only ctime tells
    after = images.file_facts(tmp_path, ["a.png"]).iloc[0]
    assert (after["bytes"], after["mtime_ns"]) == (before["bytes"], before["mtime_ns"])
    assert after["sha1"] == hashlib.sha1(a.read_bytes()).hexdigest() != before["sha1"]


def test_content_digest(tmp_path, work):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    for i in range(3):
        noise(one / f"{i}.jpg", i)
    shutil.copytree(one, two)
    names = ["0.jpg", "1.jpg", "2.jpg"]
    assert images.content_digest(one, names) == images.content_digest(two, names[::-1])  # same contents
    noise(two / "1.jpg", 7)
    assert images.content_digest(one, names) != images.content_digest(two, names)
    assert images.content_digest(one, names) != images.content_digest(one, names[:2])
    (two / "2.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"two: 1 of 3 image\(s\) not found: 2.jpg"):
        images.content_digest(two, names)


class MeanColour(Predictor):
    """One box whose score is the image's mean brightness: predictions follow the pixels."""

    def predict(self, images_, conf=0.001):
        out = []
        for img in images_:
            h, w = img.shape[:2]
            out.append(Detections(np.array([[1.0, 1.0, w - 1.0, h - 1.0]]), np.array([img.mean() / 255.0]),
                                  np.array([classes.CLASS_TO_ID["PNN"]])))
        return out


def make_data(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    lines = ["NAME,x1,y1,x2,y2,class"]
    for i, cls in enumerate(["PNN", "MO", "EO", "LY"]):
        noise(root / "images" / f"tr{i}.jpg", i)
        lines.append(f"tr{i}.jpg,2,2,30,30,{cls}")
    for i in range(2):
        noise(root / "images" / f"te{i}.jpg", 10 + i)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "test.csv").write_text("trustii_id,NAME\n2,te0.jpg\n3,te1.jpg\n")
    return root


@pytest.mark.smoke
def test_prediction_tables_follow_the_test_images(work, tmp_path, monkeypatch, capsys):
    from prepare import folds

    calls = []

    def load_member(model, fold, weights, device="cpu", overrides=(), backend="torch", name=""):
        calls.append((model, fold))
        return MeanColour()

    monkeypatch.setattr(predict, "load_member", load_member)
    cfg_path = tmp_path / "ensemble.yaml"
    cfg_path.write_text(yaml.safe_dump({"members": [{"model": "m", "folds": [0]}], "tta": ["identity"],
                                        "fusion": "wbf", "viz_images": 0, "predict_oof": False}))

    def infer(data: Path) -> pd.DataFrame:
        assert io.cli(folds.main, ["--data", str(data), "--k", "2"]) == 0
        weights = dataset.resolve(data).run_dir("m", 0) / "best.pt"
        weights.parent.mkdir(parents=True, exist_ok=True)
        if not weights.exists():
            weights.write_bytes(b"w")
        assert io.cli(infer_cli.main, ["--config", str(cfg_path), "--data", str(data)]) == 0
        return predictions.read(dataset.resolve(data).preds_dir("m", 0) / "test.parquet")

    first = make_data(tmp_path / "a" / "raw")
    table = infer(first)
    assert calls == [("m", 0)]
    assert infer(first).equals(table) and calls == [("m", 0)]  # nothing changed: reused

    noise(first / "images" / "te1.jpg", 99)  # one test image replaced in place
    again = infer(first)
    assert calls == [("m", 0), ("m", 0)]
    score = again.set_index("NAME")["score"]
    assert score["te1.jpg"] != table.set_index("NAME")["score"]["te1.jpg"]
    assert score["te1.jpg"] == pytest.approx(images.load_rgb(first / "images" / "te1.jpg").mean() / 255)

    second = tmp_path / "b" / "raw"  # another folder, same names, one image differs
    shutil.copytree(tmp_path / "a" / "raw", second)
    noise(second / "images" / "te0.jpg", 55)
    other = infer(second)
    assert calls == [("m", 0)] * 3
    assert other.set_index("NAME")["score"]["te0.jpg"] == pytest.approx(
        images.load_rgb(second / "images" / "te0.jpg").mean() / 255)


def test_resized_export_and_labels_follow_a_changed_image(work, tmp_path, capsys):
    from prepare import folds

    data = make_data(tmp_path / "raw")
    assert io.cli(folds.main, ["--data", str(data), "--k", "2", "--resize", "24"]) == 0
    root = dataset.resolve(data).root
    with Image.open(root / "yolo" / "images" / "tr1.jpg") as im:
        assert im.size == (24, 20)
    noise(data / "images" / "tr1.jpg", 5, size=(40, 48))  # same name, now portrait
    assert io.cli(folds.main, ["--data", str(data), "--k", "2", "--resize", "24"]) == 0
    capsys.readouterr()
    new = dataset.resolve(data).root
    assert new != root
    with Image.open(new / "yolo" / "images" / "tr1.jpg") as im:
        assert im.size == (20, 24)
    label = [float(v) for v in (new / "yolo" / "labels" / "tr1.txt").read_text().split()[1:]]
    np.testing.assert_allclose(label, [16 / 40, 16 / 48, 28 / 40, 28 / 48])


def test_repaired_copies_follow_the_raw_content(work, tmp_path, capsys):
    from prepare import folds, sizes

    data = make_data(tmp_path / "raw")
    raw = data / "images" / "tr2.jpg"
    raw.write_bytes(raw.read_bytes()[:-200])
    assert io.cli(folds.main, ["--data", str(data), "--k", "2", "--repair"]) == 0
    first = Path(os.readlink(dataset.resolve(data).root / "yolo" / "images" / "tr2.jpg"))
    noise(raw, 77)
    raw.write_bytes(raw.read_bytes()[:-200])
    assert io.cli(folds.main, ["--data", str(data), "--k", "2", "--repair"]) == 0
    capsys.readouterr()
    second = Path(os.readlink(dataset.resolve(data).root / "yolo" / "images" / "tr2.jpg"))
    assert second != first and second.parent.name == hashlib.sha1(raw.read_bytes()).hexdigest()
    assert second.parent.parent == (sizes.cache_root(data) / "repaired").resolve()
    assert paths.image_cache(data / "images") == sizes.cache_root(data)
