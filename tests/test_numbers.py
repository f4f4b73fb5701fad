"""Every step on the recipe's device, crops classified once, images decoded once, one comparison table.

Unit tier: fake predictors and tables, no network, no subprocess.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cytocore import classes, predictions
from infer import oof_table
from train.base import Detections

pytestmark = pytest.mark.unit


class FakeClassifier:
    """What ``CropClassifier`` asks of a classifier predictor; counts the crops it classifies."""

    def __init__(self, mode: str = "crop", device: str = "cpu"):
        self.cfg = SimpleNamespace(imgsz=8, margin=2, mode=mode, tta=True, batch=16)
        self.device, self.takes_size, self.classified = device, False, 0

    def crops(self, image, xyxy):
        return np.zeros((len(np.asarray(xyxy).reshape(-1, 4)), 8, 8, 3), np.uint8)

    def image_crops(self, images):
        return np.zeros((len(images), 8, 8, 3), np.uint8)

    def view_probs(self, crops, sizes=None):
        self.classified += len(crops)
        rng = np.random.default_rng(len(crops))
        p = rng.uniform(0.1, 1, (3, len(crops), classes.NUM_CLASSES)).astype(np.float32)
        return p / p.sum(axis=2, keepdims=True)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for n in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / n)
    return folder


def _table() -> pd.DataFrame:
    rows = [predictions.make(n, [[1, 1, 20, 20], [10, 5, 40, 30]], [0.9, 0.5], [0, 1], 50, 40, "ens", -1,
                             "fused") for n in ("a.png", "b.png", "c.png")]
    return pd.concat(rows, ignore_index=True)


# --- every step on the recipe's device ------------------------------------------------------------

def test_device_is_the_configs_unless_overridden(monkeypatch):
    from infer.config import device

    monkeypatch.setenv("DEVICE", "cuda:1")  # a shell's DEVICE: make DEVICE= arrives as device= instead
    assert device("cuda:0") == "cuda:0"
    assert device("cuda:0", "cpu") == "cpu"


def test_checkpoints_load_on_the_device_asked(tmp_path, images, monkeypatch):
    from train.cls import predictor
    from train.cls.classify import CropClassifier

    seen = []
    monkeypatch.setattr(predictor, "load_predictor",
                        lambda w, c=None, device="cpu": seen.append(device) or FakeClassifier())
    ck = tmp_path / "best.pt"
    ck.write_bytes(b"x")
    CropClassifier(images, [("cls", 0, ck)], device="cuda:2").probs(_table(), True, None)
    assert seen == ["cuda:2"]


def test_tuning_classifies_on_the_configs_device(monkeypatch, tmp_path):
    from infer import oof_cls, oof_eval
    from infer.config import load_config

    monkeypatch.delenv("DEVICE", raising=False)
    cfg = load_config(Path("configs/ensemble.yaml"), {"device": "cuda:3"})
    ds = SimpleNamespace(images_dir=tmp_path, images=lambda: pd.DataFrame({"NAME": ["a"], "fold": [0]}))
    monkeypatch.setattr(oof_eval, "classifier_weights", lambda section, d: ([("cls", 0, tmp_path / "w")], []))
    assert oof_eval.classifier_for(cfg, ds).device == "cuda:3"
    cfg = load_config(Path("configs/ensemble.yaml"), {"device": "cuda:5"})  # make tune-ensemble DEVICE=cuda:5
    assert isinstance(oof_eval.classifier_for(cfg, ds), oof_cls.OOFClassifier)
    assert oof_eval.classifier_for(cfg, ds).device == "cuda:5"


def test_cls_report_runs_on_the_configs_device(tmp_path, monkeypatch):
    from infer import cls_report

    monkeypatch.delenv("DEVICE", raising=False)
    config = tmp_path / "ens.yaml"
    config.write_text("members: [{model: yolov8}]\ndevice: cuda:4\n")
    seen = []

    def inputs(data, k, seed, detector, classifiers, device, tta):
        seen.append(device)
        raise KeyboardInterrupt  # stop here: the device is what this test is about

    monkeypatch.setattr(cls_report, "oof_inputs", inputs)
    with pytest.raises(KeyboardInterrupt):
        cls_report.main(["--data", str(tmp_path), "--config", str(config)])
    with pytest.raises(KeyboardInterrupt):
        cls_report.main(["--data", str(tmp_path), "--config", str(config), "--device", "cpu"])
    assert seen == ["cuda:4", "cpu"]


def test_report_fallback_classifies_on_the_device(monkeypatch, tmp_path):
    from infer.config import load_config
    from pipeline.report import oof as report_oof

    seen = []

    def fallback(cfg, data, n_boot=1000, classifier=True):
        seen.append(cfg.device)
        raise FileNotFoundError("stop")

    monkeypatch.setattr(oof_table, "fallback", fallback)
    monkeypatch.setattr(oof_table, "find", lambda ds, config=None: None)
    monkeypatch.delenv("DEVICE", raising=False)
    cfg = load_config(Path("configs/ensemble.yaml"), {"device": "cuda:6"})
    src = SimpleNamespace(ds=None, data=tmp_path)
    for override in (None, "cuda:7"):
        with pytest.raises(FileNotFoundError):
            report_oof.build(src, cfg, device=override)
    assert seen == ["cuda:6", "cuda:7"]


# --- crops classified once, reused by every later step ---------------------------------------------

def test_crops_are_classified_once_per_checkpoint_across_steps(tmp_path, images):
    from train.cls.classify import CropClassifier

    ck = tmp_path / "best.pt"
    ck.write_bytes(b"weights")
    fake = FakeClassifier()
    table = _table()
    n_cells = {"a.png": 1, "b.png": 2, "c.png": 2}  # a: its top box only

    def step():  # a later step: a new classifier object (as in another process), the same checkpoint
        return CropClassifier(images, [("cls", 0, ck)], loader=lambda w: fake)

    first = step()
    p1 = first.probs(table, True, n_cells)
    first.flush()
    assert fake.classified == 5 and np.isnan(p1.crop[1]).all()
    second = step()
    p2 = second.probs(table, False, n_cells)  # TTA off: the identity view of the same crops
    assert fake.classified == 5 and second.computed == 0 and second.reused == 5
    p3 = second.probs(table, True, n_cells)
    np.testing.assert_array_equal(p1.crop, p3.crop)
    assert not np.allclose(p2.crop[0], p3.crop[0])
    os.utime(ck, ns=(1, 1))  # a retrained checkpoint (another mtime): classified again
    step().probs(table, True, n_cells)
    assert fake.classified == 10


def test_crops_are_cached_by_image_content_not_name_or_folder(tmp_path, images):
    import shutil

    from train.cls.classify import CropClassifier

    ck = tmp_path / "best.pt"
    ck.write_bytes(b"weights")
    fake = FakeClassifier()
    table = _table()

    def step(folder):
        c = CropClassifier(folder, [("cls", 0, ck)], loader=lambda w: fake)
        c.probs(table, True, None)
        c.flush()
        return c

    step(images)
    assert fake.classified == 6
    copy = tmp_path / "copy"  # the same images in another folder: nothing classified again
    shutil.copytree(images, copy)
    assert step(copy).computed == 0 and fake.classified == 6
    # one image replaced by another of the same size, its modification time restored: its 2 crops again
    st = (images / "b.png").stat()
    other = np.random.default_rng(9).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(other).save(images / "b.png")
    os.utime(images / "b.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    again = step(images)
    assert again.computed == 2 and again.reused == 4 and fake.classified == 8
    (images / "c.png").unlink()
    with pytest.raises(ValueError, match=r"c\.png: image not found"):
        step(images)


def test_submission_and_oof_classification_share_one_owner(tmp_path, images, monkeypatch):
    from infer import blend
    from train.cls import classify

    calls = []
    real = classify.CropClassifier.probs
    monkeypatch.setattr(classify.CropClassifier, "probs",
                        lambda self, *a, **k: calls.append(type(self).__name__) or real(self, *a, **k))
    fake = FakeClassifier()
    blend.classifier_probs(_table(), images, [fake], True, None)
    ck = tmp_path / "best.pt"
    ck.write_bytes(b"w")
    monkeypatch.setattr(blend, "load_members", lambda members, device="cpu", backend="torch": [fake])
    monkeypatch.setattr("train.cls.predictor.load_predictor", lambda w, c=None, device="cpu": fake)
    out = blend.apply_classifier(_table(), images, [(ck, None)], 0.5)
    assert calls == ["CropClassifier", "CropClassifier"] and len(out) == 6


# --- inference: each image decoded once for all member-folds ---------------------------------------

class FakeDetector:
    def __init__(self, shift: float):
        self.shift, self.calls = shift, 0

    def predict(self, images, conf=0.001):
        self.calls += 1
        return [Detections(np.array([[2.0 + self.shift, 3.0, 20.0, 25.0]]), np.array([0.8]), np.array([3]))
                for _ in images]


def test_each_image_is_decoded_once_for_every_member_fold(tmp_path, images, monkeypatch):
    from infer import ensemble, tta
    from infer.config import load_config

    decoded = []
    real = ensemble.load_rgb
    monkeypatch.setattr(ensemble, "load_rgb", lambda p: decoded.append(Path(p).name) or real(p))
    cfg = load_config(Path("configs/ensemble.yaml"), {"batch": 2})
    members = [FakeDetector(s) for s in (0.0, 1.0, 2.0)]
    jobs = [ensemble.Job(f"m{i}", 0, tmp_path / f"m{i}" / "test.parquet", {"m": i}, lambda d=d: d)
            for i, d in enumerate(members)]
    names = ["a.png", "b.png", "c.png"]
    ensemble.predict_shared(jobs, names, images, tta.get_views(["identity", "hflip"]), cfg, progress=False)
    assert sorted(decoded) == names  # once each, for three member-folds and two views
    for i, job in enumerate(jobs):
        table = predictions.read(job.path)
        assert len(table) == 6 and set(table["view"]) == {"identity", "hflip"}
        assert (job.path.with_suffix(".json")).is_file()
        assert table.loc[table["view"] == "identity", "x1"].tolist() == [2.0 + i] * 3


def test_streamed_fusion_equals_fusing_every_table_at_once(tmp_path):
    from infer import ensemble, fuse
    from infer.fuse import FuseParams

    rng = np.random.default_rng(3)
    files, frames = [], []
    for m in range(3):
        rows = []
        for i in range(7):
            if m == 2 and i < 4:
                continue  # a member-fold with no box on the first images: a chunk without its slot
            n = 4
            xy = rng.uniform(0, 60, (n, 2))
            for view in ("identity", "hflip"):
                rows.append(predictions.make(f"i{i}.png", np.c_[xy, xy + 20], rng.uniform(0.1, 1, n),
                                             rng.integers(0, 3, n), 100, 100, f"m{m % 2}", m // 2, view))
        t = pd.concat(rows, ignore_index=True)
        path = tmp_path / f"m{m}.parquet"
        predictions.write(t, path)
        files.append(path)
        frames.append(t)
    params = FuseParams(mode="wbf", iou_thr=0.55, skip_box_thr=0.001, conf_type="avg", max_det=20,
                        views=("identity", "hflip"))
    want = fuse.fuse(pd.concat(frames, ignore_index=True), params, progress=False)
    got = ensemble.fuse_files(files, ["identity", "hflip"], params, chunk=2, progress=False, batch_rows=9)
    key = ["NAME", "x1", "y1", "score"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  want.sort_values(key).reset_index(drop=True))


# --- one comparison table, computed once, read identically ----------------------------------------

@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A tuned table saved as infer.tune saves it, and a prepared dataset that records it."""
    import json

    monkeypatch.setattr(oof_table, "compute", lambda *a, **k: pytest.fail("a reader computed the table"))
    monkeypatch.setattr(oof_table, "fallback", lambda *a, **k: pytest.fail("a reader computed the table"))
    table = pd.DataFrame([
        {"member": "yolov8", "tta": True, "classifier": False, "score": 0.8812, "giou": 0.7, "f1": 0.91,
         "diff": -0.02, "lo": -0.03, "hi": -0.01, "p_better": 0.0, "reference": False},
        {"member": "yolov8", "tta": False, "classifier": True, "score": 0.8905, "giou": 0.69, "f1": 0.92,
         "diff": -0.0107, "lo": -0.02, "hi": 0.001, "p_better": 0.04, "reference": False},
        {"member": "ensemble", "tta": True, "classifier": True, "score": 0.901393, "giou": 0.72, "f1": 0.93,
         "diff": np.nan, "lo": np.nan, "hi": np.nan, "p_better": np.nan, "reference": True}],
        columns=list(oof_table.COLUMNS))
    logs = tmp_path / "logs" / "ds1"
    path = oof_table.save(table, oof_table.path_for(logs / "tuned.yaml"),
                          {"dataset": "ds1", "config": str(logs / "tuned.yaml"), "fusion": "wbf",
                           "n_images": 2, "images": ["a.png", "b.png"]})
    preds = tmp_path / "preds" / "ensemble" / "foldoof"
    preds.mkdir(parents=True)
    (preds / "variants.json").write_text(json.dumps({"table": str(path)}))
    ds = SimpleNamespace(id="ds1", k=1,
                         preds_dir=lambda model, fold: tmp_path / "preds" / model / f"fold{fold}")
    return table, path, ds


def test_terminal_score_and_report_read_the_same_cells(saved):
    from pipeline import run
    from pipeline.report import oof as report_oof
    from submit import oof as score

    table, path, ds = saved
    # the terminal: what _after_training stores after tuning, printed by _summary
    loaded, meta = oof_table.load(path)
    records = loaded.astype(object).where(loaded.notna(), None).to_dict(orient="records")
    lines: list[str] = []
    run._summary({"steps": {}, "steps_cpu": {}, "total_s": 0.0, "total_cpu_s": 0.0, "failures": [],
                  "oof": records, "oof_check": oof_table.check(loaded)}, lines.append)
    printed = "\n".join(lines)
    assert oof_table.text(table) in printed and "0.9014" in printed and "0.901393" not in printed
    assert "best single member yolov8 + classifier 0.8905" in printed
    # make score: the saved table, not scored again
    scored, smeta = score.score_ensemble(ds)
    pd.testing.assert_frame_equal(scored, table.drop(columns="reference"))
    assert smeta["images"] == ["a.png", "b.png"]
    # the report page: the same cells, found through the dataset (no config given)
    fold = SimpleNamespace(
        val_boxes=pd.DataFrame({"NAME": ["a.png", "b.png"], "x1": [1.0, 2.0], "y1": [1.0, 2.0],
                                "x2": [9.0, 9.0], "y2": [9.0, 9.0], "class": ["LY", "LY"]}),
        val_images=pd.DataFrame({"NAME": ["a.png", "b.png"], "width": [20, 20], "height": [20, 20]}))
    src = SimpleNamespace(ds=ds, k=1, fold=lambda f: fold, preds_dir=ds.preds_dir)
    page = report_oof.build(src, cfg=None)
    pd.testing.assert_frame_equal(page.table, table)
    frame = page.frame()
    assert frame["row"].tolist() == ["yolov8 + TTA", "yolov8 + classifier", "ensemble + TTA + classifier"]
    assert page.fusion == "wbf" and any("the same cells as the terminal" in n for n in page.notes)


def test_a_table_of_another_dataset_is_not_read(saved):
    _, path, ds = saved
    assert oof_table.load(path, "other-dataset") is None
    assert oof_table.find(SimpleNamespace(id="other", preds_dir=ds.preds_dir)) is None
