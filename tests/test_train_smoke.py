"""CPU smoke runs of every detector of the registry, offline, through ``python -m train``.

One tiny synthetic data set (``prepare.synth``, 8 images) split by ``prepare.folds``
(k=2); every model trains 1-2 epochs at a tiny size with sockets blocked, writes
its run folder and a schema-valid out-of-fold parquet, and predicts through the
``registry.get(name)().load(...)`` entry point that inference uses. yolov8 and
fasterrcnn_mobilenet are interrupted after their first epoch and resumed.
"""
from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cytocore import classes, dataset, paths, predictions

pytestmark = pytest.mark.smoke

TINY = ["imgsz=64", "batch=2", "workers=0", "conf=0.0", "predict_batch=4", "val_every=1"]
ULTRA = TINY + ["plots=false", "warmup_epochs=0", "mosaic=0.0"]
TV = TINY + ["max_size=96", "augment=light"]
ARGS = {"yolov5": ULTRA, "yolov8": ULTRA, "yolo11": ULTRA,
        "fasterrcnn": TV, "fasterrcnn_mobilenet": TV, "retinanet": TV}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Iterator[Path]:
    """8 synthetic images, folds k=2 seed 0, exported in the cytocore/dataset.py layout,
    in a work folder of this module's own (runs and predictions of other tests stay apart)."""
    from prepare import folds
    from prepare.synth import make as synth

    root = tmp_path_factory.mktemp("train-smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CYTOKIT_WORK", str(root / "work"))
        data = root / "tiny"
        assert synth.main(["--out", str(data), "--images", "8", "--seed", "3"]) == 0
        assert folds.main(["--data", str(data), "--k", "2", "--seed", "0"]) == 0
        yield data


@pytest.fixture
def offline(monkeypatch):
    """No name lookup, no connection; any attempt (even one a library catches) fails the test."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2] or kwargs)
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield
    assert attempts == [], f"network access attempted: {attempts}"


def train_cli(model: str, data: Path, *extra: str) -> int:
    from train.__main__ import main

    return main(["--model", model, "--fold", "0", "--data", str(data), "--k", "2", "--seed", "0", *extra])


def check_run(model: str, data: Path, epochs: int) -> pd.DataFrame:
    """The run folder and OOF parquet of ``model`` fold 0 are complete and consistent."""
    run = dataset.resolve(data).run_dir(model, 0)
    for name in ("config.yaml", "metrics.csv", "best.pt", "last.pt", "curves.png", "done.json"):
        assert (run / name).exists(), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == list(range(1, epochs + 1))
    assert metrics["challenge"].between(0, 1).all()
    done = json.loads((run / "done.json").read_text())
    oof = predictions.read(dataset.resolve(data).preds_dir(model, 0) / "oof.parquet")
    fold = dataset.load_fold(data, 2, 0, 0)
    assert set(oof["NAME"]) == set(fold.val_images["NAME"])  # conf=0: every image has boxes
    assert (oof["model"] == model).all() and (oof["fold"] == 0).all() and (oof["view"] == "identity").all()
    sizes = fold.val_images.set_index("NAME").loc[oof["NAME"]]
    assert (oof["width"].to_numpy() == sizes["width"].to_numpy()).all()
    assert (oof["x2"].to_numpy() <= sizes["width"].to_numpy() + 1e-6).all()
    assert done["n_predictions"] == len(oof) and 0 <= done["challenge"] <= 1
    return oof


def check_predictor(model: str, data: Path) -> None:
    """The inference entry point: registry -> adapter.load -> predict on images of two sizes."""
    from train import registry

    cfg = registry.load_config(model, ARGS[model])
    best = dataset.resolve(data).run_dir(model, 0) / "best.pt"
    predictor = registry.get(model)().load(best, cfg, device="cpu")
    images = [np.full((50, 70, 3), 200, np.uint8), np.full((90, 60, 3), 120, np.uint8)]
    dets = predictor.predict(images, conf=0.0)
    assert len(dets) == 2
    for det, image in zip(dets, images):
        assert det.xyxy.shape == (len(det.scores), 4) and len(det.labels) == len(det.scores)
        assert ((det.labels >= 0) & (det.labels < classes.NUM_CLASSES)).all()
        assert (det.xyxy[:, 2] <= image.shape[1] + 1e-3).all()
        assert (det.xyxy[:, 3] <= image.shape[0] + 1e-3).all()
        if det.probs is not None:
            assert det.probs.shape == (len(det.scores), classes.NUM_CLASSES)


@pytest.mark.parametrize("model", ["yolov5", "yolo11", "fasterrcnn", "retinanet"])
def test_smoke_one_epoch_offline(model, tiny_data, offline):
    plots = ["plots=true"] if model == "yolo11" else []  # ultralytics' plots (fonts) offline too
    assert train_cli(model, tiny_data, "epochs=1", *ARGS[model], *plots) == 0
    oof = check_run(model, tiny_data, epochs=1)
    assert predictions.has_probs(oof) == model.startswith("yolo")
    if plots:
        assert (dataset.resolve(tiny_data).run_dir(model, 0) / "ultralytics" / "results.png").exists()
    assert not (paths.ROOT / "runs").exists()  # nothing in ultralytics' default places
    check_predictor(model, tiny_data)


def test_yolov8_from_local_weights_interrupted_then_resumed(tiny_data, offline, monkeypatch, tmp_path):
    from ultralytics import YOLO

    from train.yolo import trainer as ultra_trainer

    init = tmp_path / "coco80.pt"  # a local ultralytics checkpoint of another head (80 classes)
    torch.save({"model": YOLO("yolov8n.yaml").model}, init)

    original = ultra_trainer.EpochEnd.__call__

    def stop_after_first(self, trainer):
        original(self, trainer)
        raise KeyboardInterrupt("stopped by the test after epoch 1")

    monkeypatch.setattr(ultra_trainer.EpochEnd, "__call__", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_cli("yolov8", tiny_data, "epochs=2", f"pretrained={init}", *ULTRA)
    run = dataset.resolve(tiny_data).run_dir("yolov8", 0)
    assert f"pretrained: {init}" in (run / "config.yaml").read_text()
    assert (run / "ultralytics" / "args.yaml").exists()  # ultralytics' outputs inside the run folder
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1]
    assert (run / "last.pt").exists() and not (run / "done.json").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        train_cli("yolov8", tiny_data, "epochs=2", *ULTRA)
    monkeypatch.setattr(ultra_trainer.EpochEnd, "__call__", original)
    assert train_cli("yolov8", tiny_data, "--resume", "epochs=2", f"pretrained={init}", *ULTRA) == 0
    oof = check_run("yolov8", tiny_data, epochs=2)
    assert predictions.has_probs(oof)
    probs = oof[list(classes.PROB_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs.max(axis=1), oof["score"].to_numpy(), atol=1e-5)
    check_predictor("yolov8", tiny_data)


def test_mobilenet_interrupted_resumed_skipped_forced(tiny_data, offline, monkeypatch, capsys, tmp_path):
    from train import registry
    from train.tv import engine as tv_engine
    from train.tv.adapter import build_model

    original, calls = tv_engine.train_one_epoch, []

    def stop_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped by the test in epoch 2")
        return original(*args, **kwargs)

    monkeypatch.setattr(tv_engine, "train_one_epoch", stop_on_second)
    model = "fasterrcnn_mobilenet"
    with pytest.raises(KeyboardInterrupt):
        train_cli(model, tiny_data, "epochs=2", *TV)
    run = dataset.resolve(tiny_data).run_dir(model, 0)
    last = torch.load(run / "last.pt", weights_only=True)
    assert (last["epoch"], last["format"]) == (0, 2)  # the first epoch's index: train.checkpoint's format
    assert train_cli(model, tiny_data, "--resume", "epochs=2", *TV) == 0
    assert len(calls) == 3  # epoch 1, the interrupted epoch 2, epoch 2 again
    check_run(model, tiny_data, epochs=2)
    check_predictor(model, tiny_data)

    best_time = (run / "best.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert train_cli(model, tiny_data, "epochs=2", *TV) == 0  # finished: skipped
    assert "already trained" in capsys.readouterr().out
    assert (run / "best.pt").stat().st_mtime_ns == best_time and len(calls) == 3

    cfg = registry.load_config("fasterrcnn_mobilenet")
    sd = build_model("fasterrcnn_mobilenet_v3_large_fpn", cfg).state_dict()
    sd["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(91, 1024)  # a COCO-sized head: skipped
    torch.save(sd, tmp_path / "init.pt")
    assert train_cli(model, tiny_data, "--force", "epochs=1", f"pretrained={tmp_path / 'init.pt'}", *TV) == 0
    assert len(calls) == 4  # cleared, trained again
    check_run(model, tiny_data, epochs=1)
