"""The checks of ``make gpu-check`` (``bench.gpu_check`` runs them in order, against a deadline).

Each function does one check on ``device`` and returns a one-line result, or
raises (the runner records the error as FAIL). All data is synthetic and all
weights random: the checks are about code paths, memory and speed, not accuracy.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cytokit import paths


def _steps(model: torch.nn.Module, loss_of: Callable[[torch.nn.Module], torch.Tensor], device: str,
           steps: int, lr: float = 0.01) -> str:
    """``steps`` optimiser steps with AMP on CUDA (autocast + GradScaler); loss finite, weights moved."""
    model.to(device).train()
    amp = device.startswith("cuda")
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", enabled=amp):
            loss = loss_of(model)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss {float(loss)} after {len(losses)} step(s)")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    moved = max(float((a.float() - b.float()).abs().max()) for a, b in zip(after, before))
    if not moved > 0:
        raise AssertionError(f"weights unchanged after {steps} steps (AMP scaler skipped every step?)")
    return f"{steps} steps, AMP {'on' if amp else 'off (CPU)'}, loss {losses[0]:.3f} -> {losses[-1]:.3f}, " \
           f"largest weight change {moved:.2e}"


def _boxes(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    xy = rng.uniform(0, size * 0.6, (n, 2))
    return np.c_[xy, xy + rng.uniform(size * 0.15, size * 0.4, (n, 2))].astype(np.float32)


def amp_yolo(device: str, steps: int, imgsz: int, batch: int) -> str:
    """YOLOv8n (ultralytics' model and loss) on random images with 2 boxes each."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=23, verbose=False)
    model.args = get_cfg()
    rng = np.random.default_rng(0)
    boxes = _boxes(rng, 2 * batch, imgsz) / imgsz
    xywh = np.c_[(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]]
    data = {"img": torch.rand(batch, 3, imgsz, imgsz, device=device),
            "batch_idx": torch.arange(batch, device=device).repeat_interleave(2).float(),
            "cls": torch.as_tensor(rng.integers(0, 23, (2 * batch, 1)), device=device).float(),
            "bboxes": torch.as_tensor(xywh, device=device)}
    return _steps(model, lambda m: m.loss(data)[0].sum(), device, steps)


def amp_tv(arch: str, device: str, steps: int, imgsz: int, batch: int) -> str:
    """A torchvision detector through the kit's ONE loop (``train.tv.engine.train_one_epoch``)."""
    from train import registry
    from train.tv.adapter import build_model
    from train.tv.engine import train_one_epoch

    torch.manual_seed(0)
    cfg = registry.load_config("fasterrcnn", [f"imgsz={imgsz}", f"max_size={imgsz}", "pretrained=none"])
    model = build_model(arch, cfg).to(device)
    rng = np.random.default_rng(0)
    offset = 1 if arch.startswith("fasterrcnn") else 0
    loader = [(tuple(torch.rand(3, imgsz, imgsz) for _ in range(batch)),
               tuple({"boxes": torch.as_tensor(_boxes(rng, 2, imgsz)),
                      "labels": torch.as_tensor(rng.integers(0, 23, 2) + offset)} for _ in range(batch)))
              for _ in range(steps)]
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    row = train_one_epoch(model, opt, sched, scaler, loader, device, 0, 1, clip_grad=10.0, use_amp=amp)
    moved = max(float((p.detach() - b).abs().max()) for p, b in
                zip([p for p in model.parameters() if p.requires_grad], before))
    if not (np.isfinite(row["train_loss"]) and moved > 0):
        raise AssertionError(f"loss {row['train_loss']}, largest weight change {moved}")
    return f"{steps} steps of train_one_epoch, AMP {'on' if amp else 'off (CPU)'}, mean loss " \
           f"{row['train_loss']:.3f}, largest weight change {moved:.2e}"


def amp_unet(device: str, steps: int, imgsz: int, batch: int) -> str:
    """The UNet (configs/unet.yaml architecture) with the kit's CE + Dice loss."""
    from cytokit import config
    from train.unet.adapter import UnetConfig, build_model, loss_fn

    cfg = config.load(UnetConfig, paths.CONFIGS / "unet.yaml", {"device": "cpu"})
    torch.manual_seed(0)
    x = torch.rand(batch, 3, imgsz, imgsz, device=device)
    y = torch.randint(0, 24, (batch, imgsz, imgsz), device=device)
    return _steps(build_model(cfg), lambda m: loss_fn(m(x), y, cfg.dice_weight), device, steps)


def amp_cls(device: str, steps: int, imgsz: int, batch: int) -> str:
    """The crop classifier (configs/cls.yaml backbone) with the kit's soft-target loss."""
    from train import registry
    from train.cls import model as cls_model

    cfg = registry.load_config("cls")
    torch.manual_seed(0)
    x = torch.rand(batch, 3, imgsz, imgsz, device=device)
    target = torch.nn.functional.one_hot(torch.arange(batch, device=device) % 23, 23).float()
    size = torch.zeros(batch, 2, device=device)  # box-size features of a box_size head
    model = cls_model.build_model(cfg.backbone, box_size=cfg.box_size)
    return _steps(model, lambda m: cls_model.soft_loss(cls_model.forward(m, x, size), target, cfg.loss),
                  device, steps, lr=0.001)


def synthetic_data(work: Path, images: int = 24) -> Path:
    """A synthetic smear data set with 2 folds prepared (``make demo-data`` + ``make folds``)."""
    data = work / "data"
    for args in (["prepare.synth", "--out", str(data), "--images", str(images), "--seed", "0"],
                 ["prepare.folds", "--data", str(data), "--k", "2", "--seed", "0"]):
        run_cli(args, work, 300)
    return data


def run_cli(args: list[str], work: Path, timeout: float, launcher: list[str] | None = None,
            env: dict | None = None) -> str:
    """``python -m ...`` (or under ``launcher``) with ``CYTOKIT_WORK=work``; its output, or an error."""
    cmd = [*(launcher or [sys.executable]), "-m", *args]
    full = {**os.environ, "CYTOKIT_WORK": str(work / "work"), "PYTHONPATH": str(paths.ROOT), **(env or {})}
    done = subprocess.run(cmd, cwd=paths.ROOT, env=full, capture_output=True, text=True,
                          timeout=max(timeout, 10))
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(args[:3])} exited {done.returncode}: {' | '.join(tail)}")
    return done.stdout


def train_e2e(work: Path, data: Path, model: str, device: str, timeout: float, extra: list[str] = (),
              launcher: list[str] | None = None) -> str:
    """``python -m train`` one epoch on the synthetic fold 0: the real trainer, checkpoint, OOF and score."""
    out = run_cli(["train", "--model", model, "--fold", "0", "--data", str(data), "--k", "2", "--seed", "0",
                   "--force", "epochs=1", f"device={device}", *extra], work, timeout, launcher)
    line = [ln for ln in out.splitlines() if "challenge" in ln]
    if not line:
        raise AssertionError(f"{model}: no challenge score printed")
    return line[-1].split(" -> ")[0]


def predict_agreement(work: Path, data: Path, device: str) -> str:
    """The trained yolov8 of ``train_e2e`` predicting on ``device`` vs the CPU (autocast vs fp32)."""
    from cytokit.images import load_rgb
    from infer import predict, tta

    weights = work / "work" / "runs" / "yolov8" / "fold0" / "best.pt"  # what train_e2e wrote
    names = sorted(p.name for p in (data / "images").iterdir())[:8]
    pairs = [(n, load_rgb(data / "images" / n)) for n in names]
    views = tta.get_views(["identity", "hflip"])
    # one epoch barely moves the prior of the class scores (~1e-4): a threshold that keeps boxes to compare
    tables = [predict.predict_arrays(predict.load_member("yolov8", 0, weights, d), pairs, views, "yolov8", 0,
                                     conf=1e-5) for d in (device, "cpu")]
    if not (len(tables[0]) and len(tables[1])):
        raise AssertionError(f"no boxes to compare ({len(tables[0])} on {device}, {len(tables[1])} on CPU)")
    gpu, cpu = (t.sort_values("score", ascending=False).head(20) for t in tables)
    n = min(len(gpu), len(cpu))
    diff = float(np.abs(gpu["score"].to_numpy()[:n] - cpu["score"].to_numpy()[:n]).max(initial=0))
    return f"{len(tables[0])} rows on {device}, {len(tables[1])} on CPU; top-20 score difference {diff:.1e}"


def throughput(device: str, batch: int, n: int, folder: Path) -> list[str]:
    """Images per second of each member kind at its default size, ``batch`` images per call."""
    from bench.bench_infer import random_weights
    from bench.bench_overhead import smears
    from infer import predict

    images = smears(n)
    out = []
    for model in ("yolov5", "yolov8", "yolo11", "fasterrcnn_mobilenet", "fasterrcnn", "retinanet"):
        p = predict.load_member(model, 0, random_weights(model, folder), device, [f"predict_batch={batch}"])
        p.predict(images[:batch])
        out.append(f"{model} {_rate(lambda p=p: p.predict(images), n, device):.3g} img/s")
    from train import registry
    from train.cls import model as cls_model
    from train.cls.adapter import ClassifierPredictor

    cls_cfg = registry.load_config("cls", [f"batch={batch}", "pretrained=none"])
    cls = ClassifierPredictor(cls_model.build_model("efficientnet_b0"), cls_cfg, device)
    crops = np.stack([im[:224, :224] for im in images])
    out.append(f"cls efficientnet_b0 x3 views {_rate(lambda: cls.classify(crops), n, device):.3g} crops/s")
    return out


def _rate(fn: Callable[[], object], n: int, device: str) -> float:
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def tensorrt_missing() -> str | None:
    """Why the TensorRT step cannot run here, or None."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed (pip install tensorrt matching the CUDA build)"
    return None


def tensorrt_yolo(work: Path, imgsz: int = 384, batch: int = 2) -> str:
    """A TensorRT fp16 engine of YOLOv8n from the kit's ONNX export: its difference to torch and latency."""
    import tensorrt as trt

    from bench.bench_backends import yolo_weights
    from infer import export, predict

    weights = yolo_weights(work / "trt", 0)
    member = predict.load_member("yolov8", 0, weights, "cpu", [f"imgsz={imgsz}"])
    x = torch.rand(batch, 3, imgsz, imgsz)
    onnx = export.write_onnx(export._Head(member.model).eval(), x, weights.with_suffix(".onnx"))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.read_bytes()):
        raise RuntimeError(f"TensorRT cannot parse the ONNX export: {parser.get_error(0)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, imgsz, imgsz), (batch, 3, imgsz, imgsz), (32, 3, imgsz, imgsz))
    config.add_optimization_profile(profile)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT built no engine")
    build_s = time.perf_counter() - start
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    ctx = engine.create_execution_context()
    inp = x.cuda().contiguous()
    ctx.set_input_shape("input", tuple(inp.shape))
    out = torch.empty(tuple(ctx.get_tensor_shape("output")), device="cuda", dtype=torch.float32)
    ctx.set_tensor_address("input", inp.data_ptr())
    ctx.set_tensor_address("output", out.data_ptr())
    stream = torch.cuda.current_stream()

    def infer() -> None:
        ctx.execute_async_v3(stream.cuda_stream)
        stream.synchronize()

    infer()
    with torch.inference_mode():
        ref = member.model.cuda()(inp)
    ref = (ref[0] if isinstance(ref, (list, tuple)) else ref).float()
    diff = float((out[:, 4:] - ref[:, 4:]).abs().max())
    ms = 1000 / _rate(infer, 1, "cuda")
    return (f"TensorRT {trt.__version__}: engine built in {build_s:.0f} s, batch {batch} at {imgsz} px "
            f"{ms:.2f} ms per call, largest class-score difference to torch fp32 {diff:.1e}")


def medsam(device: str, runs: int = 5) -> str:
    """MedSAM ViT-B (random weights): one 1024 px image embedding plus a box decode, median of ``runs``."""
    from train.unet.medsam import MedSam, build_sam

    torch.manual_seed(0)
    model = MedSam(build_sam(), device=device)
    image = np.random.default_rng(0).integers(0, 255, (360, 368, 3), dtype=np.uint8)
    box = [np.array([[100.0, 100.0, 260.0, 250.0]])]
    model.segment([image], box)
    times = []
    for _ in range(runs):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.segment([image], box)
        times.append(1000 * (time.perf_counter() - start))
    precision = "fp16 autocast" if device.startswith("cuda") else "fp32"
    return f"{np.median(times):.0f} ms per image (embedding + 1 box, {precision}), median of {runs}"
