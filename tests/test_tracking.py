"""Experiment tracking (train.tracking): off by default, csv / tensorboard / mlflow record the config,
every epoch's row and the out-of-fold table, offline and under the work folder."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from cytocore import paths
from cytocore.config import ConfigError
from train import runs, tracking

pytestmark = pytest.mark.unit


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    folder = tmp_path / "work" / "runs" / "demo-1234abcd_k2_s42" / "yolov8" / "fold0"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("epochs: 3\nimgsz: 160\n")
    yield folder
    tracking.close_all()


def rows():
    return [{"epoch": e, "train_box_loss": 1.0 / e, "challenge": 0.1 * e, "note": "x"} for e in (1, 2, 3)]


def test_none_is_the_default_and_unknown_names_are_refused(monkeypatch, run_dir):
    monkeypatch.delenv(tracking.ENV, raising=False)
    assert tracking.selected() == "none"
    runs.append_metrics(run_dir, rows()[0])
    assert not (paths.work_dir() / "tracking").exists()
    with pytest.raises(ConfigError, match="wandb.*none, csv, tensorboard, mlflow"):
        tracking.selected("wandb")


def test_run_names_come_from_the_run_folder(run_dir):
    assert tracking.run_names(run_dir) == ("demo-1234abcd_k2_s42", "yolov8_fold0")


def test_csv_tracker_records_config_epochs_and_tables(monkeypatch, run_dir):
    monkeypatch.setenv(tracking.ENV, "csv")
    for row in rows():
        tracking.epoch(run_dir, row)
    tracking.epoch(run_dir, {**rows()[2], "challenge": 0.5})  # a rescored epoch replaces its row
    tracking.table("demo-1234abcd_k2_s42", "make_all", "oof", pd.DataFrame({"member": ["a"], "score": [0.9]}))
    folder = paths.work_dir() / "tracking" / "demo-1234abcd_k2_s42"
    assert json.loads((folder / "yolov8_fold0" / "params.json").read_text()) == {"epochs": 3, "imgsz": 160}
    metrics = pd.read_csv(folder / "yolov8_fold0" / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3]
    assert metrics["challenge"].tolist() == pytest.approx([0.1, 0.2, 0.5])
    assert "note" not in metrics  # numbers only
    assert pd.read_csv(folder / "make_all" / "oof.csv")["score"].tolist() == [0.9]


def test_a_failing_tracker_warns_once_and_training_goes_on(monkeypatch, run_dir, caplog):
    monkeypatch.setenv(tracking.ENV, "csv")

    def broken(self, row, step):
        raise OSError("disk full")

    monkeypatch.setattr(tracking.CsvTracker, "metrics", broken)
    for row in rows():
        tracking.epoch(run_dir, row)
    assert sum("tracker off" in r.message for r in caplog.records) == 1


@pytest.mark.smoke
def test_tensorboard_tracker_writes_event_files(monkeypatch, run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv(tracking.ENV, "tensorboard")
    for row in rows():
        runs.append_metrics(run_dir, row)
    tracking.close_all()
    folder = paths.work_dir() / "tracking" / "tensorboard" / "demo-1234abcd_k2_s42" / "yolov8_fold0"
    events = EventAccumulator(str(folder))
    events.Reload()
    assert [e.value for e in events.Scalars("challenge")] == pytest.approx([0.1, 0.2, 0.3])


@pytest.mark.smoke
def test_mlflow_tracker_uses_a_local_file_store(monkeypatch, run_dir):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv(tracking.ENV, "mlflow")
    for row in rows():
        runs.append_metrics(run_dir, row)
    tracking.close_all()
    store = paths.work_dir() / "tracking" / "mlruns"
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    exp = client.get_experiment_by_name("demo-1234abcd_k2_s42")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "yolov8_fold0" and run.data.params["imgsz"] == "160"
    history = client.get_metric_history(run.info.run_id, "challenge")
    assert [m.step for m in history] == [1, 2, 3]


def test_the_recipe_chooses_the_tracker_of_make_all_and_make_wins(monkeypatch, run_dir, tmp_path):
    """recipe ``tracker:`` -> CYTOKIT_TRACKER for the jobs (unless TRACKER= already set it); an unknown
    tracker is refused with the recipe; the tuned OOF table and settings are logged as run make_all."""
    from cytocore import config as kit_config
    from pipeline import run as orch
    from pipeline.recipe import RecipeConfig

    monkeypatch.delenv(tracking.ENV, raising=False)
    with pytest.raises(ConfigError, match="tracker 'wandb'"):
        kit_config.from_dict(RecipeConfig, {"tracker": "wandb"}, "recipe")
    orch._use_tracker(kit_config.from_dict(RecipeConfig, {"tracker": "csv"}, "recipe"))
    assert tracking.selected() == "csv"
    monkeypatch.setenv(tracking.ENV, "tensorboard")  # make all TRACKER=tensorboard
    orch._use_tracker(kit_config.from_dict(RecipeConfig, {"tracker": "csv"}, "recipe"))
    assert tracking.selected() == "tensorboard"
    monkeypatch.setenv(tracking.ENV, "csv")
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("fusion: wbf\n")
    ds = type("DS", (), {"id": "demo-1234abcd_k2_s42"})()
    orch._track_oof(ds, pd.DataFrame({"member": ["ensemble"], "score": [0.91]}), tuned)
    folder = paths.work_dir() / "tracking" / ds.id / "make_all"
    assert pd.read_csv(folder / "oof.csv")["score"].tolist() == [0.91]
    assert json.loads((folder / "params.json").read_text()) == {"fusion": "wbf"}


def test_yolo_runs_switch_on_ultralytics_own_integration_for_the_tracker(monkeypatch, run_dir):
    """tracker: mlflow / tensorboard also turn on ultralytics' callbacks (its SETTINGS), MLflow into the
    kit's local store under the kit's names; none leaves both off."""
    import os

    settings = {"tensorboard": True, "mlflow": False}
    updates = []

    class Settings(dict):
        def update(self, values):
            updates.append(dict(values))
            super().update(values)

    fake = Settings(settings)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(tracking.ENV, "none")
    assert tracking.use_ultralytics(run_dir, fake) == {"tensorboard": False, "mlflow": False}
    assert fake == {"tensorboard": False, "mlflow": False} and "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv(tracking.ENV, "mlflow")
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN"):
        monkeypatch.setenv(key, "")  # restored after the test
    assert tracking.use_ultralytics(run_dir, fake) == {"tensorboard": False, "mlflow": True}
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("file://")
    assert os.environ["MLFLOW_TRACKING_URI"].endswith("/tracking/mlruns")
    assert (os.environ["MLFLOW_EXPERIMENT_NAME"], os.environ["MLFLOW_RUN"]) == (
        "demo-1234abcd_k2_s42", "yolov8_fold0_ultralytics")
    assert len(updates) == 2
    tracking.use_ultralytics(run_dir, fake)
    assert len(updates) == 2  # already set: the settings file is not written again
