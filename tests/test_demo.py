"""make demo: its config, its private work folder, and (slow) the whole pipeline on a tiny setting."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml

from cytokit import config as kit_config
from cytokit import paths
from infer.config import EnsembleConfig
from pipeline import demo

pytestmark = pytest.mark.unit


def test_demo_config_gives_a_valid_ensemble():
    cfg = kit_config.load(demo.DemoConfig, paths.CONFIGS / "demo.yaml")
    members = cfg.members()
    assert [m["model"] for m in members] == [t["model"] for t in cfg.train]
    values = {**cfg.ensemble, "members": members, "k": cfg.k, "seed": cfg.seed}
    ens = kit_config.from_dict(EnsembleConfig, values)
    assert all(0 <= f < cfg.k for m in ens.member_list() for f in m.folds)
    with pytest.raises(kit_config.ConfigError, match="train\\[0\\]"):
        demo.DemoConfig(train=[{"folds": [0]}]).members()


def test_demo_work_dir_is_private_and_restored(tmp_path):
    before = os.environ.get("CYTOKIT_WORK")
    with demo.demo_work_dir(tmp_path / "demo"):
        assert paths.work_dir() == (tmp_path / "demo").resolve()
        expected = (tmp_path / "demo").resolve() / "runs" / "d_k2_s1" / "yolov8" / "fold0"
        assert paths.run_dir("d_k2_s1", "yolov8", 0) == expected
    assert os.environ.get("CYTOKIT_WORK") == before


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_tiny_setting(tmp_path):
    tiny = ["epochs=1", "imgsz=64", "batch=4", "workers=0", "device=cpu"]
    cfg_path = tmp_path / "demo.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "images": 40, "test_fraction": 0.3, "seed": 5, "k": 2, "workers": 1,
        "train": [{"model": "yolov8", "folds": [0, 1], "overrides": tiny + ["plots=false"]},
                  {"model": "yolo11", "folds": [0], "overrides": tiny + ["plots=false"]}],
        "ensemble": {"tta": ["identity", "hflip"], "viz_images": 2,
                     "tune": {"weights": [1.0], "iou_thr": [0.55], "skip_box_thr": [0.001],
                              "conf_type": ["avg"], "fusion": ["wbf", "agnostic"], "rounds": 1}},
    }))
    data = tmp_path / "data"
    assert demo.main(["--data", str(data), "--config", str(cfg_path)]) == 0
    report = json.loads(paths.pipeline_report(paths.demo_dir()).read_text())
    assert [r["member"] for r in report["oof"]] == ["yolov8", "yolov8 (no TTA)", "yolo11", "yolo11 (no TTA)",
                                                    "ensemble (tuned)"]
    assert report["total_s"] > 0
    assert "train yolov8 fold 1" in report["steps"] and "validate" in report["steps"]
    sub = pd.read_csv(report["submission"])
    assert len(sub) == len(pd.read_csv(data / "test.csv"))
    # the reported score is the submission's against test_labels.csv: 0.2 GIoU term + 0.8 F1 term
    from cytokit import tables
    from cytokit.metric import score

    again = score(tables.read(data / "test_labels.csv", "submission"), tables.read(report["submission"],
                                                                                   "submission"))
    assert (report["score"], report["giou_term"], report["f1_term"]) == pytest.approx(
        (again.total, again.giou_term, again.f1_term))
    assert report["score"] == pytest.approx(0.2 * report["giou_term"] + 0.8 * report["f1_term"])
    # and it is the score of the tuned ensemble the report names
    assert report["fusion"] == kit_config.load(EnsembleConfig, report["config"]).fusion


@pytest.mark.slow
def test_full_demo_scores_clearly_above_chance(tmp_path):
    """The real `make demo` settings (about 10 minutes on 2 idle cores)."""
    assert demo.main(["--data", str(tmp_path / "data")]) == 0
    report = json.loads(paths.pipeline_report(paths.demo_dir()).read_text())
    # chance: a full-image box of one class per image scores about 0.12 on these data
    assert report["score"] > 0.18 and report["giou_term"] > 0.8
