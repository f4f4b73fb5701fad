"""CPU inference backends for exported members: torch, ONNX Runtime, OpenVINO.

``make export`` (``infer.export``) writes, next to a member's weights ``best.pt``:

- ``best.onnx``               -- the network (YOLO: raw head output before NMS; classifier: logits),
  fixed input size, dynamic batch
- ``best_openvino/best.xml``  -- the same graph as an OpenVINO model (read from the ONNX file)
- ``best.export.json``        -- what was exported from which weights (size, mtime), the input size, the
  numerical check against torch and each backend's measured time per call

A runner (``onnx_runner``, ``openvino_runner``) is a callable: float32 ``(B, 3, S, S)`` in, the
network's output as a torch tensor out; ``train.yolo.predict.UltraPredictor`` and the classifier take
it in place of the torch forward pass, so letterbox, NMS and crops stay the kit's own. A ``box_size``
classifier's export has a second input, ``size`` ``(B, 2)`` (``train.cls.data.box_size_features``):
its runner says so with ``takes_size`` and is called ``run(x, size)``.

``choose(weights, backend, device)`` resolves the ensemble's ``backend:``: ``torch`` / ``onnx`` /
``openvino`` as asked (an export that is missing or older than the weights is an error naming
``make export``), ``auto`` = the fastest measured by ``make export`` when a current export exists,
else torch. GPUs always use torch.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cytocore.config import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "openvino")
CHOICES = (*BACKENDS, "auto")


def onnx_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".onnx")


def openvino_path(weights: Path) -> Path:
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}_openvino") / f"{weights.stem}.xml"


def record_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".export.json")


def weights_stamp(weights: Path) -> dict[str, int]:
    """What identifies the weights an export was made from (size and modification time)."""
    st = Path(weights).stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def read_record(weights: Path) -> dict | None:
    """The export record of ``weights`` when it exists AND matches the weights file, else None."""
    path = record_path(weights)
    if not path.exists() or not Path(weights).exists():
        return None
    rec = json.loads(path.read_text())
    if rec.get("weights") != weights_stamp(weights):
        log.warning("%s: made from other weights than %s; run make export again", path, weights)
        return None
    return rec


def choose(weights: Path, backend: str, device: str = "cpu", imgsz: int | None = None) -> str:
    """The backend to run ``weights`` with (see the module docstring)."""
    if backend not in CHOICES:
        raise ConfigError(f"backend={backend!r}: valid values are {', '.join(CHOICES)}")
    if not str(device).startswith("cpu") or backend == "torch":
        return "torch"
    rec = read_record(weights)
    if backend == "auto":
        if rec is None or (imgsz is not None and rec.get("imgsz") != imgsz):
            return "torch"
        timings = {b: ms for b, ms in rec.get("ms", {}).items() if b in BACKENDS}
        return min(timings, key=timings.get) if timings else "torch"
    if rec is None or backend not in rec.get("ms", {}):
        raise FileNotFoundError(f"{weights}: no current {backend} export; run make export "
                                "(python -m infer.export)")
    if imgsz is not None and rec.get("imgsz") != imgsz:
        raise ConfigError(f"{weights}: exported at {rec.get('imgsz')} px but the member runs at {imgsz} px; "
                          "run make export again")
    return backend


class OnnxRunner:
    """An ONNX Runtime session on the CPU as a forward pass."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.takes_size = len(self.inputs) == 2

    def __call__(self, x: Any, size: Any = None) -> Any:
        import torch

        feed = dict(zip(self.inputs, _arrays(self.takes_size, x, size)))
        return torch.from_numpy(self.session.run(None, feed)[0])


class OpenVinoRunner:
    """A compiled OpenVINO model on the CPU (fp32, latency hint) as a forward pass."""

    def __init__(self, path: Path, threads: int):
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": max(1, int(threads)), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}  # bf16 on some CPUs would move scores
        self.model = core.compile_model(str(path), "CPU", config)
        self.request = self.model.create_infer_request()
        self.takes_size = len(self.model.inputs) == 2

    def __call__(self, x: Any, size: Any = None) -> Any:
        import torch

        out = self.request.infer(dict(enumerate(_arrays(self.takes_size, x, size))))
        return torch.from_numpy(np.array(out[self.model.output(0)]))


def _arrays(takes_size: bool, x: Any, size: Any) -> list[np.ndarray]:
    """The contiguous float32 inputs of a runner call: ``[x]``, or ``[x, size]`` for a size-aware export."""
    def arr(t: Any) -> np.ndarray:
        return np.ascontiguousarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t, dtype=np.float32)

    if not takes_size:
        return [arr(x)]
    if size is None:
        raise ValueError("this exported classifier takes the box sizes of its crops (box_size: true)")
    return [arr(x), arr(size)]


def runner(backend: str, weights: Path, threads: int) -> Any:
    """The forward pass of ``weights``' export for ``backend`` (onnx or openvino)."""
    if backend == "onnx":
        return OnnxRunner(onnx_path(weights), threads)
    if backend == "openvino":
        return OpenVinoRunner(openvino_path(weights), threads)
    raise ConfigError(f"backend={backend!r} has no runner; valid: onnx, openvino")


class RunnerModule:
    """A runner dressed as an eval-mode torch module (what ``train.cls.model.predict_probs`` calls)."""

    def __init__(self, run: Any):
        self.run = run
        self.takes_size = bool(getattr(run, "takes_size", False))  # read by train.cls.model.forward

    def eval(self) -> RunnerModule:
        return self

    def to(self, *args: Any, **kwargs: Any) -> RunnerModule:
        return self

    def __call__(self, x: Any, size: Any = None) -> Any:
        return self.run(x, size) if self.takes_size else self.run(x)
