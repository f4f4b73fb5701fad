"""make all LAUNCHER=slurm (pipeline.cluster): settings, the sbatch parameters and dependencies of the
recipe's plan, the waiting runner against a fake SLURM, and two real jobs through submitit's local
executor (smoke)."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from cytocore import paths
from cytocore.config import ConfigError
from pipeline import cluster, recipe, run
from train import parallel

pytestmark = pytest.mark.unit


@dataclasses.dataclass(frozen=True)
class FakeDataset:
    """What plan() reads of a prepared dataset (nothing trained yet)."""

    root: Path
    id: str = "raw-0123abcd_k5_s42"
    k: int = 5
    seed: int = 42

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run_dir(self, model: str, fold: int) -> Path:
        return self.root / "runs" / model / f"fold{fold}"

    def preds_dir(self, model: str, fold: int) -> Path:
        return self.root / "preds" / model / f"fold{fold}"


def test_settings_come_from_the_recipe_section_then_the_environment():
    s = cluster.settings({"partition": "short", "cpus": 4},
                         {"CYTOKIT_LAUNCHER": "slurm", "CYTOKIT_CLUSTER_PARTITION": "gpu",
                          "CYTOKIT_CLUSTER_MEM": "64G", "CYTOKIT_CLUSTER_GPUS": "2"})
    assert (s.launcher, s.partition, s.cpus, s.gpus, s.mem_gb()) == ("slurm", "gpu", 4, 2, 64)
    assert cluster.settings(None, {}).launcher == "local"
    with pytest.raises(ConfigError, match="valid launchers are local, slurm, submitit-local"):
        cluster.settings(None, {"CYTOKIT_LAUNCHER": "pbs"})
    with pytest.raises(ConfigError, match="CYTOKIT_CLUSTER_CPUS='eight': a whole number"):
        cluster.settings(None, {"CYTOKIT_CLUSTER_CPUS": "eight"})
    with pytest.raises(ConfigError, match="MEM='lots'"):
        cluster.ClusterSettings(mem="lots")


@pytest.mark.parametrize("text, minutes", [("90", 90), ("24:00:00", 24 * 60), ("1:30:01", 91), ("5:30", 6),
                                           ("2-0", 2 * 1440), ("1-12:30", 1440 + 750),
                                           ("1-00:00:30", 1441)])
def test_time_is_read_as_slurm_reads_it(text, minutes):
    assert cluster.ClusterSettings(time=text).minutes() == minutes


def test_a_bad_time_is_one_line():
    for bad in ("a day", "0", "1:2:3:4"):
        with pytest.raises(ConfigError, match="TIME="):
            cluster.ClusterSettings(time=bad)


def test_a_requeued_job_resumes_and_never_retrains():
    argv = [sys.executable, "-m", "train", "--model", "yolov8", "--force", "epochs=3"]
    assert cluster.resumed_argv(argv) == [sys.executable, "-m", "train", "--resume", "--model", "yolov8",
                                          "epochs=3"]
    once = cluster.resumed_argv(argv)
    assert cluster.resumed_argv(once) == once


def _recipe_plan(tmp_path):
    rec = recipe.load(paths.CONFIGS / "recipe.yaml")
    ds = FakeDataset(tmp_path)
    jobs, skipped = run.plan(rec, ds, echo=lambda _: None)
    return rec, ds, jobs, skipped


def test_the_recipes_plan_as_sbatch_parameters(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string  # submitit's own sbatch writer checks the keys

    rec, ds, jobs, skipped = _recipe_plan(tmp_path)
    assert not skipped and len(jobs) == 15  # yolov8, yolo11 and cls, 5 folds each
    s = cluster.ClusterSettings(launcher="slurm", partition="gpu", time="24:00:00", mem="64", account="lab")
    ids = {j.name: str(1000 + i) for i, j in enumerate(jobs)}
    order = cluster.submission_order(jobs)
    for job in order:  # every job is submitted after the ones it waits for
        assert all(order.index(next(j for j in jobs if j.name == a)) < order.index(job) for a in job.after)
    by_name = {j.name: j for j in jobs}
    cls0 = by_name["cls fold 0"]
    assert cls0.after == ("yolov8 fold 0",)
    params = cluster.slurm_parameters(s, cls0, [ids[a] for a in cls0.after])
    assert params["additional_parameters"] == {"dependency": f"afterany:{ids['yolov8 fold 0']}"}
    assert (params["job_name"], params["time"], params["gpus_per_node"], params["cpus_per_task"],
            params["mem"], params["partition"], params["account"]) == \
        ("cytokit-cls-f0", 1440, 1, 8, "64G", "gpu", "lab")
    text = _make_sbatch_string(command="python -u -m submitit.core._submit x", folder=str(tmp_path / "s"),
                               **params)
    for line in (f"#SBATCH --dependency=afterany:{ids['yolov8 fold 0']}", "#SBATCH --partition=gpu",
                 "#SBATCH --time=1440", "#SBATCH --gpus-per-node=1", "#SBATCH --mem=64G",
                 "#SBATCH --job-name=cytokit-cls-f0", f"cd {paths.ROOT}"):
        assert line in text
    det = cluster.slurm_parameters(s, by_name["yolo11 fold 3"], [])
    assert "additional_parameters" not in det and det["job_name"] == "cytokit-yolo11-f3"
    # exactly what the recipe trains, logged where the local runner logs it
    yolo11 = by_name["yolo11 fold 3"]
    assert yolo11.argv[yolo11.argv.index("--fold") + 1] == "3"
    assert "size=s" in yolo11.argv and "imgsz=512" in yolo11.argv
    assert yolo11.log == parallel.log_path(ds, "yolo11", 3)


class FakeSlurmJob:
    def __init__(self, job_id: str, fn, args):
        self.job_id, self.fn, self.args = job_id, fn, args

    def done(self) -> bool:
        return True

    def result(self):
        argv, log = self.args
        if "--fold" in argv and argv[argv.index("--fold") + 1] == "1" and "yolo11" in argv:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            Path(log).write_text("CUDA error: out of memory\n")
            raise RuntimeError("exit 1: CUDA error: out of memory")
        return {"returncode": 0, "seconds": 12.0, "cpu_seconds": 3.0}


class FakeSlurm:
    """submitit.SlurmExecutor's surface: parameters per submission, ids in submission order."""

    def __init__(self):
        self.params, self.submitted, self.current = [], [], {}

    def update_parameters(self, **kw):
        self.current = kw

    def submit(self, fn, *args):
        job = FakeSlurmJob(str(500 + len(self.submitted)), fn, args)
        self.submitted.append(job)
        self.params.append(self.current)
        return job


def test_the_waiting_runner_against_a_fake_slurm(tmp_path, monkeypatch):
    rec, ds, jobs, _ = _recipe_plan(tmp_path)
    fake = FakeSlurm()
    monkeypatch.setattr(cluster, "executor", lambda s, folder: fake)
    lines = []
    s = cluster.ClusterSettings(launcher="slurm")
    outcomes = cluster.run_jobs(jobs, s, tmp_path / "submitit", lines.append, poll_s=0)
    assert [o.name for o in outcomes] == [j.name for j in jobs]
    failed = [o for o in outcomes if o.status != "ok"]
    assert [(o.name, o.last_line) for o in failed] == [("yolo11 fold 1", "CUDA error: out of memory")]
    ids = {j.args[0][j.args[0].index("--model") + 1] + " fold " + j.args[0][j.args[0].index("--fold") + 1]:
           j.job_id for j in fake.submitted}
    for p, job in zip(fake.params, fake.submitted):
        name = p["job_name"]
        if name.startswith("cytokit-cls-f"):
            fold = name.rsplit("f", 1)[1]
            assert p["additional_parameters"]["dependency"] == f"afterany:{ids['yolov8 fold ' + fold]}"
        else:
            assert "additional_parameters" not in p
        assert isinstance(job.fn, cluster.TrainCommand)
    assert any("FAILED yolo11 fold 1" in line for line in lines)


def test_make_all_run_again_waits_for_the_jobs_still_running(tmp_path, monkeypatch):
    rec, ds, jobs, _ = _recipe_plan(tmp_path)
    folder = tmp_path / "submitit"
    first = FakeSlurm()
    monkeypatch.setattr(cluster, "executor", lambda s, f: first)
    s = cluster.ClusterSettings(launcher="slurm")
    with pytest.raises(KeyboardInterrupt):  # the orchestrator stops while it waits
        monkeypatch.setattr(FakeSlurmJob, "done", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
        cluster.run_jobs(jobs, s, folder, lambda _: None, poll_s=0)
    monkeypatch.undo()
    recorded = {j.name: str(500 + i) for i, j in enumerate(cluster.submission_order(jobs))}
    still = {recorded["yolov8 fold 2"]: FakeSlurmJob(recorded["yolov8 fold 2"], None, ([], ""))}
    monkeypatch.setattr(cluster, "active_job", lambda folder, job_id: still.get(job_id))
    second = FakeSlurm()
    monkeypatch.setattr(cluster, "executor", lambda s, f: second)
    lines = []
    outcomes = cluster.run_jobs(jobs, s, folder, lines.append, poll_s=0)
    names = [p["job_name"] for p in second.params]
    assert len(names) == 14 and "cytokit-yolov8-f2" not in names  # not submitted twice
    cls2 = next(p for p in second.params if p["job_name"] == "cytokit-cls-f2")
    assert cls2["additional_parameters"]["dependency"] == f"afterany:{recorded['yolov8 fold 2']}"
    assert any("yolov8 fold 2: job" in line and "still runs" in line for line in lines)
    assert {o.status for o in outcomes if o.name != "yolo11 fold 1"} == {"ok"}


def test_train_step_hands_the_jobs_to_the_cluster_runner(tmp_path, monkeypatch):
    rec, ds, jobs, _ = _recipe_plan(tmp_path)
    seen = {}

    def fake_run(jobs, s, folder, echo):
        seen.update(n=len(jobs), launcher=s.launcher, partition=s.partition, folder=folder)
        return [parallel.Outcome(j.name, "failed", 1, 1.0, 0.0, j.log, "x") for j in jobs]

    monkeypatch.setenv("CYTOKIT_LAUNCHER", "slurm")
    monkeypatch.setenv("CYTOKIT_CLUSTER_PARTITION", "gpu")
    monkeypatch.setattr(cluster, "run_jobs", fake_run)
    monkeypatch.setattr(parallel, "run_jobs", lambda *a, **k: pytest.fail("ran locally"))
    records = run.train_step(rec, ds, echo=lambda _: None)
    assert seen == {"n": 15, "launcher": "slurm", "partition": "gpu",
                    "folder": paths.logs_dir(ds.id) / "submitit"}
    assert len(records) == 15 and {r["status"] for r in records} == {"failed"}


@pytest.mark.smoke  # starts processes: submitit's local executor
def test_two_jobs_through_submitits_local_executor(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write = ("import pathlib, sys, time; time.sleep({sleep}); "
             "a = pathlib.Path(sys.argv[1]); print('first' if not a.exists() else 'second', flush=True); "
             "assert {check}; pathlib.Path(sys.argv[2]).write_text(str(time.time()))")
    first = parallel.Job("det fold 0", [sys.executable, "-c", write.format(sleep=1.5, check="True"),
                                        str(out / "a"), str(out / "a")], tmp_path / "logs" / "det_fold0.log")
    second = parallel.Job("cls fold 0", [sys.executable, "-c", write.format(sleep=0, check="a.exists()"),
                                         str(out / "a"), str(out / "b")], tmp_path / "logs" / "cls_fold0.log",
                          after=("det fold 0",))
    broken = parallel.Job("bad fold 1", [sys.executable, "-c", "raise SystemExit('no GPU here')"],
                          tmp_path / "logs" / "bad_fold1.log")
    lines = []
    s = cluster.ClusterSettings(launcher="submitit-local", time="5")
    outcomes = cluster.run_jobs([second, first, broken], s, tmp_path / "submitit", lines.append, poll_s=0.2)
    assert [(o.name, o.status) for o in outcomes] == [("cls fold 0", "ok"), ("det fold 0", "ok"),
                                                      ("bad fold 1", "failed")]
    assert float((out / "a").read_text()) < float((out / "b").read_text())  # the dependency held
    assert "second" in second.log.read_text() and "first" in first.log.read_text()
    assert "=== " in first.log.read_text() and outcomes[2].last_line == "no GPU here"
    assert outcomes[2].log == broken.log
    assert any(p.name.endswith("_submitted.pkl") for p in (tmp_path / "submitit").iterdir())
