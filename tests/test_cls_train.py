"""Smoke runs of MODEL=cls on a tiny fixture in the cytocore/dataset.py layout (CPU, seconds)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cytocore import config, predictions
from cytocore.dataset import FoldData
from train.cls import data as cls_data
from train.cls.adapter import ClassifierAdapter, ClassifierConfig, training_tables

pytestmark = pytest.mark.smoke

COLOURS = {"PNN": (200, 40, 40), "EO": (40, 40, 200)}


def tiny_fold(root: Path, n_train: int = 8, n_val: int = 4, fold: int = 0) -> FoldData:
    """Images of 48 x 40 px holding one coloured square (PNN red, EO blue); two cells in the last."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n_train + n_val):
        im = np.full((40, 48, 3), 235, np.uint8)
        cells = 2 if i == n_train - 1 else 1
        for j in range(cells):
            code = list(COLOURS)[(i + j) % 2]
            x, y = int(rng.integers(0, 30)), int(rng.integers(0, 22))
            im[y:y + 16, x:x + 16] = COLOURS[code]
            rows.append({"NAME": f"im{i:02d}.jpg", "x1": x, "y1": y, "x2": x + 16, "y2": y + 16,
                         "class": code, "width": 48, "height": 40})
        Image.fromarray(im).save(root / "images" / f"im{i:02d}.jpg", quality=95)
    boxes = pd.DataFrame(rows)
    val_names = {f"im{i:02d}.jpg" for i in range(n_train, n_train + n_val)}
    is_val = boxes["NAME"].isin(val_names)
    sizes = boxes.drop_duplicates("NAME")[["NAME", "width", "height"]]
    return FoldData(root=root, fold=fold, k=2, seed=0, images_dir=root / "images",
                    train_boxes=boxes[~is_val].reset_index(drop=True),
                    val_boxes=boxes[is_val].reset_index(drop=True),
                    val_images=sizes[sizes["NAME"].isin(val_names)].reset_index(drop=True),
                    train_images=sizes[~sizes["NAME"].isin(val_names)].reset_index(drop=True),
                    yolo_yaml=root / "data.yaml", coco_train=root / "c.json", coco_val=root / "v.json",
                    resize=None)


def tiny_cfg(**kw) -> ClassifierConfig:
    base = {"backbone": "resnet10t", "imgsz": 32, "epochs": 1, "batch": 4, "workers": 0, "device": "cpu",
            "augment": "default", "mixup": 0.4, "cutmix": 1.0, "mix_prob": 1.0}
    return config.from_dict(ClassifierConfig, {**base, **kw})


def test_smoke_train_resume_and_predict(tmp_path):
    fold = tiny_fold(tmp_path / "data")
    run = tmp_path / "run"
    best = ClassifierAdapter().train(tiny_cfg(), fold, run)
    assert best == run / "best.pt"
    files = {p.name for p in run.iterdir()}
    assert files >= {"best.pt", "last.pt", "metrics.csv", "config.yaml", "curves.png"}
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1]
    assert {"train_loss", "val_loss", "val_f1", "val_acc", "val_bacc", "lr"} <= set(metrics.columns)
    assert config.read_yaml(run / "config.yaml")["backbone"] == "resnet10t"

    ClassifierAdapter().train(tiny_cfg(epochs=2), fold, run, resume=True)  # continues at epoch 2
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2]

    predictor = ClassifierAdapter().load(best, {"tta": False}, "cpu")
    assert (predictor.cfg.imgsz, predictor.cfg.tta) == (32, False)
    assert predictor.takes_size and predictor.cfg.box_size  # the defaults: box_size, cache
    ims = [np.full((40, 48, 3), 200, np.uint8), np.full((30, 20, 3), 90, np.uint8)]
    dets = predictor.predict(ims)
    assert [d.xyxy.tolist() for d in dets] == [[[0, 0, 47, 39]], [[0, 0, 19, 29]]]
    for d in dets:
        assert d.probs.shape == (1, 23) and d.probs.sum() == pytest.approx(1.0)
        assert d.scores[0] == pytest.approx(d.probs.max()) and d.labels[0] == d.probs.argmax()
    per_image = predictor.classify_boxes(ims, [np.array([[1, 1, 20, 20], [5, 5, 40, 30]]), np.zeros((0, 4))])
    assert [p.shape for p in per_image] == [(2, 23), (0, 23)]


def test_plain_head_without_cache(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="train.cls.adapter")
    fold = tiny_fold(tmp_path / "data")
    ClassifierAdapter().train(tiny_cfg(), fold, tmp_path / "cached")
    assert "crop cache:" in caplog.text  # the default
    caplog.clear()
    cfg = tiny_cfg(box_size=False, cache=False, mixup=0.0, cutmix=0.0)
    best = ClassifierAdapter().train(cfg, fold, tmp_path / "run")
    assert "crop cache" not in caplog.text
    predictor = ClassifierAdapter().load(best)
    assert not predictor.takes_size and not predictor.cfg.box_size
    im = np.full((40, 48, 3), 200, np.uint8)
    small, large = np.array([[10, 10, 26, 26]]), np.array([[10, 10, 26, 26]]) * 1.5
    crops = predictor.crops(im, small)
    # without box_size, the box size changes nothing once the pixels are the same
    np.testing.assert_array_equal(predictor.classify(crops, sizes=cls_data.box_size_features(small)),
                                  predictor.classify(crops, sizes=cls_data.box_size_features(large)))


def test_full_mode_trains_on_single_cell_images(tmp_path):
    fold = tiny_fold(tmp_path / "data")
    train, val = training_tables(tiny_cfg(mode="full"), fold)
    assert len(train) == len(fold.train_boxes) - 2  # the two-cell image is left out
    assert "im07.jpg" not in set(train["NAME"]) and len(val) == 4
    cfg = tiny_cfg(mode="full", augment="light", mixup=0.0, cutmix=0.0)
    best = ClassifierAdapter().train(cfg, fold, tmp_path / "r")
    assert ClassifierAdapter().load(best).cfg.mode == "full"


def test_validation_on_detector_oof_boxes(tmp_path, monkeypatch):
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    fold = tiny_fold(tmp_path / "data")
    v = fold.val_boxes
    shifted = v[["x1", "y1", "x2", "y2"]].to_numpy(float) + 2.0
    oof = pd.concat([predictions.make(row.NAME, shifted[i], [0.9], [0], 48, 40, "fakedet", 0)
                     for i, row in enumerate(v.itertuples())])
    predictions.write(oof, fold.preds_dir("fakedet") / "oof.parquet")
    train, val = training_tables(tiny_cfg(val_detector="fakedet"), fold)
    np.testing.assert_array_equal(val[["x1", "y1", "x2", "y2"]].to_numpy(), shifted)
    assert val["class"].tolist() == v["class"].tolist()  # GT classes on detector boxes
    _, val = training_tables(tiny_cfg(val_detector="absent"), fold)
    pd.testing.assert_frame_equal(val, fold.val_boxes)


@pytest.mark.gpu
def test_gpu_amp_train_and_predict(tmp_path):
    fold = tiny_fold(tmp_path / "data")
    best = ClassifierAdapter().train(tiny_cfg(device="cuda", amp=True, epochs=2), fold, tmp_path / "run")
    predictor = ClassifierAdapter().load(best, None, "cuda")
    probs = predictor.classify_images([np.full((40, 48, 3), 200, np.uint8)])
    assert probs.shape == (1, 23) and probs.sum() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_classifier_learns_synthetic_cells(tmp_path):
    """On the kit's synthetic smears, GT crops: validation accuracy well above chance (1/23)."""
    from prepare.synth import make as synth
    from train.cls.adapter import fit

    synth.main(["--out", str(tmp_path / "demo"), "--images", "160", "--seed", "3", "--workers", "1"])
    boxes = pd.read_csv(tmp_path / "demo" / "train.csv")
    names = boxes["NAME"].drop_duplicates().sample(frac=1.0, random_state=0)
    val_names = set(names.iloc[: len(names) // 4])
    cfg = tiny_cfg(imgsz=64, epochs=12, batch=16, mixup=0.0, cutmix=0.0, lr=0.002)
    fit(cfg, boxes[~boxes["NAME"].isin(val_names)], boxes[boxes["NAME"].isin(val_names)],
        tmp_path / "demo" / "images", tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["val_acc"].max() > 0.2
