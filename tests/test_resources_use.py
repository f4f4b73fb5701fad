"""Job-sized resources where they are used: the classifier cache budget (cgroup / SLURM limit over
CYTOKIT_JOBS), every family's DataLoader workers (the job's share of cores, /dev/shm) and one ultralytics
label cache per fold list. Machines are simulated: fake cgroup roots, affinity, env and /dev/shm."""
from __future__ import annotations

import collections
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from cytocore import classes, config, resources
from cytocore.resources import GIB, MIB, Limits
from prepare import export
from train import parallel
from train.cls import data as cls_data

pytestmark = pytest.mark.unit

Usage = collections.namedtuple("Usage", "total used free")


def cgroup_root(tmp_path: Path, memory: int, physical: int = 64 * GIB) -> Path:
    """A fake machine root: a cgroup v2 job ``/job`` limited to ``memory`` bytes on a ``physical`` node."""
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text("0::/job\n")
    (tmp_path / "proc" / "meminfo").write_text(f"MemTotal: {physical // 1024} kB\n")
    (tmp_path / "sys" / "fs" / "cgroup" / "job").mkdir(parents=True)
    (tmp_path / "sys" / "fs" / "cgroup" / "job" / "memory.max").write_text(f"{memory}\n")
    return tmp_path


@pytest.fixture
def fake_shm(monkeypatch):
    """Make /dev/shm of any Limits root ``size`` bytes, all free; returns a setter."""
    real = resources.shutil.disk_usage

    def set_size(size: int, free: int | None = None):
        def usage(path):
            if Path(path).parts[-2:] == ("dev", "shm"):
                return Usage(size, size - (size if free is None else free), size if free is None else free)
            return real(path)

        monkeypatch.setattr(resources.shutil, "disk_usage", usage)

    return set_size


def use_limits(monkeypatch, limits: Limits) -> None:
    """Every caller that asks for the process's limits gets ``limits``."""
    monkeypatch.setattr(resources, "default_limits", lambda: limits)


# ---------------------------------------------------------------- cache budget


def test_cache_budget_from_the_cgroup_limit_over_the_jobs(tmp_path, caplog):
    limits = Limits(root=cgroup_root(tmp_path, 8 * GIB), env={"CYTOKIT_JOBS": "4"}, affinity=16)
    with caplog.at_level(logging.INFO, logger="train.cls.data"):
        budget = cls_data.cache_budget(limits)
    assert budget == int(cls_data.CACHE_SHARE * 8 * GIB / 4)  # 512 MiB, not 1/4 of the node's 64 GiB
    lines = [r.getMessage() for r in caplog.records if "cache budget" in r.getMessage()]
    assert len(lines) == 1 and "cgroup" in lines[0] and "4 job(s)" in lines[0] and "512 MiB" in lines[0]


def test_cache_budget_from_slurm_and_alone(tmp_path):
    root = cgroup_root(tmp_path, 100 * GIB, physical=64 * GIB)  # a cgroup above the node: the node counts
    alone = Limits(root=root, env={}, affinity=16)
    assert cls_data.cache_budget(alone) == int(cls_data.CACHE_SHARE * 64 * GIB)
    slurm = Limits(root=root, env={"SLURM_MEM_PER_NODE": "16384", "CYTOKIT_JOBS": "2"}, affinity=16)
    assert cls_data.cache_budget(slurm) == int(cls_data.CACHE_SHARE * 16 * GIB / 2)


def test_run_jobs_tells_each_job_how_many_run_at_once(tmp_path, monkeypatch):
    seen = {}

    class Started:  # stands in for the subprocess: records the environment it would get
        def __init__(self, job, slot, env):
            self.job, self.start = job, time.perf_counter()
            seen[job.name] = env

        def poll(self):
            return parallel.Outcome(self.job.name, "ok", 0, 0.0, 0.0, self.job.log)

        def stop(self):
            pass

    monkeypatch.setattr(parallel, "_Running", Started)
    jobs = [parallel.Job(f"j{i}", ["true"], tmp_path / f"j{i}.log") for i in range(3)]
    parallel.run_jobs(jobs, n=4, gpus=[], echo=lambda s: None)
    assert {name: env[resources.JOBS_ENV] for name, env in seen.items()} == {"j0": "3", "j1": "3", "j2": "3"}
    assert Limits(env=seen["j0"]).job_count() == 3  # what the job reads back
    assert parallel.job_env(0)[resources.JOBS_ENV] == "1"


# ---------------------------------------------------------------- workers


def test_worker_cap_is_the_jobs_share_of_cores(tmp_path):
    two_jobs = Limits(root=tmp_path, env={"CYTOKIT_JOBS": "2"}, affinity=4)  # 2 cores per job
    assert resources.capped_workers(8, two_jobs) == 1  # one core for the main process, one worker
    assert resources.capped_workers(0, two_jobs) == 0
    node = Limits(root=tmp_path, env={"CYTOKIT_JOBS": "2"}, affinity=16)
    assert resources.capped_workers(8, node) == 7
    assert resources.capped_workers(8, node, multiple=2) == 3  # ultralytics' validation: 6 workers <= 7
    assert resources.capped_workers(8, Limits(root=tmp_path, env={}, affinity=1)) == 0
    torchrun = Limits(root=tmp_path, env={"CYTOKIT_JOBS": "1", "LOCAL_WORLD_SIZE": "4"}, affinity=16)
    assert resources.capped_workers(8, torchrun) == 3  # 4 cores per rank
    quota = cgroup_root(tmp_path / "q", 8 * GIB)
    (quota / "sys" / "fs" / "cgroup" / "job" / "cpu.max").write_text("400000 100000\n")  # 4 cores
    assert resources.capped_workers(8, Limits(root=quota, env={"CYTOKIT_JOBS": "2"}, affinity=64)) == 1


def test_every_family_caps_its_workers(tmp_path, monkeypatch):
    """yolo (train_args and resume), cls, torchvision and UNet ask capped_workers: 4 cores, 2 jobs."""
    from train.tv import engine as tv_engine
    from train.unet.adapter import UnetConfig
    from train.unet.adapter import fit as unet_fit
    from train.yolo.adapter import UltraConfig, Yolov8Adapter, ultra_workers

    use_limits(monkeypatch, Limits(root=tmp_path, env={"CYTOKIT_JOBS": "2"}, affinity=4))
    yolo = config.from_dict(UltraConfig, {"workers": 8, "device": "cpu", "pretrained": "none"})
    fold = SimpleNamespace(yolo_yaml=tmp_path / "data.yaml", fold=0)
    assert Yolov8Adapter().train_args(yolo, fold, tmp_path / "run")["workers"] == 1 == ultra_workers(yolo)

    asked = []

    class Stop(Exception):
        pass

    def loader(*args, num_workers=0, **kwargs):
        asked.append(num_workers)
        raise Stop

    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    tv_cfg = SimpleNamespace(balanced=False, seed=0, workers=8, batch=4, imgsz=384)
    with pytest.raises(Stop):
        tv_engine.fit(torch.nn.Linear(1, 1), tv_cfg, list(range(8)), tmp_path / "tv", "cpu", "x", None)
    unet_cfg = config.from_dict(UnetConfig, {"workers": 8, "device": "cpu"})
    unet_fold = SimpleNamespace(train_images=pd.DataFrame({"NAME": ["a.jpg"]}), images_dir=tmp_path, fold=0)
    with pytest.raises(Stop):
        unet_fit(unet_cfg, unet_fold, tmp_path / "masks", tmp_path / "unet")

    from train.cls import adapter as cls_adapter

    class Crops:
        labels = np.zeros(8, dtype=np.int64)
        cached_bytes = 0

        def __init__(self, *args, **kwargs):
            pass

        def __len__(self):
            return 8

    monkeypatch.setattr(cls_data, "CropDataset", Crops)
    cls_cfg = config.from_dict(cls_adapter.ClassifierConfig, {"workers": 8, "device": "cpu", "cache": False})
    with pytest.raises(Stop):
        cls_adapter.fit(cls_cfg, pd.DataFrame(), pd.DataFrame(), tmp_path, tmp_path / "cls")
    assert asked == [1, 1, 1]


# ---------------------------------------------------------------- /dev/shm


def test_shm_need_of_the_crop_classifier():
    # batch 64 x 3 x 224^2 float32 x 2 prefetched batches x 8 workers: the ~0.6 GB of the issue
    need = 8 * resources.loader_shm_bytes(64, 224)
    assert need == 8 * 2 * 64 * 3 * 224 * 224 * 4 and 0.6e9 < need < 0.65e9


def test_docker_default_shm_means_fewer_workers_and_one_warning(tmp_path, fake_shm, caplog):
    fake_shm(64 * MIB)
    limits = Limits(root=tmp_path, env={}, affinity=16)
    with caplog.at_level(logging.INFO):
        workers = cls_data.loader_workers(8, 64, 224, limits)
    assert workers == 0  # one worker's 77 MB does not fit: the main process loads, nothing in /dev/shm
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "--shm-size" in warnings[0] and "64 MiB" in warnings[0]

    fake_shm(512 * MIB)
    assert cls_data.loader_workers(8, 64, 224, limits) == 5  # 5 x 77 MB <= 0.8 x 512 MiB
    fake_shm(8 * GIB)
    assert cls_data.loader_workers(8, 64, 224, limits) == 8
    fake_shm(1 * GIB)  # four jobs share it: 256 MiB each
    assert cls_data.loader_workers(8, 64, 224, Limits(root=tmp_path, env={"CYTOKIT_JOBS": "4"},
                                                          affinity=64)) == 2


def test_ultralytics_workers_fit_its_shm(tmp_path, fake_shm, caplog):
    from train.yolo.adapter import UltraConfig, ultra_workers

    cfg = config.from_dict(UltraConfig, {"workers": 8, "imgsz": 512, "batch": 32, "device": "0"})
    limits = Limits(root=tmp_path, env={}, affinity=64)
    fake_shm(64 * MIB)
    with caplog.at_level(logging.WARNING):
        assert ultra_workers(cfg, limits) == 0
    assert "--shm-size" in caplog.text
    fake_shm(16 * GIB)
    assert ultra_workers(cfg, limits) == 8
    two_gpus = config.from_dict(UltraConfig, {"workers": 8, "device": "0,1"})
    assert ultra_workers(two_gpus, Limits(root=tmp_path, env={}, affinity=8)) == 3  # 2 ranks: 6 <= 7


# ---------------------------------------------------------------- label caches


def tiny_export(root: Path, k: int = 2, n: int = 6) -> Path:
    """``export_dataset`` of ``n`` 32 px images, one box each, in ``k`` folds."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, boxes = [], []
    for i in range(n):
        name = f"im{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(raw / name)
        rows.append({"NAME": name, "width": 32, "height": 32, "fold": i % k, "group": i,
                     "path": str(raw / name)})
        boxes.append({"NAME": name, "x1": 4, "y1": 4, "x2": 20, "y2": 24, "class": classes.CLASSES[i % 3],
                      "width": 32, "height": 32})
    return export.export_dataset(root / "ds", images=pd.DataFrame(rows), boxes=pd.DataFrame(boxes),
                                 meta={"k": k})


def test_each_fold_list_has_its_own_label_cache(tmp_path):
    from ultralytics.data.utils import img2label_paths

    root = tiny_export(tmp_path)
    caches = set()
    for fold in range(2):
        spec = yaml.safe_load((root / f"fold{fold}" / "data.yaml").read_text())
        for part in ("train", "val"):
            images = Path(spec[part]).read_text().split()
            labels = img2label_paths(images)
            assert all(Path(p).is_file() for p in images + labels)
            shared = root / "yolo" / "labels"  # the same label files, one copy on disk
            assert all(Path(p).resolve() == (shared / Path(p).name).resolve() for p in labels)
            caches.add(Path(labels[0]).parent.with_suffix(".cache"))  # ultralytics' rule (YOLODataset)
    assert len(caches) == 4 and all(c.parent.parent.parent == root for c in caches)


def test_ultralytics_writes_one_cache_per_fold(tmp_path):
    from ultralytics.data.dataset import YOLODataset

    root = tiny_export(tmp_path)
    data = {"names": dict(enumerate(classes.CLASSES)), "nc": classes.NUM_CLASSES, "channels": 3}
    for fold in range(2):
        ds = YOLODataset(img_path=str(root / f"fold{fold}" / "train.txt"), imgsz=32, augment=False, data=data,
                         task="detect")
        assert len(ds.labels) == 3 and all(len(lb["cls"]) == 1 for lb in ds.labels)
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.cache"))
    assert written == ["fold0/train/labels.cache", "fold1/train/labels.cache"]
    assert not os.path.exists(root / "yolo" / "labels.cache")
