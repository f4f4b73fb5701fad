"""make gpu-check: the step runner (deadline, failures, skips), the recipe's sizes, /dev/shm, its steps on the
CPU at tiny sizes (smoke: the run folder found as the kit finds it) and its reduced run (slow tier)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from bench import gpu_steps as steps
from cytocore import paths, resources
from pipeline import recipe

RECIPE = paths.CONFIGS / "recipe.yaml"

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_runner_records_failures_skips_and_the_deadline():
    clock = Clock()
    r = gpu_check.Runner(100, clock)

    def slow():
        clock.t += 80
        return ["a", "b"]

    r.step("first", slow)
    r.step("broken", lambda: 1 / 0)
    r.step("needs a GPU", lambda: "x", needs="needs CUDA")
    r.step("after broken", lambda: "x", after="broken")
    r.step("too long", lambda: "x", min_s=30)
    r.step("short", lambda: "fits", min_s=5)
    got = [(row.step, row.status, row.result) for row in r.rows]
    assert got == [("first", "ok", "a; b"), ("broken", "FAIL", "ZeroDivisionError: division by zero"),
                   ("needs a GPU", "skipped", "needs CUDA"),
                   ("after broken", "skipped", "needs the step 'broken'"),
                   ("too long", "skipped", "out of time (20 s left, needs ~30)"), ("short", "ok", "fits")]
    assert r.rows[0].seconds == 80 and "too long" in r.table()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the reduced CPU run (on a GPU: make gpu-check)")
def test_reduced_run_on_the_cpu(tmp_path, capsys):
    code = gpu_check.main(["--budget", "1800", "--json", str(tmp_path / "check.json")])
    rows = {r["step"]: r for r in json.loads((tmp_path / "check.json").read_text())}
    assert code == 0, capsys.readouterr().out[-3000:]
    for step in ("/dev/shm for recipe.yaml", "AMP yolov8", "AMP fasterrcnn_mobilenet_v3_large_fpn",
                 "AMP retinanet_resnet50_fpn_v2", "AMP unet", "AMP classifier", "synthetic data + folds",
                 "train yolov8 (imgsz=64 batch=2 workers=1), 1 epoch",
                 "train cls (imgsz=32 batch=4 workers=1), 1 epoch", "predict yolov8 on cpu vs CPU",
                 "recipe.yaml ensemble latency", "batch-2 throughput", "MedSAM ViT-B embedding"):
        assert rows[step]["status"] == "ok", rows[step]
    assert "weight change" in rows["AMP yolov8"]["result"] and "AMP off (CPU)" in rows["AMP unet"]["result"]
    assert "yolov8 x2, yolo11 x2 + cls x2" in rows["recipe.yaml ensemble latency"]["result"]
    for step in ("train fasterrcnn_mobilenet, 1 epoch", "DDP ultralytics yolov8 device=0,1",
                 "TensorRT fp16 YOLOv8n"):
        assert rows[step]["status"] == "skipped" and "needs CUDA" in rows[step]["result"]
    assert "no CUDA device: the reduced CPU version" in capsys.readouterr().out


def test_the_training_check_uses_the_recipes_sizes_and_workers():
    rec = recipe.load(RECIPE)
    det, cls = rec.detector_list()[0], rec.classifier_list()[0]
    args = steps.train_overrides(det, "detector", tiny=False)
    for given in ("size=s", "imgsz=512", "batch=32", "workers=8", "epochs=1", "pretrained=none"):
        assert given in args
    assert sum(a.startswith("epochs=") for a in args) == 1
    assert {"imgsz=224", "batch=64", "workers=8", "val_detector=yolov8"} <= set(
        steps.train_overrides(cls, "classifier", tiny=False))
    assert {"imgsz=64", "batch=2", "workers=1", "size=n"} <= set(steps.train_overrides(det, "detector", True))
    # one fold's training part (3/4 of the images are train, half of those per fold) holds 9 batches of
    # 32, so that ultralytics starts all 8 workers (it starts no more workers than batches)
    assert steps.synthetic_images(8, 32) == -(-9 * 32 * 8 // 3)


@dataclasses.dataclass
class FakeLimits(resources.Limits):
    shm: int | None = None

    def shm_bytes(self) -> int | None:
        return self.shm


def test_shm_is_checked_against_the_recipes_workers_and_batches(tmp_path):
    rec = recipe.load(RECIPE)
    limits = FakeLimits(root=tmp_path, env={}, affinity=16, shm=64 * resources.MIB)  # Docker's default
    image = 3 * 512 * 512  # uint8 YOLO images at the recipe's imgsz
    yolo = 8 * 4 * 32 * image + 16 * 2 * 64 * image  # train loader (8 workers x 4) + val (16 x 2, batch 64)
    crops = 8 * 2 * 64 * 3 * 224 * 224 * 4  # float32 crops, 8 workers x 2 batches of 64
    assert steps.shm_need(rec, 16) == [("yolov8", yolo), ("yolo11", yolo), ("cls", crops)]
    with pytest.raises(RuntimeError, match="Bus error.*--shm-size"):
        steps.shm_check(rec, limits)
    limits.shm = 32 * resources.GIB
    assert "the recipe needs up to 2.2 GiB (1 job(s) x yolov8" in steps.shm_check(rec, limits)
    four = dataclasses.replace(rec, jobs=4)  # JOBS=4: four jobs' batches at once, each with 4 of 16 cores
    assert steps.shm_need(four, 4)[0][1] == 4 * 4 * 32 * image + 4 * 2 * 64 * image
    assert f"({4} job(s) x yolov8" in steps.shm_check(four, limits)


@pytest.mark.smoke  # starts processes: prepare.synth, prepare.folds, python -m train
def test_data_train_and_predict_steps_on_the_cpu(tmp_path):
    """The chain whose run path was wrong: the detector's run folder is where the kit puts it."""
    rec = recipe.load(RECIPE)
    det = rec.detector_list()[0]
    data = steps.synthetic_data(tmp_path, 16)
    out = steps.train_e2e(tmp_path, data, det.model, "cpu", 600, steps.train_overrides(det, "detector", True))
    assert out.startswith(f"{det.model} fold 0: challenge")
    run = steps.run_dir(tmp_path, data, det.model)
    assert run.parent.parent.name.startswith("data-") and (run / "best.pt").is_file()
    assert "rows on cpu" in steps.predict_agreement(tmp_path, data, "cpu", det.model)
    assert Path(paths.work_dir()) != tmp_path / "work"  # the step left this process's work folder alone


@pytest.mark.smoke  # seconds: the recipe's ensemble at tiny sizes
def test_latency_measures_the_recipes_ensemble(tmp_path):
    line = steps.recipe_latency(recipe.load(RECIPE), "cpu", tmp_path, 1, tiny=True)
    assert "for yolov8 x2, yolo11 x2 + cls x2, views identity+hflip+vflip" in line
    assert "ms per image" in line and "(tiny sizes)" in line
