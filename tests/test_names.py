"""Members have names: variants of one model coexist in a recipe (``cytocore.members``).

The recipe refuses a name listed twice, a name that is no safe folder name and a ``val_detector`` that
names no detector member; the name keys the run folder, the jobs and logs, the ensemble config's members,
the fusion weights and the tuned config; ``make all`` on a tiny set trains two named yolov8 members into
their own folders and fuses both.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import test_pipeline
import yaml

from cytocore import config as kit_config
from cytocore import dataset, lastrun, makevars, paths, predictions
from cytocore.config import ConfigError
from infer.config import EnsembleConfig, load_config
from pipeline import cluster
from pipeline import recipe as rc
from pipeline import run as orch
from train import parallel

pytestmark = pytest.mark.unit
fake_ds, TINY_YOLO = test_pipeline.fake_ds, test_pipeline.TINY_YOLO
tiny_data = test_pipeline.tiny_data  # the fixture: 16 synthetic images, k=2, a work folder of the test's own

S512 = {"name": "yolov8s_512", "model": "yolov8", "overrides": ["size=s", "imgsz=512"]}
M640 = {"name": "yolov8m_640", "model": "yolov8", "overrides": ["size=m", "imgsz=640"]}


def test_two_variants_of_one_model_are_two_members(tmp_path):
    from train.weights import needs

    recipe = rc.RecipeConfig(k=2, detectors=[S512, M640],
                             classifiers=[{"model": "cls", "overrides": ["val_detector=yolov8m_640"]}])
    dets, (cls,) = recipe.detector_list(), recipe.classifier_list()
    assert [(m.name, m.model) for m in dets] == [("yolov8s_512", "yolov8"), ("yolov8m_640", "yolov8")]
    assert (cls.name, cls.model, rc.val_detector(cls)) == ("cls", "cls", "yolov8m_640")  # default: its model
    ds = fake_ds(tmp_path)
    jobs, skipped = orch.plan(recipe, ds)
    by_name = {j.name: j for j in jobs}
    assert skipped == [] and list(by_name) == [f"{n} fold {f}" for n in ("yolov8s_512", "yolov8m_640", "cls")
                                               for f in (0, 1)]
    job = by_name["yolov8m_640 fold 1"]
    assert job.argv[3:7] == ["--model", "yolov8", "--name", "yolov8m_640"] and "size=m" in job.argv
    assert job.run_dir == ds.run_dir("yolov8m_640", 1) and job.log.name == "yolov8m_640_fold1.log"
    assert "--name" not in by_name["cls fold 0"].argv  # an unnamed member: the command line of today
    assert by_name["cls fold 1"].after == ("yolov8m_640 fold 1",)  # after the detector member it names
    assert cluster.job_name(job) == "cytokit-yolov8m_640-f1"
    # the ensemble config of the trained members: each entry carries its name (files) and model (adapter)
    values = rc.ensemble_values(recipe, ds, {"yolov8s_512": [0, 1], "yolov8m_640": [1]}, {"cls": [0]})
    assert [(m["name"], m["model"], m["folds"]) for m in values["members"]] == [
        ("yolov8s_512", "yolov8", [0, 1]), ("yolov8m_640", "yolov8", [1])]
    ens = kit_config.from_dict(EnsembleConfig, values)
    assert list(ens.fuse_params("wbf").weights) == ["yolov8s_512", "yolov8m_640"]
    # the pretrained file each variant starts from, named by its member
    assert [(n.member, n.file.name) for n in needs.needs(dets)] == [("yolov8s_512", "yolov8s.pt"),
                                                                    ("yolov8m_640", "yolov8m.pt")]


@pytest.mark.parametrize("detectors, classifiers, match", [
    ([{"model": "yolov8"}, {"model": "yolov8"}], [], "listed twice: yolov8 "),
    ([{"model": "yolov8"}, {"name": "yolov8", "model": "yolo11"}], [], "listed twice: yolov8 "),
    ([S512, {**M640, "name": "yolov8s_512"}], [], "listed twice: yolov8s_512 "),
    ([{**S512, "name": "cls"}], [{"model": "cls"}], "listed twice: cls "),
    ([{**S512, "name": "YOLO_big"}], [], "name 'YOLO_big' is not a safe folder name"),
    ([{**S512, "name": "runs/x"}], [], "name 'runs/x' is not a safe folder name"),
    ([{**S512, "name": "s 512"}], [], "name 's 512' is not a safe folder name"),
    ([S512, M640], [{"model": "cls", "overrides": ["val_detector=yolov8"]}],
     "val_detector=yolov8 is not a detector of the recipe; valid: yolov8s_512, yolov8m_640"),
])
def test_recipe_refuses_a_name_twice_a_bad_name_and_an_unknown_val_detector(tmp_path, detectors,
                                                                             classifiers, match):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"k": 2, "detectors": detectors, "classifiers": classifiers}))
    with pytest.raises(ConfigError, match=match) as err:
        rc.load(path)
    assert "\n" not in str(err.value)


def test_ensemble_config_round_trip_keeps_names_and_models(tmp_path):
    from infer import tune
    from infer.fuse import FuseParams
    from infer.oof_eval import Settings

    values = {"k": 2, "seed": 0, "members": [{**S512, "weight": 2.0}, M640],
              "classifier": {"members": [{"name": "cls_b0", "model": "cls", "folds": [1]}]}}
    path = tmp_path / "ensemble.yaml"
    path.write_text(yaml.safe_dump(kit_config.to_dict(kit_config.from_dict(EnsembleConfig, values))))
    cfg = load_config(path)
    assert [(m.name, m.model, m.weight) for m in cfg.member_list()] == [("yolov8s_512", "yolov8", 2.0),
                                                                       ("yolov8m_640", "yolov8", 1.0)]
    ds = fake_ds(tmp_path)
    assert cfg.member_list()[1].weights_path(ds, 0) == ds.run_dir("yolov8m_640", 0) / "best.pt"
    (c,) = cfg.classifier_section().members
    assert (c.name, c.model, c.weights_path(ds, 1)) == ("cls_b0", "cls", ds.run_dir("cls_b0", 1) / "best.pt")
    # tuning writes each member's weight under its name; a member tuned to 0 is left out by name
    best = Settings(FuseParams(iou_thr=0.55, weights={"yolov8s_512": 0.0, "yolov8m_640": 3.0}))
    tuned = tune.tuned_config(cfg, best, classifier=False)
    assert [(m["name"], m["model"], m["weight"]) for m in tuned["members"]] == [("yolov8m_640", "yolov8",
                                                                                3.0)]
    (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(tuned))
    assert [m.name for m in load_config(tmp_path / "tuned.yaml").member_list()] == ["yolov8m_640"]
    for members, match in [([S512, {**M640, "name": "yolov8s_512"}], "listed twice in members: yolov8s_512"),
                           ([{"model": "yolov8"}, {"model": "yolov8"}], "listed twice in members: yolov8"),
                           ([{**S512, "name": "A"}], "not a safe folder name")]:
        with pytest.raises(ConfigError, match=match):
            kit_config.from_dict(EnsembleConfig, {"members": members})
    unnamed = kit_config.from_dict(EnsembleConfig, {"members": [{"model": "yolov8"}]}).member_list()[0]
    assert unnamed.name == "yolov8" and unnamed.weights_path(ds, 1) == ds.run_dir("yolov8", 1) / "best.pt"


def test_make_train_name_picks_the_members_settings_of_the_last_recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"detectors": [S512, M640, {"model": "yolo11", "overrides": ["size=n"]}]}))
    assert lastrun.member_overrides(path, "yolov8", "yolov8m_640") == ["size=m", "imgsz=640"]
    assert lastrun.member_overrides(path, "yolo11") == ["size=n"]
    assert lastrun.member_overrides(path, "yolov8") is None  # no member is called yolov8
    with pytest.raises(ConfigError, match="member yolov8s_512 is model yolov8, not yolo11"):
        lastrun.member_overrides(path, "yolo11", "yolov8s_512")
    assert parallel.train_argv("yolov8", 0, Path("d"), 2, 0, name="yolov8")[3:6] == ["--model", "yolov8",
                                                                                    "--fold"]
    assert makevars.check(["NAME"], {"NAME": "x"}, ["train"]) == []
    assert makevars.check(["NAME"], {"NAME": "x"}, ["submission"]) == [
        "make submission: NAME= is not used by make submission (only by make train)"]


@pytest.mark.smoke  # make -n starts a process
def test_make_train_passes_name():
    out = subprocess.run(["make", "-n", "-C", str(paths.ROOT), "train", "MODEL=yolov8", "NAME=yolov8m_640"],
                         capture_output=True, text=True, check=True).stdout
    assert "-m train --model yolov8 --name yolov8m_640 --fold 0" in out
    assert "--name" not in subprocess.run(["make", "-n", "-C", str(paths.ROOT), "train"], capture_output=True,
                                          text=True, check=True).stdout


@pytest.mark.smoke
def test_make_all_trains_two_named_variants_into_their_own_folders_and_fuses_both(tiny_data, tmp_path,
                                                                                   monkeypatch, capsys):
    from pipeline.__main__ import main

    monkeypatch.setenv("CYTOKIT_PREFLIGHT", "off")  # no pretrained file in a test's work folder
    # 1 epoch from scratch scores its boxes ~1e-5: a lower threshold keeps some in every table
    tiny = [o for o in TINY_YOLO if not o.startswith(("epochs", "imgsz"))] + ["epochs=1", "pretrained=none",
                                                                                "conf=0.000001"]
    names = ["yolov8_a", "yolov8_b"]
    recipe = tmp_path / "variants.yaml"
    recipe.write_text(yaml.safe_dump({
        "k": 2, "seed": 0, "jobs": 2,
        "detectors": [{"name": n, "model": "yolov8", "folds": [0], "overrides": tiny + [f"imgsz={size}"]}
                      for n, size in zip(names, (64, 32))],
        "ensemble": {"tta": ["identity"], "viz_images": 0, "conf": 0.000001,
                     "tune": {"weights": [1.0], "iou_thr": [0.55], "skip_box_thr": [0.001],
                              "conf_type": ["avg"], "fusion": ["wbf"], "rounds": 1, "views": False}}}))
    assert main(["--recipe", str(recipe), "--data", str(tiny_data), "--out", str(tmp_path / "subs")]) == 0
    capsys.readouterr()
    ds = dataset.resolve(tiny_data)
    report = json.loads(paths.run_report(ds.id).read_text())
    assert {r["name"]: r["status"] for r in report["train"]} == {f"{n} fold 0": "ok" for n in names}
    assert not ds.run_dir("yolov8", 0).exists()  # no folder under the model's name
    for name, imgsz in zip(names, (64, 32)):
        run = ds.run_dir(name, 0)
        assert (run / "done.json").is_file() and (paths.logs_dir(ds.id) / f"{name}_fold0.log").is_file()
        assert yaml.safe_load((run / "config.yaml").read_text())["imgsz"] == imgsz  # each its own settings
        done = json.loads((run / "done.json").read_text())
        assert (done["name"], done["model"], done["oof"]) == (name, "yolov8", str(ds.preds_dir(name, 0)
                                                                                  / predictions.OOF_FILE))
        for table in (predictions.OOF_FILE, predictions.OOF_TTA_FILE, predictions.TEST_FILE):
            assert set(predictions.read(ds.preds_dir(name, 0) / table)["model"]) == {name}
    for config in (report["ensemble"], report["tuned"]):  # fused, then tuned: both members, by name
        members = load_config(Path(config)).member_list()
        assert [(m.name, m.model) for m in members] == [(n, "yolov8") for n in names]
    assert (ds.preds_dir("ensemble", "all") / predictions.TEST_FILE).is_file()
    assert Path(report["submission"]).is_file()
    assert set(names) <= {r["member"] for r in report["oof"]}  # the comparison table's rows
    assert {f"{n} (folds 0)" for n in names} <= {r["member"] for r in report["test"]}  # make score's table
