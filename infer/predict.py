"""Run one loaded member (a ``train.base.Predictor``) over images with TTA -> a prediction table.

For each chunk of images, every view (``infer.tta``) of every image goes to
the predictor in one call; its boxes are mapped back to the original image
(``View.inverse``), clipped to the image (boxes left with no area are
dropped), cut to the ``max_det`` best per image and view, and stored as rows
of the prediction contract with the view's name in the ``view`` column. That
conversion is ``cytocore.rows``, shared with out-of-fold prediction.

``load_member`` builds the predictor of one (model, fold) through the
registry: weights default to ``work/runs/<dataset id>/<model>/fold<k>/best.pt`` and the
model config to the run's resolved ``config.yaml`` (else ``configs/<model>.yaml``).
Reusing a written table while its inputs are unchanged is ``infer.cache``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cytocore import rows
from cytocore.config import ConfigError
from cytocore.images import load_rgb
from infer.tta import View

log = logging.getLogger(__name__)


def predict_arrays(
    predictor: Any,
    images: Iterable[tuple[str, np.ndarray]],
    views: Sequence[View],
    model: str,
    fold: int,
    conf: float = 0.001,
    max_det: int = 0,
    batch: int = 8,
) -> pd.DataFrame:
    """Predict ``(name, RGB array)`` pairs with every view (all views of a chunk in one predictor
    call); returns the prediction table (``cytocore.rows.predict_table``)."""
    return rows.predict_table(predictor, images, views, model, fold, conf, max_det, batch)


def predict_files(
    predictor: Any,
    images_dir: Path,
    names: Sequence[str],
    views: Sequence[View],
    model: str,
    fold: int,
    conf: float = 0.001,
    max_det: int = 0,
    batch: int = 8,
    progress: bool = True,
    desc: str | None = None,
) -> pd.DataFrame:
    """``predict_arrays`` over image files ``images_dir/<name>`` (decoded to RGB), with a progress bar."""
    names = list(names)
    bar = tqdm(names, desc=desc or f"predict {model} fold{fold}", unit="img", disable=not progress,
               mininterval=2)
    pairs = ((n, load_rgb(Path(images_dir) / n)) for n in bar)
    start = time.perf_counter()
    out = predict_arrays(predictor, pairs, views, model, fold, conf, max_det, batch)
    if names:
        log.info("%s fold%d: %d images x %d view(s) in %.1f s (%.0f ms per image, all views)", model, fold,
                 len(names), len(views), time.perf_counter() - start,
                 1000 * (time.perf_counter() - start) / len(names))
    return out


def load_member(model: str, fold: int, weights: Path, device: str = "cpu",
                overrides: Sequence[str] = (), backend: str = "torch", name: str = "") -> Any:
    """The ``Predictor`` of one member (registry ``model``, member ``name``, default the model) through
    the model registry; ``backend`` (``infer.backends``: torch, onnx, openvino or auto) picks what runs
    an exported YOLO member's network on the CPU."""
    from cytocore import members
    from train import registry

    weights = Path(weights)
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: weights of {name or model} fold {fold} not found; train it "
                                f"first (make train {members.train_vars(name or model, model)} FOLD={fold}) "
                                "or set the member's weights path")
    cfg = registry.run_config(model, weights.parent, list(overrides))
    chosen = member_backend(model, weights, device, overrides, backend)["backend"]
    if chosen != "torch":
        import torch

        from infer import backends
        from train.yolo.predict import UltraPredictor

        log.info("%s fold%d: %s backend", model, fold, chosen)
        try:
            run = backends.runner(chosen, weights, torch.get_num_threads())
        except Exception as exc:  # a corrupt or deleted export whose record still matches the weights
            why = f"{weights}: its {chosen} export does not load ({type(exc).__name__}: {str(exc)[:120]})"
            if backend != "auto":
                raise ConfigError(f"{why}; run make export again, or backend: torch") from None
            log.warning("%s; predicting with torch (make export makes it again)", why)
        else:
            return UltraPredictor(None, cfg, "cpu", runner=run)
    return registry.get(model)().load(weights, cfg, device)


def member_backend(model: str, weights: Path, device: str = "cpu", overrides: Sequence[str] = (),
                   backend: str = "torch") -> dict:
    """The backend a member's network runs with (torch, onnx or openvino: ``infer.backends.choose``)
    and, for an export, its file's size and modification time: what a cached prediction table of the
    member depends on besides its weights (``infer.cache.member_meta``)."""
    from infer import backends
    from train import registry

    if backend == "torch" or model not in ("yolov5", "yolov8", "yolo11"):
        return {"backend": "torch"}
    cfg = registry.run_config(model, Path(weights).parent, list(overrides))
    chosen = backends.choose(Path(weights), backend, device, int(cfg.imgsz))
    if chosen == "torch":
        return {"backend": "torch"}
    export = backends.onnx_path(weights) if chosen == "onnx" else backends.openvino_path(weights)
    st = export.stat() if export.exists() else None
    return {"backend": chosen, "export_bytes": st.st_size if st else None,
            "export_mtime_ns": st.st_mtime_ns if st else None}
