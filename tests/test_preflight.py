"""The pre-flight of make all (pipeline.preflight) / make train (train.preflight), the lock per data
and work folder, and make weights per recipe (issue #18): every check simulated on the CPU (torch.cuda
monkeypatched, a fake /proc root, fake Limits)."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cytocore import io, paths
from cytocore.config import ConfigError
from cytocore.resources import GIB, MIB, Limits
from pipeline import lock, preflight
from pipeline import recipe as rc
from pipeline import weights as recipe_weights
from pipeline.weights import recipe_needs
from train import preflight as training
from train.weights import catalog, needs

pytestmark = pytest.mark.unit

RECIPE = paths.CONFIGS / "recipe.yaml"
DEMO = paths.CONFIGS / "demo.yaml"
BCCD = paths.CONFIGS / "bccd.yaml"
DRIVER_535 = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"


class FakeLimits(Limits):
    """A machine of ``cores`` cores, ``memory`` bytes (a cgroup limit) and ``shm`` free bytes of /dev/shm."""

    def __init__(self, cores: int = 16, memory: int = 128 * GIB, shm: int | None = 64 * GIB):
        super().__init__()
        self.cores, self.memory, self.shm = cores, memory, shm

    def cpu_cores(self) -> int:
        return self.cores

    def memory_bytes(self) -> int:
        return self.memory

    def memory_source(self) -> str:
        return "cgroup"

    def shm_bytes(self) -> int | None:
        return self.shm


@pytest.fixture
def weights(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("CYTOKIT_WEIGHTS", str(folder))
    return folder


@pytest.fixture
def no_gpu(monkeypatch, tmp_path) -> Path:
    """A machine without CUDA and without an NVIDIA driver; returns its fake root."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(training.shutil, "which", lambda name: None)
    root = tmp_path / "root"
    root.mkdir()
    return root


def members_of(path: Path, overrides: list[str] = ()) -> list[training.Member]:
    found, problems = preflight.resolve_members(rc.load(path, overrides))
    assert problems == []
    return found


def write_data(folder: Path, test_rows: str = "1,a.jpg\n2,b.jpg\n") -> Path:
    """A tiny data folder in the challenge layout: train.csv, test.csv, images/ with every named file."""
    (folder / "images").mkdir(parents=True)
    (folder / "train.csv").write_text("NAME,x1,y1,x2,y2,class\nt.jpg,1,2,30,40,PNN\n")
    (folder / "test.csv").write_text("trustii_id,NAME\n" + test_rows)
    for name in ("t.jpg", "a.jpg", "b.jpg"):
        (folder / "images" / name).write_bytes(b"")
    return folder


# ---- make weights: the recipe's files ----

def test_the_recipe_needs_exactly_the_files_its_members_start_from(weights):
    found = recipe_needs(RECIPE)
    assert [(n.member, n.entry.name) for n in found] == [
        ("yolov8", "yolov8s"), ("yolo11", "yolo11s"), ("cls", "efficientnet_b0.ra_in1k")]
    assert found[0].file == weights / "yolov8s.pt"
    assert recipe_needs(DEMO) == [] and recipe_needs(BCCD) == []  # scratch on purpose / no file
    assert [n.entry.name for n in recipe_needs(RECIPE, ["detectors=[{model: yolov8}]",
                                                        "classifiers=[]"])] == ["yolov8n"]
    local = needs.member_need("yolov8", ["pretrained=/somewhere/mine.pt"])
    assert local == needs.Need("yolov8", Path("/somewhere/mine.pt"), None)


def test_make_weights_without_set_fetches_the_recipe_files_and_set_still_works(weights, monkeypatch, capsys):
    from train.weights import __main__ as by_set
    from train.weights import cli

    fetched = []
    monkeypatch.setattr(cli, "run", lambda entries, *a, **k: fetched.append([e.name for e in entries]) or 0)
    assert recipe_weights.main(["--no-progress"]) == 0  # make weights: configs/recipe.yaml's
    assert recipe_weights.main(["--recipe", str(DEMO)]) == 0  # nothing to fetch: run is not called
    assert "nothing to fetch" in capsys.readouterr().out
    assert by_set.main(["--set", "default"]) == 0 and by_set.main(["--set", "yolov8s,yolo11m"]) == 0
    assert fetched == [["yolov8s", "yolo11s", "efficientnet_b0.ra_in1k"],
                       [e.name for e in catalog.select("default")], ["yolov8s", "yolo11m"]]
    assert recipe_weights.main(["--list"]) == 0  # the recipe's files, offline
    out = capsys.readouterr().out
    assert "its members start from yolov8s, yolo11s" in out and "missing  yolov8s" in out
    assert "missing  yolov8n " not in out
    assert by_set.main(["--list"]) == 0 and "missing  yolov8n " in capsys.readouterr().out  # every file
    with pytest.raises(SystemExit):  # train.weights alone knows no recipe: --set (or --list) it needs
        by_set.main([])
    assert "python -m pipeline.weights --recipe" in capsys.readouterr().err
    assert fetched == [["yolov8s", "yolo11s", "efficientnet_b0.ra_in1k"],
                       [e.name for e in catalog.select("default")], ["yolov8s", "yolo11m"]]


# ---- weights ----

def test_missing_weights_name_the_make_weights_command_and_the_way_to_scratch(weights):
    members = members_of(RECIPE)
    problems = training.weights_problems(members, RECIPE)
    assert len(problems) == 3 and all(f"`make weights RECIPE={RECIPE}`" in p and "pretrained=none" in p
                                      for p in problems)
    assert problems[0].startswith("yolov8: starts from yolov8s")
    assert str(weights / "yolov8s.pt") in problems[0]
    for name in ("yolov8s.pt", "yolo11s.pt", "efficientnet_b0.ra_in1k.safetensors"):
        (weights / name).write_bytes(b"x")
    assert training.weights_problems(members, RECIPE) == []
    scratch = members_of(RECIPE, ["detectors=[{model: yolov8, overrides: [pretrained=none]}]",
                                  "classifiers=[]"])
    assert training.weights_problems(scratch) == []
    given = members_of(RECIPE, ["detectors=[{model: yolov8, overrides: [pretrained=/no/such.pt]}]",
                                "classifiers=[]"])
    (line,) = training.weights_problems(given, auto=False)
    assert line.startswith("yolov8: pretrained=/no/such.pt: file not found")


# ---- the device ----

def test_device_auto_next_to_an_nvidia_gpu_torch_cannot_use_is_an_error_not_silent_cpu(no_gpu, monkeypatch):
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    (no_gpu / "proc" / "driver" / "nvidia").mkdir(parents=True)
    (no_gpu / "proc" / "driver" / "nvidia" / "version").write_text(DRIVER_535)
    (line,) = training.device_problems([("yolov8", ""), ("cls", "cpu")], no_gpu)
    assert line.startswith("device: yolov8 (device auto) would train on the CPU")
    assert "driver 535.104.05 is older" in line and ">= 580.65.06" in line
    assert "README, 'GPU machines'" in line
    assert "--index-url https://download.pytorch.org/whl/cu126" in line and "device=cpu" in line
    (line,) = training.device_problems([("ensemble (inference)", "cuda")], no_gpu)
    assert "asks for CUDA, which is not available" in line and "535.104.05" in line


def test_device_without_any_nvidia_gpu(no_gpu, monkeypatch):
    import torch

    assert training.device_problems([("yolov8", ""), ("cls", "auto")], no_gpu) == []  # CPU on purpose
    (line,) = training.device_problems([("yolov8", "0")], no_gpu)
    assert "no NVIDIA GPU or driver is visible" in line
    monkeypatch.setattr(torch.version, "cuda", None)
    (line,) = training.device_problems([("yolov8", "cuda:0")], no_gpu)
    assert "is a CPU build" in line and "requirements.txt" in line


def test_a_gpu_architecture_without_kernels_in_this_build_is_refused(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86", "sm_90"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla P100-PCIE-16GB")
    problems = training.device_problems([("yolov8", ""), ("cls", "1")], tmp_path)
    assert len(problems) == 2
    assert "GPU 0 (Tesla P100-PCIE-16GB, sm_60) is not supported" in problems[0] and "cu126" in problems[0]
    assert problems[1].startswith("cls: device=1: GPU 1 asked for but 1 visible")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (8, 6))
    assert training.device_problems([("yolov8", ""), ("cls", "0")], tmp_path) == []


def test_nvidia_driver_version_is_read_from_proc(tmp_path):
    folder = tmp_path / "proc" / "driver" / "nvidia"
    folder.mkdir(parents=True)
    (folder / "version").write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  560.35.03  "
                                    "Release Build  (dvs-builder@U16-I3-B03-4-3)\n")
    assert training.nvidia_driver(tmp_path) == "560.35.03" and training.nvidia_visible(tmp_path)
    assert training.nvidia_driver(tmp_path / "none") is None


# ---- /dev/shm, memory, disk ----

def test_dev_shm_too_small_for_the_workers_batches(weights):
    members = members_of(RECIPE)
    (line,) = training.shm_problems(members, 1, FakeLimits(shm=64 * MIB))
    assert line.startswith("/dev/shm: 64 MiB free, but 1 job(s) of cls (workers=8, batch=64, imgsz=224)")
    assert "Bus error" in line and "--shm-size" in line
    assert training.shm_problems(members, 1, FakeLimits(shm=8 * GIB)) == []
    assert training.shm_problems(members, 1, FakeLimits(shm=None)) == []  # no /dev/shm (macOS)
    tiny = members_of(RECIPE, ["detectors=[{model: yolov8, overrides: [workers=0]}]", "classifiers=[]"])
    assert training.shm_problems(tiny, 4, FakeLimits(shm=MIB)) == []  # no workers: nothing in /dev/shm


def test_memory_counts_the_caches_of_the_jobs_run_at_once_against_the_cgroup_limit(weights, monkeypatch):
    from train.cls import data as cls_data

    monkeypatch.setattr(cls_data, "cache_budget", lambda: 32 * GIB)
    members = members_of(RECIPE)
    real = training.DataFacts(images=48_000, boxes=52_748)  # the challenge's scale
    (line,) = training.memory_problems(members, 4, real, FakeLimits(memory=24 * GIB))
    assert line.startswith("memory: 4 training job(s) at once need about") and "(cgroup)" in line
    assert "cls cache" in line and "lower JOBS, or cache=false" in line
    assert training.memory_problems(members, 4, real, FakeLimits(memory=128 * GIB)) == []
    assert training.memory_problems(members, 1, real, FakeLimits(memory=24 * GIB)) == []
    no_cache = members_of(RECIPE, ["classifiers=[{model: cls, overrides: [cache=false]}]"])
    assert training.memory_problems(no_cache, 4, real, FakeLimits(memory=24 * GIB)) == []


def test_disk_too_small_for_the_run(weights, monkeypatch, tmp_path):
    members = members_of(RECIPE)
    monkeypatch.setattr(training.shutil, "disk_usage", lambda folder: SimpleNamespace(free=2 * GIB))
    (line,) = training.disk_problems(members, tmp_path / "work")
    assert line.startswith(f"disk: {tmp_path / 'work'} has 2.0 GiB free; this run needs about 8.5 GiB")
    assert "CYTOKIT_WORK" in line


# ---- the recipe and the data ----

def test_an_unknown_ensemble_key_and_a_bad_member_override_are_refused_before_training(weights):
    ens, (line,) = preflight.ensemble_problems(rc.load(RECIPE, ["ensemble={device: cpu, bogus: 1}"]))
    assert ens is None and "recipe: ensemble: unknown key(s) bogus" in line and "valid keys:" in line
    ens, problems = preflight.ensemble_problems(rc.load(RECIPE))
    assert problems == [] and ens.device == "cuda"
    members, (line,) = preflight.resolve_members(rc.load(RECIPE, [
        "detectors=[{model: yolov8, overrides: [epochs=-3]}, {model: yolo11}]"]))
    assert line == "recipe detectors[0] (yolov8): epochs=-3: must be >= 1"
    assert [m.model for m in members] == ["yolo11", "cls"]


def test_a_duplicate_trustii_id_and_missing_test_images_are_refused(tmp_path):
    data = write_data(tmp_path / "data", "1,a.jpg\n1,b.jpg\n2,gone.jpg\n")
    facts, problems = preflight.data_problems(data, rc.load(RECIPE))
    assert any("test.csv:3" in p and "trustii_id 1 repeated" in p for p in problems)
    data = write_data(tmp_path / "data2", "1,a.jpg\n2,gone.jpg\n")
    facts, (line,) = preflight.data_problems(data, rc.load(RECIPE))
    assert "1 of 2 image(s) not in" in line and "gone.jpg" in line
    assert (facts.images, facts.boxes) == (1, 1)
    assert preflight.data_problems(tmp_path / "empty", rc.load(DEMO)) == (training.DataFacts(), [])  # synth


def test_the_demo_and_bccd_recipes_pass(no_gpu, weights, tmp_path):
    limits = FakeLimits(cores=2, memory=16 * GIB, shm=GIB)
    assert preflight.recipe_problems(rc.load(DEMO), tmp_path / "demo", DEMO, limits, no_gpu) == []
    data = write_data(tmp_path / "bccd")
    assert preflight.recipe_problems(rc.load(BCCD), data, BCCD, limits, no_gpu) == []


def test_the_real_recipe_on_a_cpu_machine_without_weights_lists_every_problem(no_gpu, weights, tmp_path):
    data = write_data(tmp_path / "data")
    with pytest.raises(preflight.PreflightError) as caught:
        preflight.check(rc.load(RECIPE), data, RECIPE, FakeLimits(), no_gpu)
    lines = str(caught.value).splitlines()
    assert len(lines) == 5 and len(caught.value.problems) == 4  # 3 weights, the ensemble's cuda, summary
    assert lines[-1].startswith("pre-flight: 4 problem(s); nothing was started")
    assert isinstance(caught.value, ConfigError)  # io.cli: the lines, exit status 1, no traceback


def test_run_stops_before_any_fold_or_run_folder(no_gpu, weights, tmp_path, monkeypatch, capsys):
    from pipeline.__main__ import main

    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    data = write_data(tmp_path / "data")
    start = time.perf_counter()
    code = io.cli(main, ["--recipe", str(RECIPE), "--data", str(data)])
    assert code == 1 and time.perf_counter() - start < 60
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"make weights RECIPE={RECIPE}" in err
    work = tmp_path / "work"
    assert not any((work / name).exists() for name in ("runs", "folds", "datasets", "logs", "preds"))
    assert os.environ.get(preflight.ENV) is None


def test_off_skips_and_a_passed_run_tells_its_jobs(monkeypatch, weights, tmp_path):
    recipe = rc.load(RECIPE)
    monkeypatch.setenv(preflight.ENV, "off")
    with preflight.checked(recipe, tmp_path, RECIPE):  # would fail: skipped
        pass
    monkeypatch.delenv(preflight.ENV)
    demo = rc.load(DEMO)
    lines = []
    with preflight.checked(demo, tmp_path / "demo", DEMO, lines.append):
        assert os.environ[preflight.ENV] == "done"
        training.check_training("yolov8", ["epochs=-3"], 1, 1)  # a job of a checked run: not again
    assert os.environ.get(preflight.ENV) is None and lines[0].startswith("pre-flight: recipe, weights")
    with pytest.raises(ConfigError, match="epochs=-3: must be >= 1"):
        training.check_training("yolov8", ["epochs=-3"], 1, 1)


def test_make_train_checks_the_device_before_training(no_gpu, monkeypatch, tmp_path):
    import torch

    from train.__main__ import main

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(training, "nvidia_driver", lambda root=None: "535.104.05")
    with pytest.raises(training.PreflightError, match="yolov8 \\(device auto\\) would train on the CPU"):
        main(["--model", "yolov8", "--fold", "0", "--data", str(tmp_path / "nowhere")])


# ---- the lock ----

def test_a_second_run_on_the_same_data_and_work_folder_names_the_holder(tmp_path, monkeypatch):
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    data = tmp_path / "data"
    with lock.held(data) as path:
        assert path.parent == tmp_path / "work" / "locks" and f"PID {os.getpid()} (" in path.read_text()
        held = f"another run is working on this data folder .*PID {os.getpid()}"
        with pytest.raises(lock.LockHeld, match=held):
            with lock.held(data):
                pass
        with lock.held(tmp_path / "other"):  # another data folder: its own lock
            pass
    with lock.held(data):  # released on exit
        pass
    # another process (another open file description) holds it: its name in the file is reported
    fd = os.open(paths.lock_file(data), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"PID 4242 (python -m pipeline --recipe configs/recipe.yaml) since 2026-01-01\n", 0)
        with pytest.raises(lock.LockHeld) as caught:
            with lock.held(data):
                pass
        assert "PID 4242 (python -m pipeline --recipe configs/recipe.yaml)" in str(caught.value)
        assert len(str(caught.value).splitlines()) == 1
    finally:
        os.close(fd)  # a crash or a kill closes it too: the lock is free again
    with lock.held(data):
        pass


# ---- the commands ----

@pytest.mark.smoke  # starts python -m pipeline
def test_make_all_on_a_cpu_without_weights_stops_in_the_first_minute(tmp_path):
    data = write_data(tmp_path / "data")
    env = {**os.environ, "CYTOKIT_WORK": str(tmp_path / "work"), "CYTOKIT_WEIGHTS": str(tmp_path / "weights")}
    env.pop(preflight.ENV, None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", "--recipe", "configs/recipe.yaml", "--data",
                           str(data)], cwd=paths.ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and time.perf_counter() - start < 60
    text = done.stdout + done.stderr
    assert "Traceback" not in text and "make weights RECIPE=configs/recipe.yaml" in text
    assert not (tmp_path / "work" / "runs").exists() and not (tmp_path / "work" / "folds").exists()



def test_launcher_slurm_leaves_the_members_device_shm_and_memory_to_the_nodes(no_gpu, weights, tmp_path,
                                                                             monkeypatch):
    """On a login node without a GPU, make all LAUNCHER=slurm is not refused for the members' CUDA,
    /dev/shm or memory (the jobs run on the cluster's nodes); the ensemble's device still counts."""
    data = write_data(tmp_path / "data")
    tiny = FakeLimits(cores=2, memory=GIB, shm=64 * 2**20)
    gpu_members = ["detectors=[{model: yolov8, overrides: [device=0, pretrained=none]}]", "classifiers=[]",
                   "ensemble={device: cpu}"]
    local = preflight.recipe_problems(rc.load(RECIPE, gpu_members), data, RECIPE, tiny, no_gpu)
    assert any(p.startswith("device: yolov8") for p in local)
    monkeypatch.setenv("CYTOKIT_LAUNCHER", "slurm")
    remote = preflight.recipe_problems(rc.load(RECIPE, gpu_members), data, RECIPE, tiny, no_gpu)
    assert not any(p.startswith(("device: yolov8", "/dev/shm", "memory")) for p in remote)
    assert len(remote) < len(local)
