"""``make export``: ONNX and OpenVINO copies of the ensemble's YOLO members and crop classifiers, checked.

    python -m infer.export --config configs/ensemble.yaml [--images DIR] [key=value ...]

For every member of the ensemble config whose model is an ultralytics YOLO
(each fold's weights) and every classifier member, next to the weights
(``infer.backends``): ``best.onnx`` (legacy TorchScript-based exporter, opset
17, fixed input size, dynamic batch; the YOLO graph ends before NMS, which
stays the kit's), ``best_openvino/best.xml`` (read from the ONNX file, fp32
weights) and ``best.export.json``. Each export is checked against torch on
``CHECK_IMAGES`` images (the first test images of ``--images``, else
synthetic smears): the largest difference of the raw box coordinates (pixels
of the network input) and of the class scores is printed, and an export past
``BOX_TOL`` / ``SCORE_TOL`` is deleted and reported as an error. The time of
one call (YOLO: the 2 views of one image; classifier: 3 flip views of one
crop) is measured per backend with this process's threads and recorded:
``backend: auto`` in the ensemble config then runs the fastest. torchvision
and UNet members stay on torch.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytocore import env, io, paths
from cytocore.io import atomic_write, atomic_write_text
from infer import backends

log = logging.getLogger("infer.export")

BOX_TOL = 0.05  # largest raw box-coordinate difference to torch, pixels of the network input
SCORE_TOL = 1e-3  # largest class-score (sigmoid / softmax) difference to torch
CHECK_IMAGES = 4  # images (YOLO) or crops x 8 (classifier) compared with torch
TIMED_CALLS = 7  # calls timed per backend (median), after one warm-up
ULTRA = ("yolov5", "yolov8", "yolo11")


class _Head(torch.nn.Module):
    """An ultralytics detection model with only its raw head output ``(B, 4 + nc, anchors)``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def write_onnx(module: torch.nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], path: Path,
               inputs: tuple[str, ...] = ("input",)) -> Path:
    """``module`` traced on ``example`` (one tensor, or one per name of ``inputs``) into an ONNX file
    (dynamic batch), atomically."""
    with atomic_write(path, suffix=".tmp.onnx") as tmp, warnings.catch_warnings():
        # the TorchScript-based exporter (dynamo=False) needs no onnxscript; torch flags it as legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        # ultralytics' head compares shapes in Python: constant for the fixed input size exported here
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, example, str(tmp), dynamo=False, opset_version=17, input_names=list(inputs),
                          output_names=["output"],
                          dynamic_axes={**{name: {0: "batch"} for name in inputs}, "output": {0: "batch"}})
    return path


def write_openvino(onnx_file: Path, xml: Path) -> Path:
    """The OpenVINO model of an ONNX file (fp32 weights) in its own folder, replaced whole."""
    import openvino as ov

    tmp = xml.parent.with_name(xml.parent.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ov.save_model(ov.Core().read_model(str(onnx_file)), str(tmp / xml.name), compress_to_fp16=False)
    shutil.rmtree(xml.parent, ignore_errors=True)
    tmp.rename(xml.parent)
    return xml


def _timed(fn: Any, calls: int = TIMED_CALLS) -> float:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _differences(ref: torch.Tensor, out: torch.Tensor, n_box: int) -> tuple[float, float]:
    ref, out = ref.float(), torch.as_tensor(out).float()
    if ref.shape != out.shape:
        raise ValueError(f"output shape {tuple(out.shape)} differs from torch's {tuple(ref.shape)}")
    box = float((ref[:, :n_box] - out[:, :n_box]).abs().max()) if n_box else 0.0
    return box, float((ref[:, n_box:] - out[:, n_box:]).abs().max())


def _finish(weights: Path, record: dict, files: list[Path]) -> dict:
    bad = record["box_diff"] > BOX_TOL or record["score_diff"] > SCORE_TOL
    if bad:
        for f in files:
            if f.suffix == ".xml":
                shutil.rmtree(f.parent, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
        backends.record_path(weights).unlink(missing_ok=True)
        raise ValueError(f"{weights}: export differs from torch (box {record['box_diff']:.2g} px, score "
                         f"{record['score_diff']:.2g}; tolerances {BOX_TOL} px, {SCORE_TOL}); removed")
    atomic_write_text(backends.record_path(weights), json.dumps(record, indent=2))
    return record


def export_yolo(model_name: str, fold: int, weights: Path, overrides: list[str],
                images: list[np.ndarray]) -> dict:
    """Export one YOLO member, check it against torch, time each backend; returns its record."""
    from infer import predict
    from train import registry
    from train.yolo.predict import UltraPredictor, letterbox_batch

    cfg = registry.run_config(model_name, Path(weights).parent, list(overrides))
    torch_p = predict.load_member(model_name, fold, weights, "cpu", overrides)
    size, threads = torch_p.imgsz, torch.get_num_threads()
    x, _ = letterbox_batch(images, size)
    batch = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    head = _Head(torch_p.model).eval()
    files = [write_onnx(head, batch[:2], backends.onnx_path(weights))]
    files.append(write_openvino(files[0], backends.openvino_path(weights)))
    with torch.inference_mode():
        ref = torch_p.forward(batch)
    record: dict[str, Any] = {"kind": "yolo", "model": model_name, "weights": backends.weights_stamp(weights),
                              "imgsz": size, "threads": threads, "box_diff": 0.0, "score_diff": 0.0, "ms": {}}
    two = [images[0], np.ascontiguousarray(images[0][:, ::-1])]  # identity + hflip: one ensemble call
    record["ms"]["torch"] = _timed(lambda: torch_p.predict(two))
    for name in ("onnx", "openvino"):
        run = backends.runner(name, weights, threads)
        box, score = _differences(ref, run(batch), 4)
        record["box_diff"] = max(record["box_diff"], box)
        record["score_diff"] = max(record["score_diff"], score)
        record[f"{name}_diff"] = {"box": box, "score": score}
        other = UltraPredictor(None, cfg, "cpu", runner=run)
        record["ms"][name] = _timed(lambda p=other: p.predict(two))
    return _finish(weights, record, files)


def export_classifier(weights: Path, images: list[np.ndarray]) -> dict:
    """Export one crop classifier, check its probabilities against torch, time each backend.

    A ``box_size`` classifier is exported with its second input ``size`` (``(B, 2)``
    box-size features) and checked on crops given different sizes."""
    from train.cls.adapter import ClassifierAdapter
    from train.cls.data import box_size_features, to_tensor

    pred = ClassifierAdapter().load(weights, None, "cpu")
    s, threads = pred.cfg.imgsz, torch.get_num_threads()
    crops = np.stack([pred.crops(im, np.array([[40.0, 40.0, 200.0, 200.0]]))[0] for im in images] * 2)
    x = to_tensor(crops)
    sides = np.linspace(60.0, 240.0, len(crops))  # the sizes a size-aware head is checked on
    sizes = box_size_features(np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides[::-1]], 1))
    size = torch.from_numpy(sizes) if pred.takes_size else None
    args = (x, size) if pred.takes_size else (x,)
    model = pred.model.eval()
    files = [write_onnx(model, tuple(a[:2] for a in args) if pred.takes_size else x[:2],
                        backends.onnx_path(weights), ("input", "size") if pred.takes_size else ("input",))]
    files.append(write_openvino(files[0], backends.openvino_path(weights)))
    with torch.inference_mode():
        ref = torch.softmax(model(*args).float(), 1)
    record: dict[str, Any] = {"kind": "classifier", "backbone": pred.cfg.backbone, "imgsz": s,
                              "box_size": pred.takes_size, "threads": threads,
                              "weights": backends.weights_stamp(weights), "box_diff": 0.0, "score_diff": 0.0,
                              "ms": {"torch": _timed(lambda: pred.classify(crops[:1], True, sizes[:1]))}}
    for name in ("onnx", "openvino"):
        run = backends.runner(name, weights, threads)
        _, score = _differences(ref, torch.softmax(run(*args).float(), 1), 0)
        record["score_diff"] = max(record["score_diff"], score)
        record[f"{name}_diff"] = {"box": 0.0, "score": score}
        other = type(pred)(backends.RunnerModule(run), pred.cfg, "cpu")
        record["ms"][name] = _timed(lambda p=other: p.classify(crops[:1], True, sizes[:1]))
    return _finish(weights, record, files)


def check_images(images_dir: Path | None, n: int = CHECK_IMAGES) -> list[np.ndarray]:
    """``n`` RGB images to check exports on: the first of ``images_dir``, else synthetic smears."""
    if images_dir is not None and Path(images_dir).is_dir():
        from cytocore.images import load_rgb

        files = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if files:
            return [load_rgb(p) for p in files[:n]]
    from prepare.synth.classes import RECIPES
    from prepare.synth.smear import render

    rng = np.random.default_rng(0)
    return [render(368, 360, [str(rng.choice(list(RECIPES)))], False, rng).rgb for _ in range(n)]


def line(what: str, rec: dict) -> str:
    """One printed line of an export record."""
    ms = ", ".join(f"{b} {rec['ms'][b]:.1f}" for b in backends.BACKENDS if b in rec["ms"])
    fastest = min(rec["ms"], key=rec["ms"].get)
    box = rec.get("kind") != "classifier"  # a classifier has probabilities only
    diffs = "; ".join(f"{b}: " + (f"box {rec[f'{b}_diff']['box']:.1e} px, " if box else "")
                      + f"score {rec[f'{b}_diff']['score']:.1e}" for b in ("onnx", "openvino"))
    return (f"{what}: ms per call ({rec['threads']} threads) {ms} -> {fastest}; differences to torch {diffs} "
            f"(tolerances {BOX_TOL} px, {SCORE_TOL})")


def export_ensemble(cfg: Any, data: Path, images: list[np.ndarray]) -> list[str]:
    """Export every YOLO member and classifier member of an ensemble config (its runs on the dataset
    prepared from ``data``); the printed lines."""
    from infer.config import bind, classifier_weights

    cfg, ds = bind(cfg, data)
    lines = []
    for m in cfg.member_list():
        for fold in m.folds:
            weights = m.weights_path(ds, fold)
            if m.model not in ULTRA:
                lines.append(f"{m.name} fold{fold}: stays on torch (exports cover the YOLO members)")
                continue
            if not weights.exists():
                raise FileNotFoundError(f"{weights}: weights of {m.name} fold {fold} not found; "
                                        "train it first")
            lines.append(line(f"{m.name} fold{fold} {weights}", export_yolo(m.model, fold, weights,
                                                                            list(m.overrides), images)))
    section = cfg.classifier_section()
    found, _ = classifier_weights(section, ds) if section else ([], [])
    for _, _, weights in found:
        lines.append(line(f"classifier {weights}", export_classifier(Path(weights), images)))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infer.export", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=paths.CONFIGS / "ensemble.yaml",
                        help="ensemble config")
    parser.add_argument("--data", type=Path, default=paths.DEFAULT_DATA,
                        help="challenge data folder (its prepared dataset holds the members' runs)")
    parser.add_argument("--images", type=Path,
                        help="images to check the exports on (default: synthetic smears)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="ensemble config overrides")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    from infer.config import load_config

    cfg = load_config(args.config, args.overrides)
    for text in export_ensemble(cfg, args.data, check_images(args.images)):
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
