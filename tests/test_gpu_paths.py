"""What a first GPU run would hit, checked on the CPU: devices under torchrun, AMP resume, refusals,
per-worker augmentation seeds, MedSAM loaded once, logging and cloudpickle in ultralytics' DDP workers."""
from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

from cytocore import paths
from cytocore.config import ConfigError
from train import checkpoint, dist, registry

pytestmark = pytest.mark.unit


@pytest.fixture
def torchrun(monkeypatch):
    """Pretend to be process LOCAL_RANK of a torchrun job on a node with 4 GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)

    def launch(local_rank: int, per_node: int):
        for key, value in (("WORLD_SIZE", per_node), ("LOCAL_WORLD_SIZE", per_node),
                           ("LOCAL_RANK", local_rank), ("RANK", local_rank)):
            monkeypatch.setenv(key, str(value))
    return launch


@pytest.mark.parametrize("spec", ["", "auto", "cuda", "0", "cuda:0"])
def test_each_torchrun_process_takes_its_own_gpu(torchrun, spec):
    torchrun(1, 2)
    assert dist.resolve_device(spec) == "cuda:1"


def test_gpu_list_under_torchrun_maps_local_rank_and_refuses_a_mismatch(torchrun):
    torchrun(1, 2)
    assert dist.resolve_device("2,3") == "cuda:3"
    with pytest.raises(ConfigError, match="2 processes per node under torchrun but 1 GPU id"):
        dist.resolve_device("2")
    torchrun(3, 4)
    with pytest.raises(ConfigError, match="4 processes per node under torchrun but 2 GPU id"):
        dist.resolve_device("0,1")


def test_local_rank_beyond_the_visible_gpus_is_refused(torchrun):
    torchrun(5, 6)
    with pytest.raises(ConfigError, match="GPU 5 asked for .* but 4 visible"):
        dist.resolve_device("")


def test_single_gpu_jobs_refuse_several_ids():
    from train.cls import model as cls_model

    for resolve in (cls_model.resolve_device, lambda d: dist.single_device(d, "the UNet")):
        with pytest.raises(ConfigError, match="on one GPU"):
            resolve("0,1")
        assert resolve("cpu") == "cpu"


def test_ultralytics_gets_no_auto_device(tmp_path):
    from train.yolo.adapter import Yolov8Adapter, ultra_device

    assert [ultra_device(d) for d in ("", "auto", "cpu", "0", "0,1", "cuda:1", "cuda")] == \
        [None, None, "cpu", "0", "0,1", "1", "0"]
    fold = types.SimpleNamespace(yolo_yaml=paths.ROOT / "data.yaml")
    auto = registry.load_config("yolov8", ["device=auto"])
    assert Yolov8Adapter().train_args(auto, fold, tmp_path)["device"] is None


def test_resume_of_a_run_saved_without_amp_on_an_amp_scaler(tmp_path):
    """last.pt of a CPU run holds an empty scaler state; an enabled GradScaler refuses it."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    off = torch.amp.GradScaler("cpu", enabled=False)
    checkpoint.save(tmp_path / "last.pt", model, {}, 3, best=0.5, optimizer=opt.state_dict(),
                    scheduler=sched.state_dict(), scaler=off.state_dict())
    on = torch.amp.GradScaler("cpu", enabled=True)
    with pytest.raises(RuntimeError, match="empty"):
        on.load_state_dict(off.state_dict())
    assert checkpoint.restore(tmp_path / "last.pt", "test", model, opt, sched, on) == (4, 0.5)
    assert on.is_enabled() and on.get_scale() == 65536.0


def _crop_dataset(tmp_path, n: int = 16):
    from PIL import Image

    from train.cls.data import CropDataset

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    table = pd.DataFrame({"NAME": ["a.png"] * n, "x1": 5.0, "y1": 5.0, "x2": 35.0, "y2": 35.0, "class": "LY"})
    return CropDataset(table, tmp_path, imgsz=16, margin=0, augment="light")


@pytest.mark.smoke  # starts a process
def test_dataloader_workers_and_epochs_draw_different_augmentations(tmp_path):
    ds = _crop_dataset(tmp_path)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, shuffle=False)
    epochs = [[x[0] for x, *_ in loader] for _ in range(2)]
    # items 0, 2, 4... come from worker 0 and 1, 3, 5... from worker 1: same crop, so only seeds differ
    same_pairs = sum(torch.equal(epochs[0][i], epochs[0][i + 1]) for i in range(0, 16, 2))
    assert same_pairs < 8, "both workers drew the same augmentations"
    assert not all(torch.equal(a, b) for a, b in zip(*epochs)), "epoch 1 repeated epoch 0"


def test_tv_dataset_reseeds_its_pipeline_per_worker(tmp_path, monkeypatch):
    """Two workers (two torch seeds) draw different augmentations of the same images; one seed twice
    draws the same (albumentations keeps its own generator, seeded once at construction otherwise)."""
    import json

    from PIL import Image

    from train import dist
    from train.tv import data as tv_data

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
            "annotations": [{"image_id": 1, "bbox": [8, 8, 30, 20], "category_id": 1}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))

    def draws(seed: int) -> list[torch.Tensor]:
        monkeypatch.setattr(dist, "worker_seed", lambda: seed)
        ds = tv_data.CocoDetection(tmp_path / "c.json", tmp_path, label_offset=1)
        return [ds[0][0] for _ in range(6)]

    first, again, other = draws(1), draws(1), draws(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_medsam_refiner_loads_once_per_process(tmp_path, monkeypatch):
    from train.unet import medsam, post

    ckpt = tmp_path / "medsam.pth"
    ckpt.write_bytes(b"x")
    loads = []
    fake = classmethod(lambda cls, *a, **k: loads.append(a) or "sam")
    monkeypatch.setattr(medsam.MedSam, "from_checkpoint", fake)
    monkeypatch.setattr(post, "_REFINERS", {})
    cfg = types.SimpleNamespace(refine_ckpt=str(ckpt), refine_arch="vit_b", refine_preprocess="medsam")
    for _ in range(3):  # one predictor per validation epoch
        assert post.UnetPredictor(torch.nn.Identity(), cfg).refiner() == "sam"
    assert len(loads) == 1


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=paths.ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.smoke  # a subprocess or a real search: seconds, not the unit tier
def test_kit_trainer_configures_logging_in_a_fresh_ddp_worker():
    out = _python("from cytocore import env; env.apply()\n"
                  "import logging\n"
                  "from train.yolo import trainer\n"
                  "try:\n    trainer.KitTrainer(overrides={'data': 'missing.yaml'})\n"
                  "except Exception:\n    pass\n"
                  "logging.getLogger('train.yolo.trainer').info('epoch 3: challenge 0.5')\n")
    assert "epoch 3: challenge 0.5" in out.stderr, out.stderr[-2000:]


@pytest.mark.smoke  # a subprocess or a real search: seconds, not the unit tier
def test_ultralytics_ddp_state_round_trips_with_cloudpickle(tmp_path):
    """What ultralytics' generate_ddp_file saves (trainer class, args, model, callbacks with the kit's
    EpochEnd) loads in a fresh interpreter, as its DDP workers do."""
    import cloudpickle
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import callbacks
    from ultralytics.utils.patches import torch_save

    from train.yolo.trainer import EpochEnd, KitTrainer

    fold = types.SimpleNamespace(fold=0, val_images=pd.DataFrame({"NAME": ["a.jpg"]}))
    cbs = callbacks.get_default_callbacks()
    cbs["on_model_save"].append(EpochEnd(fold, tmp_path, registry.load_config("yolov8"), "yolov8"))
    state = {"trainer": KitTrainer, "args": {"epochs": 1, "imgsz": 64},
             "model": DetectionModel("yolov8n.yaml", nc=23, verbose=False), "callbacks": cbs}
    torch_save(state, tmp_path / "ddp.pt", pickle_module=cloudpickle)
    out = _python("from cytocore import env; env.apply()\n"
                  "from ultralytics.utils.patches import torch_load\n"
                  f"s = torch_load({str(tmp_path / 'ddp.pt')!r}, map_location='cpu')\n"
                  "cb = s['callbacks']['on_model_save'][-1]\n"
                  "print(s['trainer'].__module__, s['trainer'].__name__, type(cb).__name__, cb.model_name,\n"
                  "      s['model'].yaml['nc'], s['args']['imgsz'])\n")
    expected = ["train.yolo.trainer", "KitTrainer", "EpochEnd", "yolov8", "23", "64"]
    assert out.stdout.split() == expected, out.stderr
