"""One source of settings (issue 19): after make all every later command uses the run's tuned ensemble and
says which file first; no make variable is dropped; runs on other folds are trained again; make clean
keeps trained runs."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from cytocore import config as kit_config
from cytocore import lastrun, makevars, paths
from cytocore.io import ConfigError

pytestmark = pytest.mark.unit

ENSEMBLE = {"members": [{"model": "yolov8"}, {"model": "yolo11"}], "tta": ["identity"], "device": "cpu",
            "classifier": {"members": [{"model": "cls"}], "weight": 0.3, "tta": False, "full_weight": 0.25}}


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    monkeypatch.delenv(makevars.ENV, raising=False)
    return tmp_path / "work"


def prepared(work: Path, tmp_path: Path, dataset_id: str = "data-0123abcd_k2_s0") -> SimpleNamespace:
    """A data folder and a hand-made prepared dataset of it (no source record: not checked for changes)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    root = paths.dataset_root(dataset_id)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"data": str(data.resolve()), "images_dir": str(data / "images"), "k": 2, "seed": 0}
    (root / "meta.json").write_text(json.dumps(meta))
    folds_table(root, [0, 1, 0, 1])
    return SimpleNamespace(data=data, id=dataset_id, root=root, logs=paths.logs_dir(dataset_id))


def folds_table(root: Path, folds: list[int]) -> None:
    pd.DataFrame({"NAME": [f"im{i}.jpg" for i in range(len(folds))], "width": 100, "height": 100,
                  "fold": folds, "group": range(len(folds))}).to_csv(root / "images.csv", index=False)


def write_ensemble(path: Path, **changes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**ENSEMBLE, **changes}))
    return path


# ---- cytocore.lastrun: the run's tuned ensemble by default ----

def test_the_last_runs_tuned_ensemble_is_the_default_and_given_wins(work, tmp_path):
    d = prepared(work, tmp_path)
    assert lastrun.ensemble(d.data).path == paths.CONFIGS / "ensemble.yaml"  # no run yet
    write_ensemble(d.logs / lastrun.ENSEMBLE)
    assert lastrun.ensemble(d.data).path == d.logs / "ensemble.yaml"
    write_ensemble(d.logs / lastrun.TUNED)
    choice = lastrun.ensemble(d.data)
    assert choice.path == d.logs / "tuned.yaml" and choice.dataset == d.id
    assert choice.line().startswith(f"ensemble settings: {d.logs / 'tuned.yaml'} (tuned by the last make all "
                                    f"on {d.id}") and "ENSEMBLE= chooses another" in choice.line()
    assert lastrun.ensemble(d.data, tuned=False).path == d.logs / "ensemble.yaml"  # what tuning starts from
    assert lastrun.ensemble(d.data, given=Path("mine.yaml")).path == Path("mine.yaml")
    assert lastrun.ensemble(d.data, k=5).path == paths.CONFIGS / "ensemble.yaml"  # no such dataset
    assert lastrun.ds_keys(["k=3", "device=cuda", "seed=7"]) == (3, 7)


def test_make_submission_and_infer_use_the_runs_tuned_ensemble_with_device_and_args(work, tmp_path,
                                                                                     monkeypatch, capsys):
    from infer import __main__ as infer_main
    from infer import ensemble
    from submit import __main__ as submit_main
    from submit import make

    d = prepared(work, tmp_path)
    write_ensemble(d.logs / "tuned.yaml", iou_thr=0.42)
    seen = {}
    monkeypatch.setattr(ensemble, "run", lambda cfg, data, force: seen.update(cfg=cfg, sub=False))
    monkeypatch.setattr(make, "run",
                        lambda cfg, data, out, force, calibration=None: seen.update(cfg=cfg, sub=True))
    assert submit_main.main(["--data", str(d.data), "device=cuda", "batch=3"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("ensemble settings:") and str(d.logs / "tuned.yaml") in first
    cfg = seen["cfg"]
    assert cfg.iou_thr == 0.42 and cfg.device == "cuda" and cfg.batch == 3 and seen["sub"]
    other = write_ensemble(tmp_path / "other.yaml", iou_thr=0.61)
    assert infer_main.main(["--config", str(other), "--data", str(d.data)]) == 0
    assert seen["cfg"].iou_thr == 0.61 and "(given;" in capsys.readouterr().out.splitlines()[0]


def test_make_tune_ensemble_tunes_the_runs_untuned_ensemble_into_its_tuned_yaml(work, tmp_path, monkeypatch,
                                                                                capsys):
    from infer import tune

    d = prepared(work, tmp_path)
    write_ensemble(d.logs / "ensemble.yaml", iou_thr=0.5)
    write_ensemble(d.logs / "tuned.yaml", iou_thr=0.7, members=[{"model": "yolov8"}])  # yolo11 tuned to 0
    seen = {}
    monkeypatch.setattr(tune, "run", lambda cfg, data, out: seen.update(cfg=cfg, out=out))
    assert tune.main(["--data", str(d.data), "device=cuda"]) == 0
    assert [m.model for m in seen["cfg"].member_list()] == ["yolov8", "yolo11"]  # both members again
    assert seen["cfg"].device == "cuda" and seen["out"] == d.logs / "tuned.yaml"
    assert str(d.logs / "ensemble.yaml") in capsys.readouterr().out.splitlines()[0]


def test_make_report_uses_the_runs_tuned_ensemble_and_passes_overrides(work, tmp_path, monkeypatch, capsys):
    import pipeline.report
    from pipeline.report import __main__ as report_main

    d = prepared(work, tmp_path)
    write_ensemble(d.logs / "tuned.yaml")
    seen = {}

    def fake_build(data, k, seed, config, submission, out, classifier, n_boot, overrides):
        seen.update(config=config, overrides=overrides)
        return tmp_path / "page.html"

    monkeypatch.setattr(pipeline.report, "build_report", fake_build)
    assert report_main.main(["--data", str(d.data), "device=cuda"]) == 0
    assert seen == {"config": d.logs / "tuned.yaml", "overrides": ["device=cuda"]}
    assert str(d.logs / "tuned.yaml") in capsys.readouterr().out.splitlines()[0]


def test_the_report_header_names_the_resolved_k_and_seed(work, tmp_path):
    from pipeline.report import build_report

    d = prepared(work, tmp_path)
    pd.DataFrame(columns=["NAME", "x1", "y1", "x2", "y2", "class", "width", "height"]).to_csv(
        d.root / "boxes.csv", index=False)
    write_ensemble(d.logs / "tuned.yaml")
    page = build_report(d.data, out=tmp_path / "page.html", classifier=False, n_boot=10).read_text()
    assert "k=2 seed=0" in page and "k=None" not in page and str(d.logs / "tuned.yaml") in page


def test_cls_report_takes_its_settings_from_the_runs_ensemble(work, tmp_path, capsys):
    from infer import cls_report

    d = prepared(work, tmp_path)
    tuned = {**ENSEMBLE["classifier"], "members": [{"model": "cls", "weight": 0.7},
                                                    {"model": "cls", "name": "cls_b", "weight": 0.3}]}
    write_ensemble(d.logs / "tuned.yaml", classifier=tuned)
    args = SimpleNamespace(config=None, data=d.data, k=None, seed=None, detector=None, classifier=None,
                           weight=None, full_weight=None, device=None, no_tta=False,
                           overrides=["device=cuda"])
    assert cls_report.settings(args) == ("yolov8", ["cls", "cls_b"], 0.3, 0.25, "cuda", False,
                                         {"cls": 0.7, "cls_b": 0.3})
    assert "tuned.yaml" in capsys.readouterr().out
    args.detector, args.weight, args.device, args.classifier = "gt", 0.8, "cpu", ["cls_b", "other"]
    assert cls_report.settings(args) == ("gt", ["cls_b", "other"], 0.8, 0.25, "cpu", False,
                                         {"cls_b": 0.3, "other": 1.0})


def test_make_score_names_the_truth_variable_and_takes_device_only(work, tmp_path, monkeypatch, capsys):
    from submit import score

    with pytest.raises(ConfigError, match=r"needs the truth: --truth truth\.csv"):
        score.main(["--submission", "x.csv"])
    monkeypatch.setenv(makevars.ENV, "SUB")
    with pytest.raises(ConfigError, match=r"needs the truth: TRUTH=truth\.csv"):
        score.main(["--submission", "x.csv"])
    makevars.scoring_overrides(["device=cuda"], "make score")
    assert "device=cuda not needed" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown setting.*iou_thr"):
        makevars.scoring_overrides(["iou_thr=0.5"], "make score")


# ---- cytocore.makevars: no variable dropped ----

def test_lower_case_and_unused_variables_are_refused_with_the_right_spelling():
    env = {"imgsz": "640", "lr": "0.01", "foo": "1", "EPOCHS": "3", "CYTOKIT_WORK": "w", "DEVICE": "cuda"}
    keys = {"imgsz", "lr", "epochs"}
    assert makevars.check(["imgsz"], env, ["train"], keys) == [
        "make train: imgsz=640 is not a make variable; use IMGSZ=640"]
    assert makevars.check(["lr"], env, ["train"], keys) == [
        'make train: lr=0.01 is not a make variable; use ARGS="lr=0.01"']
    assert "neither a make variable nor a setting" in makevars.check(["foo"], env, ["train"], keys)[0]
    assert makevars.check(["EPOCHS"], env, ["submission"], keys) == [
        "make submission: EPOCHS= is not used by make submission (only by make all, make train)"]
    assert makevars.check(["EPOCHS", "DEVICE", "CYTOKIT_WORK"], env, ["all"], keys) == []
    assert makevars.check(["EPOCHS"], env, ["folds", "train"], keys) == []  # one of the goals uses it
    assert makevars.check(["DEVICE"], env, ["folds"], keys)  # folds has no device: refused, not dropped
    for target in ("infer", "submission", "tune-ensemble", "report", "score", "cls-report", "train", "all"):
        assert makevars.check(["DEVICE", "ARGS"], env, [target], keys) == [], target
    assert "lr" in makevars.setting_keys() and "iou_thr" in makevars.setting_keys()


def test_messages_spell_make_variables_under_make(monkeypatch, tmp_path):
    from train import runs

    monkeypatch.delenv(makevars.ENV, raising=False)
    assert makevars.spell("--force") == "--force"
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="add --resume to continue it or --force"):
        runs.prepare(run)
    monkeypatch.setenv(makevars.ENV, "")
    assert makevars.spell("--force") == "FORCE=1" and makevars.setting("--truth", "t.csv") == "TRUTH=t.csv"
    with pytest.raises(FileExistsError, match="add RESUME=1 to continue it or FORCE=1"):
        runs.prepare(run)


def test_make_all_settings_reach_every_member_and_imgsz_the_detectors_only():
    from pipeline import recipe as rc
    from pipeline.__main__ import member_settings

    recipe = rc.load(paths.CONFIGS / "recipe.yaml")
    line = member_settings(recipe, ["epochs=3", "device=cpu"], ["imgsz=640"])
    assert "every member: epochs=3 device=cpu" in line and "detectors only: imgsz=640" in line
    for m in recipe.detector_list():
        given = kit_config.parse_overrides(m.overrides)
        assert (given["epochs"], given["device"], given["imgsz"]) == (3, "cpu", 640)
    for c in recipe.classifier_list():
        given = kit_config.parse_overrides(c.overrides)
        assert given["epochs"] == 3 and given["imgsz"] == 224  # a classifier keeps its crop size
    assert recipe.ensemble["device"] == "cpu"
    assert member_settings(rc.load(paths.CONFIGS / "recipe.yaml"), [], []) is None


# ---- stale runs after new folds ----

def test_a_finished_run_on_other_folds_is_trained_again(work, tmp_path):
    from pipeline import recipe as rc
    from pipeline import run as orch
    from train import runs

    d = prepared(work, tmp_path)
    ds = SimpleNamespace(id=d.id, root=d.root, k=2, seed=0, data=d.data,
                         run_dir=lambda m, f: paths.run_dir(d.id, m, f),
                         preds_dir=lambda m, f: paths.preds_dir(d.id, m, f))
    recipe = rc.RecipeConfig(k=2, detectors=[{"model": "yolov8", "folds": [0]}])
    run = ds.run_dir("yolov8", 0)
    run.mkdir(parents=True)
    (run / "done.json").write_text(json.dumps(runs.folds_record(d.id, d.root)))
    oof = ds.preds_dir("yolov8", 0) / "oof.parquet"
    oof.parent.mkdir(parents=True)
    oof.write_text("")
    lines: list[str] = []
    assert orch.plan(recipe, ds, lines.append) == ([], ["yolov8 fold 0"]) and lines == []  # same folds
    folds_table(d.root, [1, 0, 0, 1])  # make folds FORCE=1 with other settings
    jobs, skipped = orch.plan(recipe, ds, lines.append)
    assert skipped == [] and [j.name for j in jobs] == ["yolov8 fold 0"] and "--force" in jobs[0].argv
    assert len(lines) == 1 and lines[0].startswith("  retrain yolov8 fold 0: trained on other folds")
    assert runs.other_folds(run, d.root) and runs.folds_digest(tmp_path / "none") is None
    (run / "done.json").write_text("{}")  # a run from before runs recorded their folds: kept
    assert runs.other_folds(run, d.root) is None


# ---- make clean keeps what took time ----

def test_make_clean_removes_caches_only_and_clean_runs_asks_first(work, tmp_path, monkeypatch, capsys):
    from cytocore import cleanup

    keep = [work / "runs" / "d" / "yolov8" / "fold0" / "done.json", work / "preds" / "d" / "x.parquet",
            work / "logs" / "d" / "tuned.yaml", work / "demo" / "runs" / "d" / "m" / "fold0" / "best.pt"]
    gone = [work / "cache" / "x" / "files.csv", work / "config" / "ultralytics" / "s.json",
            work / "demo" / "cache" / "f.csv", work / "reports" / "pages" / "d_cache" / "c.npy",
            work / "preds" / "d" / ".oof.parquet.tmp"]
    repo = tmp_path / "repo"
    pyc = [repo / "pkg" / "__pycache__" / "m.pyc", repo / ".venv" / "x" / "__pycache__" / "y"]
    for p in [*keep, *gone, *pyc]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    found = set(cleanup.cache_paths(work, repo))
    assert {work / "cache", work / "config", work / "demo" / "cache", work / "reports" / "pages" / "d_cache",
            work / "preds" / "d" / ".oof.parquet.tmp", repo / "pkg" / "__pycache__"} == found
    for p in found:
        cleanup.remove(p)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)

    subs = tmp_path / "submissions"
    (subs / "submission.csv").parent.mkdir()
    (subs / "submission.csv").write_text("x")
    monkeypatch.setattr(paths, "submissions_dir", lambda: subs)
    assert cleanup.main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "would delete" in out and str(work / "runs") in out and "2 finished run(s)" not in out
    assert "1 finished run(s)" in out and "--confirm" in out and all(p.exists() for p in keep)
    assert cleanup.main(["runs", "--confirm"]) == 0
    assert not any(p.exists() for p in keep) and not subs.exists()


# ---- the Makefile (make -n starts a process) ----

def dry(*args: str) -> str:
    return subprocess.run(["make", "-n", "-s", "-C", str(paths.ROOT), "-o", ".venv/.installed", *args],
                          capture_output=True, text=True, check=True).stdout


def command(out: str, module: str) -> list[str]:
    """The argv of the ``python -m module`` line of a dry run."""
    line = next(x for x in out.splitlines() if f" -m {module} " in x + " ")
    return shlex.split(line)[shlex.split(line).index(module) + 1:]


@pytest.mark.smoke
def test_make_train_puts_flags_before_settings_and_quotes_paths():
    from train.__main__ import parse_args

    argv = command(dry("train", "EPOCHS=1", "RESUME=1", "ARGS=workers=0", "DATA=/tmp/my data é"), "train")
    args = parse_args(argv)
    assert args.resume and args.overrides == ["epochs=1", "workers=0"] and str(args.data) == "/tmp/my data é"
    assert command(dry("folds", "DATA=/tmp/my data é"), "prepare.folds")[:2] == ["--data", "/tmp/my data é"]


@pytest.mark.smoke
def test_every_later_command_gets_device_and_args_and_no_default_ensemble():
    for target, module in (("infer", "infer"), ("submission", "submit"), ("tune-ensemble", "infer.tune"),
                           ("report", "pipeline.report"), ("cls-report", "infer.cls_report")):
        argv = command(dry(target, "DEVICE=cuda", "ARGS=batch=4"), module)
        assert "--config" not in argv and argv[-2:] == ["device=cuda", "batch=4"], target
        assert command(dry(target, "ENSEMBLE=my ens.yaml"), module)[:2] == ["--config", "my ens.yaml"]
    assert command(dry("score", "DEVICE=cuda"), "submit.oof")[-1] == "device=cuda"
    assert "--truth" not in command(dry("score", "SUB=x.csv"), "submit.score")
    argv = command(dry("all", "EPOCHS=3", "IMGSZ=640", "BATCH=8", "DEVICE=cpu", "WEIGHTS=none"), "pipeline")
    for pair in (["--member", "epochs=3"], ["--member", "batch=8"], ["--member", "device=cpu"],
                 ["--member", "pretrained=none"], ["--detector", "imgsz=640"]):
        assert any(argv[i:i + 2] == pair for i in range(len(argv))), pair
    assert "rm -rf" not in dry("clean")
    assert "cytocore.cleanup runs --confirm" in dry("clean-runs", "CONFIRM=1")


@pytest.mark.smoke
def test_a_lower_case_make_variable_is_refused_before_anything_runs():
    proc = subprocess.run(["make", "-s", "-C", str(paths.ROOT), "-o", ".venv/.installed", "train",
                           "imgsz=640", "epochs=3"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "use IMGSZ=640" in proc.stderr and "use EPOCHS=3" in proc.stderr


@pytest.mark.smoke
def test_after_make_demo_the_later_commands_use_the_demos_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CYTOKIT_WORK"}  # a user's shell: no work folder set

    def dry_in(folder: Path, *args: str) -> str:
        return subprocess.run(["make", "-n", "-s", "-C", str(folder), "-f", str(paths.ROOT / "Makefile"),
                               "-o", ".venv/.installed", *args], capture_output=True, text=True, check=True,
                              env=env).stdout

    assert "--data 'data/raw'" in dry_in(tmp_path, "report")  # no demo run: the default data
    report = tmp_path / "work" / "demo" / "logs" / "demo-1_k3_s42" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text("{}")
    out = dry_in(tmp_path, "report")
    assert "using make demo's run" in out and "--data 'data/demo'" in out
    assert "--data 'mine'" in dry_in(tmp_path, "report", "DATA=mine")  # DATA= wins
    assert "--data 'data/raw'" in dry_in(tmp_path, "train")  # training never switches


def test_make_train_after_make_all_starts_from_the_runs_member_settings(work, tmp_path, capsys):
    from train.__main__ import parse_args, recipe_overrides

    d = prepared(work, tmp_path)
    d.logs.mkdir(parents=True)
    (d.logs / "recipe.yaml").write_text(yaml.safe_dump({
        "k": 2, "detectors": [{"model": "yolov8", "overrides": ["size=s", "imgsz=512"]}],
        "classifiers": [{"model": "cls", "overrides": ["imgsz=224"]}]}))
    def given(*argv: str) -> list[str]:
        return recipe_overrides(parse_args(["--data", str(d.data), *argv]))

    assert given("--model", "yolov8", "epochs=3") == ["size=s", "imgsz=512"]  # then the command line's
    assert capsys.readouterr().out.startswith(f"yolov8 settings: {d.logs / 'recipe.yaml'} (resolved by the "
                                              "last make all")
    assert given("--model", "cls") == ["imgsz=224"]
    assert given("--model", "yolo11") == []  # not a member
    assert given("--model", "yolov8", "--recipe", "none") == []
    other = tmp_path / "r.yaml"
    other.write_text(yaml.safe_dump({"detectors": [{"model": "yolov8", "overrides": ["size=m"]}]}))
    assert given("--model", "yolov8", "--recipe", str(other)) == ["size=m"]
