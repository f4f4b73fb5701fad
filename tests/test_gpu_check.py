"""make gpu-check: the step runner (deadline, failures, skips) and its reduced run on the CPU (slow tier)."""
from __future__ import annotations

import json

import pytest
import torch

from bench import gpu_check

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
    code = gpu_check.main(["--budget", "900", "--json", str(tmp_path / "check.json")])
    rows = {r["step"]: r for r in json.loads((tmp_path / "check.json").read_text())}
    assert code == 0, capsys.readouterr().out[-3000:]
    for step in ("AMP yolov8", "AMP fasterrcnn_mobilenet_v3_large_fpn", "AMP retinanet_resnet50_fpn_v2",
                 "AMP unet", "AMP classifier", "default ensemble + TTA + classifier latency",
                 "batch-2 throughput", "MedSAM ViT-B embedding"):
        assert rows[step]["status"] == "ok", rows[step]
    assert "weight change" in rows["AMP yolov8"]["result"] and "AMP off (CPU)" in rows["AMP unet"]["result"]
    for step in ("train yolov8, 1 epoch", "DDP ultralytics yolov8 device=0,1", "TensorRT fp16 YOLOv8n"):
        assert rows[step]["status"] == "skipped" and "needs CUDA" in rows[step]["result"]
    assert "no CUDA device: the reduced CPU version" in capsys.readouterr().out
