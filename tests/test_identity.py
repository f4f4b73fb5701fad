"""The dataset identity: ``make folds K=3 SEED=7`` once, then every later step without K/SEED;
folders with the same name never mix; data changed since ``make folds`` is refused in one line;
a moved folder keeps its runs.

Later steps run in-process through their CLIs (``io.cli(main, argv)``) with a fake registry
model, so training and inference cost nothing; ``make folds`` runs through make itself.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml
from PIL import Image

from cytocore import classes, dataset, io, paths
from train import registry
from train.base import Adapter, Detections, Predictor

pytestmark = pytest.mark.unit


@dataclasses.dataclass
class FakeConfig:
    """The settings of the fake model."""

    device: str = "cpu"  # where it runs
    conf: float = 0.001  # detection threshold


class CentrePredictor(Predictor):
    def predict(self, images, conf=0.001):
        out = []
        for img in images:
            h, w = img.shape[:2]
            probs = np.zeros((1, classes.NUM_CLASSES))
            probs[0, classes.CLASS_TO_ID["PNN"]] = 1.0
            out.append(Detections(np.array([[w * 0.25, h * 0.25, w * 0.75, h * 0.75]]), np.array([0.9]),
                                  np.array([classes.CLASS_TO_ID["PNN"]]), probs))
        return out


class FakeAdapter(Adapter):
    name = "fake"
    config_cls = FakeConfig
    trained: ClassVar[list] = []

    def train(self, cfg, fold_data, run_dir, resume=False):
        FakeAdapter.trained.append((fold_data.dataset.id, fold_data.fold))
        (Path(run_dir) / "best.pt").write_bytes(b"fake weights")
        return Path(run_dir) / "best.pt"

    def load(self, weights, cfg, device="cpu"):
        return CentrePredictor()


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setitem(registry.MODELS, "fake", "tests.test_identity:FakeAdapter")
    real_get = registry.get
    monkeypatch.setattr(registry, "get", lambda name: FakeAdapter if name == "fake" else real_get(name))
    FakeAdapter.trained = []
    return FakeAdapter


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    from prepare.synth import make as synth

    data = tmp_path_factory.mktemp("ident-synth") / "raw"
    assert synth.main(["--out", str(data), "--images", "24", "--seed", "5", "--test-fraction", "0.3"]) == 0
    return data


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    return tmp_path / "work"


def cli(main, argv, capsys) -> tuple[int, str, str]:
    rc = io.cli(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def folds(data: Path, capsys, *extra) -> tuple[int, str, str]:
    from prepare import folds as prepare_folds

    return cli(prepare_folds.main, ["--data", data, *extra], capsys)


def small_data(root: Path, seed: int = 0) -> Path:
    """Six 48 x 40 noise images with one box each, a test.csv of two other images."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    lines = ["NAME,x1,y1,x2,y2,class"]
    for i, cls in enumerate(["PNN", "MO", "EO", "LY", "PNN", "MO", "t0", "t1"]):
        name = f"img{i:05d}-0.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "images" / name)
        if not cls.startswith("t"):
            lines.append(f"{name},4,5,30,33,{cls}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "test.csv").write_text("trustii_id,NAME\n2,img00006-0.jpg\n3,img00007-0.jpg\n")
    return root


@pytest.mark.smoke
def test_make_folds_k3_seed7_then_every_step_without_k_or_seed(
    synth_data, work, fake_model, tmp_path, capsys
):
    # -o: never remake the virtualenv stamp (make setup) from a test
    proc = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(paths.ROOT),
            "-o",
            ".venv/.installed",
            "folds",
            f"DATA={synth_data}",
            "K=3",
            "SEED=7",
            f"PY={sys.executable}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CYTOKIT_WORK": str(work)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    ds = dataset.resolve(synth_data)
    assert (ds.k, ds.seed) == (3, 7) and ds.id.startswith("raw-") and ds.id.endswith("_k3_s7")

    from train import __main__ as train_main

    rc, out, err = cli(train_main.main, ["--model", "fake", "--fold", "all", "--data", synth_data], capsys)
    assert rc == 0, err
    assert fake_model.trained == [(ds.id, 0), (ds.id, 1), (ds.id, 2)]
    assert all((ds.run_dir("fake", f) / "done.json").exists() for f in range(3))

    cfg = tmp_path / "ensemble.yaml"
    cfg.write_text(yaml.safe_dump({
        "members": [{"model": "fake", "folds": []}], "tta": ["identity"], "fusion": "wbf", "viz_images": 0,
        "tune": {"weights": [1.0], "iou_thr": [0.5], "skip_box_thr": [0.001], "conf_type": ["avg"],
                 "fusion": ["wbf"], "rounds": 1, "max_images": 0}}))
    from infer import __main__ as infer_main
    from infer import tune
    from submit import oof

    rc, _, err = cli(infer_main.main, ["--config", cfg, "--data", synth_data], capsys)
    assert rc == 0, err
    assert all((ds.preds_dir("fake", f) / "test.parquet").exists() for f in range(3))
    rc, out, err = cli(
        tune.main, ["--config", cfg, "--data", synth_data, "--out", tmp_path / "tuned.yaml"], capsys
    )
    assert rc == 0, err
    from submit import __main__ as submit_main

    rc, out, err = cli(
        submit_main.main,
        ["--config", tmp_path / "tuned.yaml", "--data", synth_data, "--out", tmp_path / "subs"],
        capsys,
    )
    assert rc == 0, err
    assert (tmp_path / "subs" / "submission.csv").exists()
    rc, out, err = cli(oof.main, ["--data", synth_data], capsys)
    assert rc == 0, err
    assert f"dataset {ds.id}" in out and "k=3 seed=7" in out and "fake" in out


@pytest.mark.smoke  # starts a process
def test_makefile_passes_k_and_seed_only_when_given():
    def dry(*args):
        return subprocess.run(["make", "-n", "-C", str(paths.ROOT), *args], capture_output=True, text=True,
                              check=True).stdout

    assert "--k 3 --seed 7" in dry("folds", "K=3", "SEED=7")
    for target in ("train", "infer", "tune-ensemble", "submission", "score", "cls-report", "masks"):
        out = dry(target)
        assert "--k" not in out and "--seed" not in out and "k=" not in out and "seed=" not in out, target
    assert "k=3" in dry("infer", "K=3") and "--k 3" in dry("train", "K=3")


def test_same_folder_name_never_shares_a_dataset(work, tmp_path, capsys):
    x, y = small_data(tmp_path / "x" / "raw", seed=1), small_data(tmp_path / "y" / "raw", seed=2)
    assert folds(x, capsys, "--k", "2")[0] == 0
    assert folds(y, capsys, "--k", "2")[0] == 0
    dx, dy = dataset.resolve(x), dataset.resolve(y)
    assert dx.id != dy.id and dx.id.startswith("raw-") and dy.id.startswith("raw-")
    assert dx.run_dir("m", 0) != dy.run_dir("m", 0) and dx.preds_dir("m", 0) != dy.preds_dir("m", 0)
    assert paths.fold_file(dx.id) != paths.fold_file(dy.id)
    assert dx.data == x.resolve() and dy.data == y.resolve()

    # even byte-identical copies get their own id
    z = tmp_path / "z" / "raw"
    shutil.copytree(x, z)
    assert folds(z, capsys, "--k", "2")[0] == 0
    assert dataset.resolve(z).id not in (dx.id, dy.id)


def test_train_on_another_folder_with_the_same_name_is_refused(work, tmp_path, capsys):
    from train import __main__ as train_main

    x = small_data(tmp_path / "x" / "raw")
    assert folds(x, capsys, "--k", "2")[0] == 0
    y = small_data(tmp_path / "y" / "raw", seed=3)
    rc, _, err = cli(train_main.main, ["--model", "yolov8", "--data", y, "epochs=1"], capsys)
    assert rc == 1
    assert err.strip() == f"{y}: no prepared dataset; run `make folds DATA={y}` first"
    assert not (work / "runs").exists()


def test_two_preparations_of_one_folder_are_listed(work, tmp_path, capsys):
    from submit import oof

    data = small_data(tmp_path / "raw")
    assert folds(data, capsys, "--k", "2", "--seed", "0")[0] == 0
    assert folds(data, capsys, "--k", "3", "--seed", "0")[0] == 0
    rc, _, err = cli(oof.main, ["--data", data], capsys)
    ids = sorted(d.id for d in dataset.prepared(data))
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert f"2 prepared datasets match: {ids[0]} (K=2 SEED=0), {ids[1]} (K=3 SEED=0)" in err
    assert "choose one with K= and SEED=" in err
    assert dataset.resolve(data, k=3).k == 3 and dataset.resolve(data, seed=0, k=2).k == 2


def test_data_changed_since_make_folds_is_refused(work, tmp_path, capsys):
    from train import __main__ as train_main

    data = small_data(tmp_path / "raw")
    assert folds(data, capsys, "--k", "2")[0] == 0
    ds = dataset.resolve(data)
    train = data / "train.csv"
    original = train.read_text()
    train.write_text(original.replace(",LY", ",SS"))
    rc, _, err = cli(train_main.main, ["--model", "yolov8", "--data", data], capsys)
    assert rc == 1 and err.strip() == (f"{data}: {train} changed since `make folds` prepared {ds.id}; "
                                       f"run `make folds DATA={data} K=2 SEED=42` again")
    train.write_text(original)
    assert dataset.resolve(data).id == ds.id  # the same bytes again: fine

    image = data / "images" / "img00002-0.jpg"
    Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8)).save(image)
    changed = r"1 of its 6 train image\(s\) in .* changed \(e.g. img00002-0.jpg\)"
    with pytest.raises(dataset.DatasetError, match=changed):
        dataset.resolve(data)
    rc, out, _ = folds(data, capsys, "--k", "2")
    assert rc == 0 and "a new dataset id" in out
    assert dataset.resolve(data).id != ds.id

    image.unlink()
    with pytest.raises(dataset.DatasetError, match=r"1 of its 6 train image\(s\) in .* are gone"):
        dataset.resolve(data)


def test_touched_images_need_make_folds_but_keep_the_id(work, tmp_path, capsys):
    data = small_data(tmp_path / "raw")
    assert folds(data, capsys, "--k", "2")[0] == 0
    ds = dataset.resolve(data)
    image = data / "images" / "img00001-0.jpg"
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(dataset.DatasetError, match="changed"):
        dataset.resolve(data)
    rc, out, _ = folds(data, capsys, "--k", "2")
    assert rc == 0 and "dataset up to date" in out
    assert dataset.resolve(data).id == ds.id


def test_an_image_replaced_with_its_size_and_mtime_kept_is_found(work, tmp_path, capsys):
    data = small_data(tmp_path / "raw")
    assert folds(data, capsys, "--k", "2")[0] == 0
    ds = dataset.resolve(data)
    image = data / "images" / "img00001-0.jpg"
    st = image.stat()
    raw = bytearray(image.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # other pixels, the same number of bytes
    image.write_bytes(bytes(raw))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image.stat().st_size == st.st_size and image.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(dataset.DatasetError, match=r"1 of its 6 train image\(s\) in .* changed"):
        dataset.resolve(data)
    rc, out, _ = folds(data, capsys, "--k", "2")
    assert rc == 0 and "a new dataset id" in out and dataset.resolve(data).id != ds.id


def test_moved_folder_keeps_its_id_and_runs(work, tmp_path, capsys):
    old = small_data(tmp_path / "old" / "raw")
    assert folds(old, capsys, "--k", "2")[0] == 0
    ds = dataset.resolve(old)
    ds.run_dir("yolov8", 0).mkdir(parents=True)
    (ds.run_dir("yolov8", 0) / "done.json").write_text("{}")
    new = tmp_path / "new" / "raw"
    new.parent.mkdir()
    old.rename(new)
    with pytest.raises(dataset.DatasetError) as exc:
        dataset.resolve(new)
    assert f"{ds.id} was prepared from {old.resolve()}, which is gone" in str(exc.value)
    assert f"run `make folds DATA={new} K=2 SEED=42` to move the dataset here" in str(exc.value)
    rc, out, _ = folds(new, capsys, "--k", "2")
    assert rc == 0 and f"{ds.id} was prepared from {old.resolve()}" in out
    moved = dataset.resolve(new)
    assert moved.id == ds.id and moved.data == new.resolve()
    assert (moved.run_dir("yolov8", 0) / "done.json").exists()
    link = moved.root / "yolo" / "images" / "img00000-0.jpg"
    assert Path(os.readlink(link)) == (new / "images" / "img00000-0.jpg").resolve()
    assert len(moved.fold(0).val_images) + len(moved.fold(1).val_images) == 6


def test_a_dataset_of_an_older_kit_or_without_its_record_is_refused(work, tmp_path, capsys):
    data = small_data(tmp_path / "raw")
    assert folds(data, capsys, "--k", "2")[0] == 0
    ds = dataset.resolve(data)
    (ds.root / dataset.SOURCE_FILE).unlink()
    missing = f"source.csv went missing since `make folds` prepared {ds.id}"
    with pytest.raises(dataset.DatasetError, match=missing):
        dataset.resolve(data)
    meta = json.loads((ds.root / "meta.json").read_text())
    del meta["source"]
    (ds.root / "meta.json").write_text(json.dumps(meta))
    changed = "the kit's dataset format changed since `make folds` prepared"
    with pytest.raises(dataset.DatasetError, match=changed):
        dataset.resolve(data)
    assert folds(data, capsys, "--k", "2")[0] == 0
    assert dataset.resolve(data).id == ds.id
