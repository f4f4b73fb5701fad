"""``make gpu-check``: one prepared run of every CUDA code path of the kit, in at most 8 minutes.

    python -m bench.gpu_check [--budget 480] [--json FILE] [--recipe configs/recipe.yaml] [--device cpu]

On a CUDA machine, in order (each step timed; a step that fails is recorded
and the run goes on; a step that would pass the deadline is skipped and named):

1. /dev/shm against what the recipe's training jobs hold in DataLoader batches
   (its jobs at once x workers x batch; Docker's default 64 MB fails here, not
   an hour into ``make all``).
2. AMP training steps of each model family on synthetic data: YOLOv8 (ultralytics'
   model and loss), Faster R-CNN and RetinaNet (the kit's torchvision loop), the
   UNet and the crop classifier: loss finite, weights changed.
3. The real trainers, one epoch on a generated smear set (``make demo-data`` +
   ``make folds``, enough images that every DataLoader worker starts): the
   recipe's first detector and its classifier with the recipe's image size,
   batch and workers (random initial weights), and fasterrcnn_mobilenet, on GPU
   0 (AMP check, checkpoints, out-of-fold score).
4. DDP: ``torchrun`` over the visible GPUs (fasterrcnn_mobilenet, NCCL) and
   ultralytics' own DDP (``device=0,1``); needs 2 GPUs.
5. Prediction of that detector (its run folder found through ``cytocore.dataset``,
   as every step of the kit finds it) on the GPU against the CPU.
6. The recipe's ensemble (``pipeline.recipe.ensemble_values``: every member x
   fold with its TTA views, the fusion, every classifier fold with its flips) on
   random weights, per-image latency against the challenge's 500 ms rule.
7. Batch-32 throughput of each member kind.
8. A TensorRT fp16 engine of YOLOv8n, where the ``tensorrt`` package is installed.
9. MedSAM ViT-B embedding time.

Then one table. Without CUDA (or with ``--device cpu``) every step but the
GPU-only ones (fasterrcnn_mobilenet's epoch, DDP, TensorRT) runs on the CPU at
tiny sizes (AMP off; two folds of the recipe's ensemble; the tests run it), so
a wrong path or a broken step shows on any machine. Exit status 1 when a step
failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cytocore import config as kit_config
from cytocore import env, io, paths

RECIPE = paths.CONFIGS / "recipe.yaml"  # the recipe whose sizes and ensemble the check uses
BUDGET_S = 480  # the whole check, seconds
RULE_MS = 500.0  # the challenge's per-image rule


@dataclasses.dataclass
class Row:
    step: str
    status: str  # ok | FAIL | skipped
    seconds: float
    result: str


class Runner:
    """Runs steps in order against a deadline; collects one ``Row`` per step."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.deadline = clock() + budget_s
        self.rows: list[Row] = []
        self.state: dict = {}

    def left(self) -> float:
        return self.deadline - self.clock()

    def step(self, name: str, fn: Callable[[], str | list[str]], needs: str | None = None, min_s: float = 5.0,
             after: str | None = None) -> None:
        """Run ``fn`` unless ``needs`` (a reason) is set, ``after`` (a step) did not pass, or time is
        short."""
        if needs:
            self.rows.append(Row(name, "skipped", 0.0, needs))
            return
        if after and not any(r.step == after and r.status == "ok" for r in self.rows):
            self.rows.append(Row(name, "skipped", 0.0, f"needs the step '{after}'"))
            return
        if self.left() < min_s:
            reason = f"out of time ({self.left():.0f} s left, needs ~{min_s:.0f})"
            self.rows.append(Row(name, "skipped", 0.0, reason))
            return
        start = self.clock()
        try:
            out = fn()
            status, text = "ok", "; ".join(out) if isinstance(out, list) else str(out)
        except Exception as exc:  # a failed check is a result, not the end of the run
            status, text = "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self.rows.append(Row(name, status, self.clock() - start, text))
        print(f"[{status}] {name} ({self.rows[-1].seconds:.0f} s): {text}", flush=True)

    def table(self) -> str:
        width = max(len(r.step) for r in self.rows)
        lines = [f"{'step':<{width}}  {'status':<7}  {'s':>5}  result", "-" * (width + 40)]
        lines += [f"{r.step:<{width}}  {r.status:<7}  {r.seconds:5.0f}  {r.result}" for r in self.rows]
        return "\n".join(lines)


def environment() -> str:
    import platform

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return (f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"{len(gpus)} GPU(s) {', '.join(gpus) or '-'}; {platform.machine()} CPU, "
            f"{torch.get_num_threads()} threads")


def run_checks(budget_s: float, work: Path, device: str | None = None,
               recipe_path: Path = RECIPE) -> Runner:
    """Every step of the module docstring on ``device`` (default: cuda:0 when there is CUDA); on the CPU
    at tiny sizes, the GPU-only steps skipped."""
    from bench import gpu_steps as s
    from pipeline import recipe as recipes

    rec = recipes.load(recipe_path)
    cuda = torch.cuda.is_available() and not (device or "").startswith("cpu")
    gpus = torch.cuda.device_count() if cuda else 0
    dev = device or ("cuda:0" if cuda else "cpu")
    train_dev = dev.removeprefix("cuda:") if cuda else "cpu"
    no_cuda = None if cuda else "needs CUDA"
    two = None if gpus >= 2 else f"needs 2 GPUs ({gpus} visible)"
    tiny = not cuda
    big = (8, 256, 3) if cuda else (2, 64, 2)  # batch, imgsz, steps of the AMP steps
    det, cls = rec.detector_list()[0], (rec.classifier_list() or [None])[0]
    det_args = s.train_overrides(det, "detector", tiny)
    cls_args = s.train_overrides(cls, "classifier", tiny) if cls else []
    given = kit_config.parse_overrides(det_args)
    images = s.synthetic_images(int(given.get("workers", 0)), int(given.get("batch", 1)))
    r = Runner(budget_s)
    r.step("environment", environment)
    r.step(f"/dev/shm for {recipe_path.name}", lambda: s.shm_check(rec))
    r.step("AMP yolov8", lambda: s.amp_yolo(dev, big[2], big[1], big[0]), min_s=10)
    arch = "fasterrcnn_resnet50_fpn_v2" if cuda else "fasterrcnn_mobilenet_v3_large_fpn"
    r.step(f"AMP {arch}", lambda: s.amp_tv(arch, dev, big[2], max(big[1], 128), big[0] // 2), min_s=15)
    r.step("AMP retinanet_resnet50_fpn_v2", lambda: s.amp_tv("retinanet_resnet50_fpn_v2", dev, big[2],
                                                              max(big[1], 128), big[0] // 2), min_s=15)
    r.step("AMP unet", lambda: s.amp_unet(dev, big[2], big[1], big[0]), min_s=10)
    r.step("AMP classifier", lambda: s.amp_cls(dev, big[2], 224 if cuda else 32, 4 * big[0]), min_s=10)
    data_step = "synthetic data + folds"
    r.step(data_step, lambda: str(r.state.setdefault("data", s.synthetic_data(work, 24 if tiny else images))),
           min_s=40)
    data = r.state.get("data")
    shown = " ".join(a for a in det_args if a.startswith(("imgsz=", "batch=", "workers=")))
    train_det = f"train {det.model} ({shown}), 1 epoch"
    r.step(train_det, lambda: s.train_e2e(work, data, det.model, train_dev, r.left() - 5, det_args),
           min_s=60, after=data_step)
    if cls:
        shown = " ".join(a for a in cls_args if a.startswith(("imgsz=", "batch=", "workers=")))
        r.step(f"train {cls.model} ({shown}), 1 epoch",
               lambda: s.train_e2e(work, data, cls.model, train_dev, r.left() - 5, cls_args),
               min_s=45, after=train_det)
    r.step("train fasterrcnn_mobilenet, 1 epoch",
           lambda: s.train_e2e(work, data, "fasterrcnn_mobilenet", "0", r.left() - 5,
                               ["imgsz=256", "batch=4", "workers=2"]),
           needs=no_cuda, min_s=45, after=data_step)
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    r.step(f"DDP torchrun x{gpus} fasterrcnn_mobilenet",
           lambda: s.train_e2e(work, data, "fasterrcnn_mobilenet", "", r.left() - 5,
                               ["imgsz=256", "batch=4", "workers=2"], launcher=run),
           needs=no_cuda or two, min_s=60, after=data_step)
    r.step("DDP ultralytics yolov8 device=0,1",
           lambda: s.train_e2e(work, data, "yolov8", ",".join(map(str, range(gpus))), r.left() - 5,
                               ["imgsz=256", "batch=16", "workers=2", "plots=false"]),
           needs=no_cuda or two, min_s=90, after=data_step)
    r.step(f"predict {det.model} on {dev} vs CPU", lambda: s.predict_agreement(work, data, dev, det.model),
           min_s=15, after=train_det)
    r.step(f"{recipe_path.name} ensemble latency",
           lambda: s.recipe_latency(rec, dev, work / "latency", 2 if tiny else 16, tiny, RULE_MS), min_s=30)
    r.step(f"batch-{32 if cuda else 2} throughput",
           lambda: s.throughput(dev, 32 if cuda else 2, 64 if cuda else 2, work), min_s=30)
    r.step("TensorRT fp16 YOLOv8n", lambda: s.tensorrt_yolo(work), needs=no_cuda or s.tensorrt_missing(),
           min_s=60)
    r.step("MedSAM ViT-B embedding", lambda: s.medsam(dev, 5 if cuda else 1), min_s=20)
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--recipe", type=Path, default=RECIPE,
                        help="the recipe whose ensemble, image sizes, workers and batches are checked")
    parser.add_argument("--device", help="cuda:0 (default with CUDA) or cpu (every step at tiny sizes)")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    if not torch.cuda.is_available() or (args.device or "").startswith("cpu"):
        print("no CUDA device: the reduced CPU version (AMP off, small sizes; GPU-only steps skipped)"
              if not torch.cuda.is_available() else "--device cpu: every step on the CPU at tiny sizes")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        runner = run_checks(args.budget, Path(tmp), args.device, args.recipe)
    print(runner.table())
    if args.json:
        io.atomic_write_text(args.json, json.dumps([dataclasses.asdict(r) for r in runner.rows], indent=2))
    return 1 if any(r.status == "FAIL" for r in runner.rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
