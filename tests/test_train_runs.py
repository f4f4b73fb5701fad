"""Run folders (fresh / resume / done / --force), metrics records and the ``python -m train`` CLI basics."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from cytocore import io
from cytocore.config import ConfigError
from train import runs
from train.__main__ import main
from train.job import folds_of, list_models

pytestmark = pytest.mark.unit


def test_fresh_folder_is_created(tmp_path):
    run = tmp_path / "runs" / "m" / "fold0"
    assert runs.prepare(run) == "fresh" and run.is_dir()


def test_unfinished_run_needs_resume_or_force(tmp_path):
    run = tmp_path / "fold0"
    run.mkdir()
    (run / "last.pt").write_bytes(b"ckpt")
    with pytest.raises(FileExistsError, match="add --resume to continue it or --force to start over"):
        runs.prepare(run)
    assert runs.prepare(run, resume=True) == "resume"
    assert (run / "last.pt").read_bytes() == b"ckpt"  # resume keeps the folder as it is


def test_resume_without_checkpoint_starts_clean(tmp_path):
    run = tmp_path / "fold0"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch\n1\n")
    assert runs.prepare(run, resume=True) == "fresh"
    assert list(run.iterdir()) == []  # no stale record mixed into the new run


def test_done_run_is_kept_unless_forced(tmp_path):
    run, oof = tmp_path / "fold0", tmp_path / "preds" / "oof.parquet"
    run.mkdir()
    oof.parent.mkdir()
    oof.write_bytes(b"old")
    runs.mark_done(run, {"challenge": 0.5})
    (run / "best.pt").write_bytes(b"w")
    assert runs.prepare(run, stale=(oof,)) == "done"
    assert runs.prepare(run, resume=True, stale=(oof,)) == "done"
    assert json.loads((run / "done.json").read_text())["challenge"] == 0.5
    assert runs.prepare(run, force=True, stale=(oof,)) == "fresh"
    assert list(run.iterdir()) == [] and not oof.exists()


def test_trained_run_goes_straight_to_predictions(tmp_path):
    run = tmp_path / "fold0"
    run.mkdir()
    runs.mark_trained(run)
    assert runs.prepare(run) == "trained"
    assert runs.prepare(run, force=True) == "fresh"


def test_metrics_rows_replace_the_same_epoch_and_draw_curves(tmp_path):
    runs.append_metrics(tmp_path, {"epoch": 1, "train_loss": 2.0, "challenge": 0.3})
    runs.append_metrics(tmp_path, {"epoch": 2, "train_loss": 1.5, "challenge": 0.5})
    runs.append_metrics(tmp_path, {"epoch": 2, "train_loss": 1.4, "challenge": 0.4})  # redone (resume)
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert table["epoch"].tolist() == [1, 2] and table["train_loss"].tolist() == [2.0, 1.4]
    assert runs.best_so_far(tmp_path) == 0.4
    assert runs.best_so_far(tmp_path, "missing") == float("-inf")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_saved_and_changes_logged(tmp_path, caplog):
    from train import registry

    runs.save_config(registry.load_config("retinanet", ["epochs=3"]), tmp_path)
    assert "epochs: 3" in (tmp_path / "config.yaml").read_text()
    runs.save_config(registry.load_config("retinanet", ["epochs=5"]), tmp_path)
    assert "config changed since the run started: epochs" in caplog.text


def test_folds_of():
    assert folds_of("all", 3) == [0, 1, 2]
    assert folds_of("2", 3) == [2]
    with pytest.raises(ConfigError, match=r"out of range for k=3 \(valid: 0..2, or 'all'\)"):
        folds_of("3", 3)
    with pytest.raises(ConfigError, match="expected a fold index"):
        folds_of("first", 3)


def test_cli_list_and_user_errors(capsys, tmp_path):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert out == list_models() + "\n"
    assert "fasterrcnn_mobilenet   train.tv.adapter:FasterRCNNMobileAdapter" in out
    assert io.cli(main, ["--model", "yolov9"]) == 1
    assert "unknown model 'yolov9'; valid models: yolov5" in capsys.readouterr().err
    assert io.cli(main, ["--model", "yolov8", "epoch=3"]) == 1
    assert "unknown key(s) epoch; valid keys:" in capsys.readouterr().err
    assert io.cli(main, ["--model", "yolov8", "--data", str(tmp_path / "nowhere")]) == 1
    assert "no prepared dataset; run `make folds DATA=" in capsys.readouterr().err
