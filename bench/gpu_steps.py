"""The checks of ``make gpu-check`` (``bench.gpu_check`` runs them in order, against a deadline).

Each function does one check on ``device`` and returns a one-line result, or
raises (the runner records the error as FAIL). All data is synthetic and all
weights random: the checks are about code paths, memory and speed, not accuracy.
"""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytocore import paths
from cytocore.classes import NUM_CLASSES as NC


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
    model = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    model.args = get_cfg()
    rng = np.random.default_rng(0)
    boxes = _boxes(rng, 2 * batch, imgsz) / imgsz
    xywh = np.c_[(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]]
    data = {"img": torch.rand(batch, 3, imgsz, imgsz, device=device),
            "batch_idx": torch.arange(batch, device=device).repeat_interleave(2).float(),
            "cls": torch.as_tensor(rng.integers(0, NC, (2 * batch, 1)), device=device).float(),
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
                      "labels": torch.as_tensor(rng.integers(0, NC, 2) + offset)} for _ in range(batch)))
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
    from cytocore import config
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
    target = torch.nn.functional.one_hot(torch.arange(batch, device=device) % NC, NC).float()
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


@contextlib.contextmanager
def work_env(work: Path) -> Iterator[Path]:
    """``CYTOKIT_WORK`` as ``run_cli`` gives it to the steps' subprocesses (``work/work``), in this
    process too, so that ``cytocore.dataset`` / ``cytocore.paths`` find what they wrote."""
    before = os.environ.get("CYTOKIT_WORK")
    os.environ["CYTOKIT_WORK"] = str(work / "work")
    try:
        yield work / "work"
    finally:
        if before is None:
            os.environ.pop("CYTOKIT_WORK", None)
        else:
            os.environ["CYTOKIT_WORK"] = before


def run_dir(work: Path, data: Path, model: str, fold: int = 0) -> Path:
    """The run folder ``python -m train`` wrote for ``model`` fold ``fold`` of the synthetic data (the
    prepared dataset's id, as every step of the kit finds it)."""
    from cytocore import dataset

    with work_env(work):
        return dataset.resolve(data, 2, 0).run_dir(model, fold)


def predict_agreement(work: Path, data: Path, device: str, model: str = "yolov8") -> str:
    """The detector ``train_e2e`` trained predicting on ``device`` vs the CPU (autocast vs fp32)."""
    from cytocore.images import load_rgb
    from infer import predict, tta

    weights = run_dir(work, data, model) / paths.BEST
    names = sorted(p.name for p in (data / "images").iterdir())[:8]
    pairs = [(n, load_rgb(data / "images" / n)) for n in names]
    views = tta.get_views(["identity", "hflip"])
    # one epoch barely moves the prior of the class scores (~1e-4): a threshold that keeps boxes to compare
    tables = [predict.predict_arrays(predict.load_member(model, 0, weights, d), pairs, views, model, 0,
                                     conf=1e-5) for d in (device, "cpu")]
    if not (len(tables[0]) and len(tables[1])):
        raise AssertionError(f"no boxes to compare ({len(tables[0])} on {device}, {len(tables[1])} on CPU)")
    gpu, cpu = (t.sort_values("score", ascending=False).head(20) for t in tables)
    n = min(len(gpu), len(cpu))
    diff = float(np.abs(gpu["score"].to_numpy()[:n] - cpu["score"].to_numpy()[:n]).max(initial=0))
    return f"{model}: {len(tables[0])} rows on {device}, {len(tables[1])} on CPU; top-20 score difference " \
           f"{diff:.1e}"


def with_values(overrides: list[str], **values: Any) -> list[str]:
    """``overrides`` with the keys of ``values`` replaced (or added)."""
    kept = [o for o in overrides if o.partition("=")[0].strip() not in values]
    return [*kept, *(f"{k}={v}" for k, v in values.items())]


TINY = {"detector": {"imgsz": 64, "batch": 2, "workers": 1, "size": "n"},  # the CPU test's sizes
        "classifier": {"imgsz": 32, "batch": 4, "workers": 1}}


def train_overrides(member: Any, kind: str, tiny: bool) -> list[str]:
    """A recipe member's overrides for a one-epoch check: its own image size, batch and workers (the
    tiny ones of ``TINY`` on the CPU), random initial weights, no plots."""
    extra = {"epochs": 1, "pretrained": "none", **({"plots": "false"} if kind == "detector" else {})}
    return with_values(list(member.overrides), **extra, **(TINY[kind] if tiny else {}))


def synthetic_images(workers: int, batch: int, k: int = 2, test_fraction: float = 0.25) -> int:
    """Synthetic images for the training check: one fold's training part holds ``workers + 1`` batches,
    so that ultralytics starts every worker the recipe asks for (it starts no more than batches)."""
    return max(24, math.ceil((workers + 1) * batch / ((1 - test_fraction) * (k - 1) / k)))


def random_run(model: str, overrides: list[str], folder: Path, fold: int, name: str = "") -> Path:
    """A run folder of random weights of ``model`` with its resolved config (``config.yaml``), as a real
    run has it: ``folder/<name>/fold<fold>/best.pt`` (``name``: the member's, default the model). YOLO
    heads are spread out so that boxes score above the ensemble's threshold (something to fuse and
    classify)."""
    from cytocore import config as kit_config
    from train import checkpoint, registry

    cfg = registry.load_config(model, list(overrides))
    out = folder / (name or model) / f"fold{fold}"
    out.mkdir(parents=True, exist_ok=True)
    kit_config.save(cfg, out / paths.CONFIG)
    path = out / paths.BEST
    torch.manual_seed(fold)
    if model in ("yolov5", "yolov8", "yolo11"):
        from bench.bench_backends import noisy_yolo
        from bench.bench_infer import ULTRA

        torch.save({"model": noisy_yolo(ULTRA[model].format(size=cfg.size), fold)}, path)
    elif model in ("cls", "cls_full"):
        from train.cls import model as cls_model

        net = cls_model.build_model(cfg.backbone, box_size=cfg.box_size)
        checkpoint.save(path, net, kit_config.to_dict(cfg), 0, metric=0.0)
    else:
        torch.save(registry.get(model)().build(cfg).state_dict(), path)
    return path


def recipe_ensemble(recipe: Any, folder: Path, device: str, tiny: bool) -> tuple[Any, str]:
    """The recipe's ensemble (``pipeline.recipe.ensemble_values``: its members, folds, TTA views and
    classifier) on random weights written under ``folder``; tiny: two folds at ``TINY`` sizes."""
    import types

    from cytocore import config as kit_config
    from infer.config import EnsembleConfig
    from pipeline.recipe import ensemble_values

    dets, clss = recipe.detector_list(), recipe.classifier_list()
    folds = {m.name: (m.folds[:2] if tiny else m.folds) for m in dets + clss}
    for kind, members in (("detector", dets), ("classifier", clss)):
        for m in members:
            overrides = with_values(list(m.overrides), **(TINY[kind] if tiny else {}))
            for f in folds[m.name]:
                random_run(m.model, overrides, folder, f, m.name)
    stub = types.SimpleNamespace(k=recipe.k, seed=recipe.seed)
    values = ensemble_values(recipe, stub, {m.name: folds[m.name] for m in dets},
                             {m.name: folds[m.name] for m in clss})
    template = str(folder / "{name}" / "fold{fold}" / "best.pt")
    for m in values["members"]:
        m["weights"] = template
    for m in (values.get("classifier") or {}).get("members", []):
        m["weights"] = template
    cfg = kit_config.from_dict(EnsembleConfig, {**values, "device": device}, "the recipe's ensemble")
    sizes = ", ".join(f"{m.name} x{len(m.folds)}" for m in cfg.member_list())
    section = cfg.classifier_section()
    cls = f" + {', '.join(f'{c.name} x{len(c.folds)}' for c in section.members)}" if section else ""
    return cfg, f"{sizes}{cls}, views {'+'.join(cfg.tta)}"


def recipe_latency(recipe: Any, device: str, folder: Path, n_images: int, tiny: bool,
                   rule_ms: float = 500.0) -> str:
    """Per-image latency of the recipe's ensemble (every member fold with every TTA view, fusion, the
    classifier folds with their flips), one image per call, on ``device``, against ``rule_ms``."""
    import pandas as pd
    from PIL import Image

    from bench.bench_overhead import smears
    from infer import blend, fuse, predict, tta

    cfg, what = recipe_ensemble(recipe, folder / "runs", device, tiny)
    members = [(m.name, f, predict.load_member(m.model, f, m.weights_path(None, f), cfg.device, m.overrides,
                                               cfg.backend, m.name))
               for m in cfg.member_list() for f in m.folds]
    section = cfg.classifier_section()
    classifiers = blend.load_members(
        [(c.weights_path(None, f), None) for c in section.members for f in c.folds], cfg.device,
        cfg.backend) if section else []
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i, im in enumerate(smears(n_images)):
        Image.fromarray(im).save(images_dir / f"{i}.png")
        pairs.append((f"{i}.png", im))
    cells = {n: 1 for n, _ in pairs}
    views = tta.get_views(cfg.tta)
    params = cfg.fuse_params("wbf" if cfg.fusion == "auto" else cfg.fusion)

    def one_pass(images: list) -> dict[str, float]:
        t0 = time.perf_counter()
        tables = [predict.predict_arrays(p, images, views, model, f, cfg.conf, cfg.max_det, 1)
                  for model, f, p in members]
        t1 = time.perf_counter()
        fused = fuse.fuse(pd.concat(tables, ignore_index=True), params, progress=False)
        t2 = time.perf_counter()
        if classifiers:
            probs = blend.classifier_probs(fused, images_dir, classifiers, section.tta, cells)
            blend.blend_table(fused, probs, section.weight, section.full_weight)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        return {"detect": t1 - t0, "fuse": t2 - t1, "classify": t3 - t2, "total": t3 - t0,
                "boxes": float(len(fused))}

    one_pass(pairs[:2])  # warm-up (cuDNN, allocator)
    t = min((one_pass(pairs) for _ in range(2)), key=lambda r: r["total"])
    ms = {k: 1000 * v / n_images for k, v in t.items() if k != "boxes"}
    return (f"{ms['total']:.1f} ms per image (detect {ms['detect']:.1f}, fuse {ms['fuse']:.1f}, classify "
            f"{ms['classify']:.1f}) for {what}, {t['boxes'] / n_images:.0f} fused boxes per image, "
            f"{n_images} images, one per call{' (tiny sizes)' if tiny else ''}; {rule_ms:.0f} ms rule "
            f"{'met' if ms['total'] <= rule_ms else 'MISSED'}")


def shm_need(recipe: Any, cores: int) -> list[tuple[str, int]]:
    """Bytes of /dev/shm one training job of each recipe member may hold in DataLoader batches: workers
    x prefetched batches x batch bytes. YOLO (ultralytics): uint8 images at imgsz, a training loader
    (workers, 4 batches each) and a validation loader (2 x workers, 2 x batch, 2 batches each), both
    alive at once, each capped at the ``cores`` it may use; the crop classifier: float32 crops, 2 batches
    per worker, one loader at a time."""
    from train import registry

    out = []
    for m in recipe.detector_list() + recipe.classifier_list():
        cfg = registry.load_config(m.model, list(m.overrides))
        workers, batch, imgsz = int(getattr(cfg, "workers", 0)), int(cfg.batch), int(cfg.imgsz)
        image = 3 * imgsz * imgsz
        if m.model in ("yolov5", "yolov8", "yolo11"):
            need = min(workers, cores) * 4 * batch * image + min(2 * workers, cores) * 2 * 2 * batch * image
        else:
            need = min(workers, cores) * 2 * batch * image * 4
        out.append((m.name, need))
    return out


def shm_check(recipe: Any, limits: Any = None) -> str:
    """Free /dev/shm (``cytocore.resources``) against the recipe's jobs at once x the largest member's
    need (``shm_need``); raises with the fix when it falls short (Docker's default 64 MB)."""
    from cytocore import resources

    limits = limits or resources.Limits()
    free = limits.shm_bytes()
    share = resources.job_share(recipe.jobs, limits)
    needs = shm_need(recipe, share.cores)
    model, worst = max(needs, key=lambda x: x[1])
    need = worst * recipe.jobs
    detail = ", ".join(f"{m} {resources.fmt_bytes(n)}" for m, n in needs)
    if free is None:
        return f"no /dev/shm here (DataLoader workers use the file system); per job: {detail}"
    text = (f"/dev/shm {resources.fmt_bytes(free)} free, the recipe needs up to {resources.fmt_bytes(need)} "
            f"({recipe.jobs} job(s) x {model}; per job: {detail})")
    if free < need:
        raise RuntimeError(f"{text}: DataLoader workers will die with 'Bus error'; give the container more "
                           "(docker run --shm-size=8g, or --ipc=host) or lower the members' workers=")
    return text


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
