"""make all: the job runner (parallel, threads split, failures contained), the recipe, the orchestrator
on a tiny synthetic set (a finished member skipped, an interrupted one resumed, a failing one reported)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from cytocore import config as kit_config
from cytocore import dataset, paths
from infer.config import EnsembleConfig
from pipeline import recipe as rc
from pipeline import run as orch
from train import parallel

pytestmark = pytest.mark.unit

# A fake job: records when it ran and the environment it got, then exits with the given status.
FAKE = ("import json, os, sys, time; t0 = time.time(); print('working'); time.sleep(float(sys.argv[2])); "
        "json.dump({'start': t0, 'end': time.time(), 'omp': os.environ.get('OMP_NUM_THREADS'), "
        "'ours': os.environ.get('CYTOKIT_THREADS'), 'gpu': os.environ.get('CUDA_VISIBLE_DEVICES'), "
        "'wait': os.environ.get('OMP_WAIT_POLICY')}, "
        "open(sys.argv[1], 'w')); print(sys.argv[4]); sys.exit(int(sys.argv[3]))")


def fake_job(tmp: Path, name: str, sleep: float = 0.0, code: int = 0, after: tuple[str, ...] = (),
             message: str = "fine") -> parallel.Job:
    argv = [sys.executable, "-c", FAKE, str(tmp / f"{name}.json"), str(sleep), str(code), message]
    return parallel.Job(name, argv, tmp / "logs" / f"{name}.log", after)


def ran(tmp: Path, name: str) -> dict:
    return json.loads((tmp / f"{name}.json").read_text())


def test_threads_are_split_between_jobs():
    assert parallel.threads_per_job(1, n_cores=2) == 0  # one job: the trainer's own choice
    assert parallel.threads_per_job(1, threads=2, n_cores=2) == 2
    assert parallel.threads_per_job(2, n_cores=2) == 1
    assert parallel.threads_per_job(4, n_cores=16) == 4
    assert parallel.threads_per_job(3, n_cores=2) == 1  # never 0
    assert parallel.threads_per_job(2, threads=3, n_cores=2) == 3  # explicit wins


@pytest.mark.smoke  # a subprocess or a real search: seconds, not the unit tier
def test_two_jobs_run_at_once_with_their_share_of_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    jobs = [fake_job(tmp_path, "a", sleep=1.5), fake_job(tmp_path, "b", sleep=1.5)]
    lines: list[str] = []
    out = parallel.run_jobs(jobs, n=2, threads=3, gpus=[], echo=lines.append, heartbeat=0.5)
    assert any(line.startswith("  [0/2 jobs done") for line in lines)  # progress while they run
    assert any(line == "    a: working" for line in lines)  # no epoch yet: the log's last line
    assert [o.status for o in out] == ["ok", "ok"]
    a, b = ran(tmp_path, "a"), ran(tmp_path, "b")
    assert a["start"] < b["end"] and b["start"] < a["end"]  # they overlapped
    assert a["omp"] == b["omp"] == a["ours"] == "3" and a["gpu"] is None
    assert a["wait"] == "PASSIVE"  # several threads: no spinning against other load
    assert all(o.seconds >= 1.5 and o.cpu_seconds >= 0 for o in out)


@pytest.mark.smoke  # a subprocess or a real search: seconds, not the unit tier
def test_one_job_at_a_time_keeps_the_trainers_threads_and_gpus_are_dealt_per_slot(tmp_path):
    out = parallel.run_jobs([fake_job(tmp_path, "a", 0.5), fake_job(tmp_path, "b", 0.5)], n=1, gpus=[],
                            echo=lambda s: None)
    a, b = ran(tmp_path, "a"), ran(tmp_path, "b")
    assert a["end"] <= b["start"]
    assert a["omp"] == os.environ.get("OMP_NUM_THREADS") and a["ours"] == os.environ.get("CYTOKIT_THREADS")
    assert [o.status for o in out] == ["ok", "ok"]
    parallel.run_jobs([fake_job(tmp_path, "c", 0.5), fake_job(tmp_path, "d", 0.5)], n=2, threads=1,
                      gpus=["3", "5"], echo=lambda s: None)
    assert {ran(tmp_path, "c")["gpu"], ran(tmp_path, "d")["gpu"]} == {"3", "5"}
    assert ran(tmp_path, "c")["wait"] == os.environ.get("OMP_WAIT_POLICY")  # one thread: left alone


@pytest.mark.smoke  # a subprocess or a real search: seconds, not the unit tier
def test_a_failing_job_is_reported_with_its_log_and_the_others_go_on(tmp_path):
    jobs = [fake_job(tmp_path, "det", 0.2, code=3, message="ConfigError: bogus key"),
            fake_job(tmp_path, "other", 0.2),
            fake_job(tmp_path, "cls", after=("det",))]
    lines: list[str] = []
    out = {o.name: o for o in parallel.run_jobs(jobs, n=2, gpus=[], echo=lines.append)}
    assert out["det"].status == "failed" and out["det"].returncode == 3
    assert out["det"].last_line == "ConfigError: bogus key"
    assert "python" in out["det"].log.read_text() and "working" in out["det"].log.read_text()
    assert out["other"].status == "ok" and out["cls"].status == "ok"
    assert ran(tmp_path, "cls")["start"] >= ran(tmp_path, "det")["end"]  # waited for its detector
    failed = [line for line in lines if "FAILED det" in line]
    assert len(failed) == 1 and "exit 3" in failed[0] and str(out["det"].log) in failed[0]


@pytest.mark.smoke  # starts a process
def test_sigterm_to_the_runner_stops_its_jobs(tmp_path):
    """A preempted `make all` leaves no training job behind (they resume on the next run)."""
    import signal
    import time

    pid_file = tmp_path / "job.pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    job = [sys.executable, "-c", code]
    runner = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from train import parallel; "
        f"parallel.run_jobs([parallel.Job('long', {job!r}, Path({str(tmp_path / 'long.log')!r}))], "
        "gpus=[])")],
        cwd=paths.ROOT)
    deadline = time.time() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline and runner.poll() is None, "the job never started"
        time.sleep(0.1)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_runner_refuses_bad_job_lists(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        parallel.run_jobs([fake_job(tmp_path, "a"), fake_job(tmp_path, "a")], echo=lambda s: None)
    with pytest.raises(ValueError, match="unknown job"):
        parallel.run_jobs([fake_job(tmp_path, "a", after=("ghost",))], echo=lambda s: None)


def test_apply_threads_sets_torch_and_ultralytics(monkeypatch):
    import torch
    import ultralytics.utils.torch_utils as tu

    before = torch.get_num_threads()
    monkeypatch.setattr(tu, "NUM_THREADS", tu.NUM_THREADS)
    monkeypatch.setenv(parallel.THREADS_ENV, "1")
    try:
        assert parallel.apply_threads() == 1
        assert torch.get_num_threads() == 1 and tu.NUM_THREADS == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.delenv(parallel.THREADS_ENV)
    assert parallel.apply_threads() is None


def fake_ds(tmp_path: Path, k: int = 2) -> SimpleNamespace:
    return SimpleNamespace(id="d_k2_s1", k=k, seed=1, data=tmp_path / "data", root=tmp_path / "dataset",
                           run_dir=lambda m, f: tmp_path / "runs" / m / f"fold{f}",
                           preds_dir=lambda m, f: tmp_path / "preds" / m / f"fold{f}")


@pytest.mark.parametrize("name", ["recipe.yaml", "demo.yaml", "bccd.yaml"])
def test_shipped_recipes_give_valid_ensembles_with_the_classifier(name, tmp_path):
    recipe = rc.load(paths.CONFIGS / name)
    ds = fake_ds(tmp_path, recipe.k)
    dets = {m.model: m.folds for m in recipe.detector_list()}
    clss = {c.model: c.folds for c in recipe.classifier_list()}
    assert clss, f"{name} trains no crop classifier"
    for c in recipe.classifier_list():
        assert rc.val_detector(c) in dets  # trained after a detector of the recipe
    ens = kit_config.from_dict(EnsembleConfig, rc.ensemble_values(recipe, ds, dets, clss))
    assert [m.model for m in ens.member_list()] == list(dets)
    section = ens.classifier_section()
    assert section is not None
    assert {(m.model, tuple(m.folds)) for m in section.members} == {(c, tuple(f)) for c, f in clss.items()}


def test_recipe_errors_name_the_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"k": 2, "detectors": [{"model": "yolov8"}]}))
    assert rc.load(path, ["jobs=3"]).jobs == 3
    with pytest.raises(kit_config.ConfigError, match="valid keys"):
        rc.load(path, ["jobz=3"])
    for bad, match in [({"detectors": []}, "no model"),
                       ({"detectors": [{"model": "yolov8", "folds": [2]}]}, "out of range"),
                       ({"detectors": [{"folds": [0]}]}, "needs a model"),
                       ({"detectors": [{"model": "yolov99"}]}, "valid models: yolov5"),
                       ({"ensemble": {"members": []}}, "comes from the recipe"),
                       ({"ensemble": {"classifier": {"members": []}}}, "unknown key"),
                       ({"jobs": 0}, "jobs >= 1")]:
        path.write_text(yaml.safe_dump({"k": 2, "detectors": [{"model": "yolov8"}], **bad}))
        with pytest.raises(kit_config.ConfigError, match=match):
            rc.load(path).detector_list()


def test_plan_skips_finished_runs_and_orders_classifiers_after_their_detector(tmp_path):
    recipe = rc.RecipeConfig(k=2, detectors=[{"model": "yolov8"}, {"model": "yolo11", "folds": [1]}],
                             classifiers=[{"model": "cls", "overrides": ["val_detector=yolov8"]}])
    ds = fake_ds(tmp_path)
    for path in (ds.run_dir("yolov8", 0) / "done.json", ds.preds_dir("yolov8", 0) / "oof.parquet",
                 ds.run_dir("yolo11", 1) / "done.json"):  # yolo11 fold 1: done but its OOF table is gone
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    jobs, skipped = orch.plan(recipe, ds)
    assert skipped == ["yolov8 fold 0"]
    by_name = {j.name: j for j in jobs}
    assert list(by_name) == ["yolov8 fold 1", "yolo11 fold 1", "cls fold 0", "cls fold 1"]
    assert by_name["cls fold 0"].after == () and by_name["cls fold 1"].after == ("yolov8 fold 1",)
    argv = by_name["yolov8 fold 1"].argv
    assert argv[1:5] == ["-m", "train", "--model", "yolov8"] and "--resume" not in argv  # a new run
    assert "--resume" in by_name["yolo11 fold 1"].argv  # its folder holds an unfinished run
    assert by_name["yolov8 fold 1"].log.name == "yolov8_fold1.log"


def test_a_finished_run_with_other_settings_is_trained_again(tmp_path):
    from train import registry

    recipe = rc.RecipeConfig(k=2, detectors=[{"model": "yolov8", "folds": [0], "overrides": ["epochs=20"]}])
    ds = fake_ds(tmp_path)
    run = ds.run_dir("yolov8", 0)
    for path in (run / "done.json", ds.preds_dir("yolov8", 0) / "oof.parquet"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    kit_config.save(registry.load_config("yolov8", ["epochs=14", "device=cpu"]), run / "config.yaml")
    lines = []
    jobs, skipped = orch.plan(recipe, ds, lines.append)
    assert skipped == [] and lines == ["  retrain yolov8 fold 0: its settings differ from the recipe's "
                                       "(epochs 14 -> 20)"]  # device is not a setting of what it learns
    assert "--force" in jobs[0].argv and "--resume" not in jobs[0].argv
    kit_config.save(registry.load_config("yolov8", ["epochs=20", "device=cpu"]), run / "config.yaml")
    assert orch.plan(recipe, ds, lines.append) == ([], ["yolov8 fold 0"])


@pytest.mark.smoke  # starts a process
def test_make_targets_reach_the_orchestrator_and_the_runner():
    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", "-C", str(paths.ROOT), *args], capture_output=True, text=True,
                              check=True).stdout

    out = dry("all", "DATA=d", "JOBS=3", "K=4")
    assert "-m pipeline --recipe 'configs/recipe.yaml' --data 'd' --jobs 3" in out and "k=4" in out
    assert "--jobs 2" in dry("train", "FOLD=all", "JOBS=2") and "--jobs" not in dry("train", "FOLD=all")
    assert "-m pipeline.demo --data 'data/demo' --jobs 1" in dry("demo", "JOBS=1")
    synth = rc.load(paths.CONFIGS / "demo.yaml").synth_settings()  # make demo-data makes the demo's data
    assert f"--images {synth.images} --seed 42" in dry("demo-data")


# ---- the orchestrator on a tiny synthetic set, real training jobs ----

TINY_YOLO = ["epochs=2", "imgsz=64", "batch=4", "workers=0", "plots=false", "warmup_epochs=0", "mosaic=0.0",
             "device=cpu"]
TINY_CLS = ["backbone=resnet10t", "imgsz=32", "epochs=1", "batch=16", "workers=0", "device=cpu",
            "val_detector=yolov8"]


@pytest.fixture
def tiny_data(tmp_path, monkeypatch) -> Path:
    """16 synthetic images (4 of them test) with folds k=2, in a work folder of the test's own."""
    from prepare import folds
    from prepare.synth import make as synth

    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    data = tmp_path / "data"
    assert synth.main(["--out", str(data), "--images", "16", "--seed", "3", "--test-fraction", "0.25",
                       "--workers", "1"]) == 0
    assert folds.main(["--data", str(data), "--k", "2", "--seed", "0"]) == 0
    return data


def interrupt_after_first_epoch(data: Path, monkeypatch) -> None:
    """Train yolov8 fold 0 in this process and stop it after its first epoch (as a killed job would)."""
    from train.__main__ import main as train_main
    from train.yolo import trainer as ultra_trainer

    original = ultra_trainer.EpochEnd.__call__

    def stop_after_first(self, trainer):
        original(self, trainer)
        raise KeyboardInterrupt("interrupted by the test after epoch 1")

    with monkeypatch.context() as mp:
        mp.setattr(ultra_trainer.EpochEnd, "__call__", stop_after_first)
        with pytest.raises(KeyboardInterrupt):
            train_main(["--model", "yolov8", "--fold", "0", "--data", str(data), *TINY_YOLO])


def tiny_recipe(path: Path) -> Path:
    """yolov8 on both folds, a yolo11 that cannot start (an unknown key), the crop classifier."""
    path.write_text(yaml.safe_dump({
        "k": 2, "seed": 0, "jobs": 2,
        "detectors": [{"model": "yolov8", "overrides": TINY_YOLO},
                      {"model": "yolo11", "folds": [1], "overrides": TINY_YOLO + ["bogus=1"]}],
        "classifiers": [{"model": "cls", "overrides": TINY_CLS}],
        "ensemble": {"tta": ["identity", "hflip"], "viz_images": 0,
                     "tune": {"weights": [1.0], "iou_thr": [0.55], "skip_box_thr": [0.001],
                              "conf_type": ["avg"], "fusion": ["wbf"], "rounds": 1}}}))
    return path


@pytest.mark.smoke
def test_make_all_resumes_reports_a_failure_and_skips_what_is_finished(tiny_data, tmp_path, monkeypatch,
                                                                         capsys):
    from pipeline.__main__ import main

    # the broken member must reach its job (the pre-flight would refuse its override: test_preflight.py)
    monkeypatch.setenv("CYTOKIT_PREFLIGHT", "off")
    data, recipe_path = tiny_data, tiny_recipe(tmp_path / "tiny.yaml")
    interrupt_after_first_epoch(data, monkeypatch)
    ds = dataset.resolve(data)
    run0 = ds.run_dir("yolov8", 0)
    (run0 / "marker").write_text("kept by --resume")
    first_epoch = pd.read_csv(run0 / "metrics.csv")
    argv = ["--recipe", str(recipe_path), "--data", str(data), "--out", str(tmp_path / "subs")]

    assert main(argv) == 1  # a member failed: exit status 1, but the submission is made
    out = capsys.readouterr().out
    report = json.loads(paths.run_report(ds.id).read_text())
    assert report["status"] == "failed" and Path(report["submission"]).exists()
    status = {r["name"]: r["status"] for r in report["train"]}
    assert status == {"yolov8 fold 0": "ok", "yolov8 fold 1": "ok", "yolo11 fold 1": "failed",
                      "cls fold 0": "ok", "cls fold 1": "ok"}
    (failure,) = report["failures"]
    log = paths.logs_dir(ds.id) / "yolo11_fold1.log"
    assert failure["log"] == str(log) and "bogus" in failure["last_line"] and "bogus" in log.read_text()
    assert f"yolo11 fold 1: exit 1: {failure['last_line']}" in out and f"log: {log}" in out
    assert "left out of the ensemble: yolo11 fold(s) 1" in out
    # resumed, not retrained: the folder was kept and epoch 1 is the interrupted run's own row
    assert (run0 / "marker").exists() and (run0 / "done.json").exists()
    metrics = pd.read_csv(run0 / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    pd.testing.assert_frame_equal(metrics.iloc[:1][first_epoch.columns], first_epoch)
    assert "--resume" in (paths.logs_dir(ds.id) / "yolov8_fold0.log").read_text()
    members = [r["member"] for r in report["test"]]
    assert members[-1] == "ensemble (submission)" and "yolov8 + classifier" in members
    assert members[-2] == "classifier on the true boxes (ceiling)"
    assert {"train", "tune out-of-fold", "submission", "validate"} <= set(report["steps"])
    tuned = kit_config.load(EnsembleConfig, Path(report["tuned"]))
    assert [m.model for m in tuned.member_list()] == ["yolov8"] and tuned.classifier_section() is not None

    logs_before = {p.name: p.read_text() for p in paths.logs_dir(ds.id).glob("*.log")}
    assert main(argv) == 1  # again: every finished member skipped, the broken one tried and reported again
    out = capsys.readouterr().out
    report = json.loads(paths.run_report(ds.id).read_text())
    skipped = {f"{m} fold {f}": "skipped" for m in ("yolov8", "cls") for f in (0, 1)}
    assert {r["name"]: r["status"] for r in report["train"]} == {**status, **skipped}
    assert "skip yolov8 fold 0: finished" in out
    logs_after = {p.name: p.read_text() for p in paths.logs_dir(ds.id).glob("*.log")}
    assert logs_after["yolov8_fold1.log"] == logs_before["yolov8_fold1.log"]  # no job was started
    assert logs_after["yolo11_fold1.log"].count("===") == 2


@pytest.mark.smoke
def test_train_jobs_flag_runs_the_folds_as_jobs(tiny_data, capsys, monkeypatch):
    from train.__main__ import main

    monkeypatch.setenv("CYTOKIT_PREFLIGHT", "off")  # the bad key must reach the jobs (pre-flight: refused)
    data = tiny_data
    assert main(["--model", "yolo11", "--fold", "all", "--data", str(data), "--jobs", "2", "bogus=1"]) == 1
    captured = capsys.readouterr()
    ds = dataset.resolve(data)
    for fold in (0, 1):
        log = paths.logs_dir(ds.id) / f"yolo11_fold{fold}.log"
        assert "unknown key(s) bogus" in log.read_text()
        assert f"FAILED yolo11 fold {fold}: override: unknown key(s) bogus" in captured.err
