"""The ultralytics adapter's pieces: model yamls, trainer arguments, weights checks, offline AMP check."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cytocore.config import ConfigError, from_dict
from train.weights import WeightsError
from train.yolo.adapter import UltraConfig, Yolo11Adapter, Yolov5Adapter, Yolov8Adapter, check_weights

pytestmark = pytest.mark.unit

FOLD = SimpleNamespace(yolo_yaml=Path("/data/ds/fold2/data.yaml"))


def ultra(**values) -> UltraConfig:
    """configs/yolo.yaml's defaults with ``values`` on top."""
    return from_dict(UltraConfig, values)


def test_model_yaml_per_family_and_size():
    assert Yolov5Adapter().model_yaml(ultra(size="s")) == "yolov5su.yaml"  # YOLOv5u
    assert Yolov8Adapter().model_yaml(ultra()) == "yolov8n.yaml"
    assert Yolo11Adapter().model_yaml(ultra(size="m")) == "yolo11m.yaml"


def test_train_args_map_the_kit_config(tmp_path):
    cfg = ultra(epochs=7, imgsz=320, batch=4, device="cpu", workers=1, extra={"erasing": 0.1})
    args = Yolov8Adapter().train_args(cfg, FOLD, tmp_path / "fold2")
    assert args["data"] == "/data/ds/fold2/data.yaml"
    assert (args["epochs"], args["imgsz"], args["batch"]) == (7, 320, 4)
    assert (args["device"], args["workers"]) == ("cpu", 1)
    assert args["project"] == str(tmp_path / "fold2") and args["name"] == "ultralytics" and args["exist_ok"]
    assert args["pretrained"] is False and args["erasing"] == 0.1
    assert Yolov8Adapter().train_args(ultra(), FOLD, tmp_path)["device"] is None  # auto
    with pytest.raises(ConfigError, match="extra: epochs are set by the kit"):
        Yolov8Adapter().train_args(ultra(extra={"epochs": 3}), FOLD, tmp_path)


def test_kit_names_reach_ultralytics_under_its_own_names(tmp_path):
    args = Yolov8Adapter().train_args(ultra(lr=0.02, lrf=0.1), FOLD, tmp_path)
    assert (args["lr0"], args["lrf"]) == (0.02, 0.1) and "lr" not in args
    with pytest.raises(ConfigError, match="extra: lr0 \\(kit key lr\\) are set by the kit"):
        Yolov8Adapter().train_args(ultra(extra={"lr0": 0.1}), FOLD, tmp_path)


def test_weights_must_be_local_ultralytics_checkpoints(tmp_path):
    with pytest.raises(WeightsError, match="yolov8n.pt: ultralytics weights file not found"):
        check_weights("yolov8n.pt")  # a bare name is never fetched
    from train.yolo.predict import load_ultra_checkpoint

    torch.save({"0.weight": torch.zeros(2)}, tmp_path / "state.pt")  # a torchvision-style state dict
    with pytest.raises(ConfigError, match="state.pt: not an ultralytics checkpoint"):
        load_ultra_checkpoint(tmp_path / "state.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match="junk.pt: not ultralytics weights: it starts with"):
        load_ultra_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="ultralytics weights are .pt files"):
        load_ultra_checkpoint(tmp_path / "model.pth")


@pytest.mark.smoke
def test_a_checkpoint_of_another_class_count_is_refused(tmp_path):
    from ultralytics import YOLO

    torch.save({"model": YOLO("yolov8n.yaml").model}, tmp_path / "coco80.pt")  # 80 classes
    with pytest.raises(ConfigError, match="a model of 80 classes; the kit's models have 23"):
        Yolov8Adapter().load(tmp_path / "coco80.pt", ultra(), "cpu")


def test_amp_check_never_downloads_and_runs_only_with_its_weights_on_disk(monkeypatch, tmp_path):
    """On CPU: off. On CUDA (a model whose parameters say cuda): without ultralytics' reference weights
    on disk, AMP on and nothing fetched; with them, ultralytics' own check decides."""
    from train.yolo import trainer as ultra_trainer

    def no_download(*args, **kwargs):
        raise AssertionError("the AMP check tried to download")

    monkeypatch.setattr("ultralytics.utils.downloads.safe_download", no_download)
    monkeypatch.setattr("ultralytics.utils.downloads.attempt_download_asset", no_download)
    assert ultra_trainer.offline_check_amp(torch.nn.Linear(2, 2)) is False
    on_cuda = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda", 0))]))
    monkeypatch.setattr(ultra_trainer, "WEIGHTS_DIR", tmp_path)
    calls = []
    monkeypatch.setattr(ultra_trainer.checks, "check_amp", lambda model: calls.append(model) or False)
    assert ultra_trainer.offline_check_amp(on_cuda) is True and calls == []
    (tmp_path / "yolo26n.pt").write_bytes(b"weights")
    assert ultra_trainer.offline_check_amp(on_cuda) is False and calls == [on_cuda]
    import ultralytics.engine.trainer as trainer_module

    original = trainer_module.check_amp
    with ultra_trainer.no_amp_download():
        assert trainer_module.check_amp is ultra_trainer.offline_check_amp
    assert trainer_module.check_amp is original


def test_ultralytics_settings_live_in_the_work_folder():
    import os

    from ultralytics.utils import USER_CONFIG_DIR

    assert USER_CONFIG_DIR.is_relative_to(Path(os.environ["YOLO_CONFIG_DIR"]))
    assert not USER_CONFIG_DIR.is_relative_to(Path.home() / ".config")


def test_epoch_end_scores_every_n_epochs_and_keeps_the_best(tmp_path, monkeypatch, caplog):
    import logging

    import pandas as pd

    from train.yolo import trainer as ultra_trainer

    scores = iter([0.30, 0.20, 0.25])  # challenge of epochs 2, 4 and 5 (the last)
    monkeypatch.setattr(ultra_trainer, "UltraPredictor", lambda *a, **k: None)
    monkeypatch.setattr(ultra_trainer.oof, "predict_fold", lambda *a, **k: None)
    monkeypatch.setattr(ultra_trainer.oof, "evaluate", lambda *a: {"challenge": next(scores)})
    last = tmp_path / "ultralytics" / "last.pt"
    last.parent.mkdir()
    trainer = SimpleNamespace(epochs=5, tloss=None, metrics={"metrics/mAP50(B)": 0.5}, fitness=0.1,
                              ema=SimpleNamespace(ema=None), device="cpu", last=last, args=SimpleNamespace(),
                              label_loss_items=lambda loss, prefix: {f"{prefix}/box_loss": 1.0})
    callback = ultra_trainer.EpochEnd(None, tmp_path, ultra(val_every=2, epochs=5), "yolov8")
    caplog.set_level(logging.INFO, logger=ultra_trainer.__name__)
    for epoch in range(5):
        trainer.epoch = epoch
        ultra_trainer.UltraVal(2, "challenge")(trainer)  # ultralytics validates on epochs 2 and 4 (and 5)
        last.write_text(f"weights of epoch {epoch + 1}")
        callback(trainer)
    lines = [r.getMessage().split(", ")[:2] for r in caplog.records if r.name == ultra_trainer.__name__]
    assert lines == [  # epoch i/N, the loss and its parts, the score or why there is none; then s/epoch, ETA
        ["epoch 1/5: loss 1.000 (box 1.00)", "challenge not scored this epoch (every 2; best -)"],
        ["epoch 2/5: loss 1.000 (box 1.00)", "challenge 0.3000 (best 0.3000)"],
        ["epoch 3/5: loss 1.000 (box 1.00)", "challenge not scored this epoch (every 2; best 0.3000)"],
        ["epoch 4/5: loss 1.000 (box 1.00)", "challenge 0.2000 (best 0.3000)"],
        ["epoch 5/5: loss 1.000 (box 1.00)", "challenge 0.2500 (best 0.3000)"]]  # never "-inf"
    assert "s/epoch, ETA" in caplog.records[-1].getMessage()
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert table["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert table["challenge"].fillna(-1).tolist() == [-1, 0.30, -1, 0.20, 0.25]
    assert table["ul_mAP50"].fillna(-1).tolist() == [-1, 0.5, -1, 0.5, 0.5]  # only what it validated
    assert table["train_box_loss"].tolist() == [1.0] * 5
    assert (tmp_path / "best.pt").read_text() == "weights of epoch 2"


def test_batch_progress_logs_the_epochs_batches_at_most_every_30_s(monkeypatch, caplog):
    from train.yolo import trainer as ul_trainer

    clock = iter([0.0, 10.0, 20.0, 31.0, 40.0, 62.0, 100.0, 101.0])
    monkeypatch.setattr(ul_trainer.time, "monotonic", lambda: next(clock))
    fake = SimpleNamespace(epoch=2, epochs=60, train_loader=range(100))
    callback = ul_trainer.BatchProgress()
    with caplog.at_level("INFO", logger="train.yolo.trainer"):
        for _ in range(6):  # batches 1..6 of epoch 3 at t = 0, 10, 20, 31, 40, 62
            callback(fake)
        fake.epoch = 3  # a new epoch starts its own count and clock
        callback(fake)
        callback(fake)
    lines = [r.getMessage() for r in caplog.records]
    # t=31: 4 batches in 31 s -> 7.75 s/batch, 96 left -> 744 s; t=62: 6 in 62 s -> 10.33, 94 left -> 971 s
    assert lines == ["epoch 3/60: batch 4/100 (4 %), 7.75 s/batch, ETA 12 min",
                     "epoch 3/60: batch 6/100 (6 %), 10.33 s/batch, ETA 16 min"]


def test_ultralytics_validates_only_on_the_kits_scoring_epochs_under_select_challenge():
    from train.yolo.trainer import UltraVal

    fake = SimpleNamespace(epoch=0, args=SimpleNamespace(val=True), kit_final_val=True)
    validated = []
    for epoch in range(12):  # 0-based epochs, as ultralytics counts
        fake.epoch = epoch
        UltraVal(5, "challenge")(fake)
        validated.append(fake.args.val)
    assert [e + 1 for e, v in enumerate(validated) if v] == [5, 10] and fake.kit_final_val is False
    fitness = SimpleNamespace(epoch=3, args=SimpleNamespace(val=True), kit_final_val=True)
    UltraVal(5, "fitness")(fitness)  # its mAP chooses best.pt: every epoch, and the final validation
    assert fitness.args.val is True and fitness.kit_final_val is True


def test_final_eval_only_strips_the_checkpoints_when_the_kit_scores_best_pt(tmp_path, monkeypatch, caplog):
    from ultralytics.utils import torch_utils

    from train.yolo.trainer import KitTrainer

    stripped = []
    monkeypatch.setattr(torch_utils, "strip_optimizer", lambda f, **kw: stripped.append(Path(f).name) or {})

    class Validator:
        def __call__(self, **kwargs):
            raise AssertionError("ultralytics' final validation ran")

    (tmp_path / "last.pt").write_bytes(b"x")
    (tmp_path / "best.pt").write_bytes(b"x")
    trainer = KitTrainer.__new__(KitTrainer)  # no set-up: only final_eval is exercised
    trainer.last, trainer.best, trainer.validator = tmp_path / "last.pt", tmp_path / "best.pt", Validator()
    trainer.kit_final_val = False
    with caplog.at_level("INFO", logger="train.yolo.trainer"):
        trainer.final_eval()
    assert stripped == ["last.pt", "best.pt"] and "final validation skipped" in caplog.text
