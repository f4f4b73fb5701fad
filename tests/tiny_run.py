"""A tiny trained run for the predict / API tests: synthetic data, folds, a fake detector that sees the truth.

``build(tmp)`` makes ``tmp/data/demo`` (24 synthetic images, K=2) and a run in the nested work folder
``tmp/work/demo`` as ``make demo`` would leave it: out-of-fold and test tables of one detector
(``fakedet``, folds 0 and 1, TTA identity + hflip), ``logs/<dataset id>/tuned.yaml`` and the
submission ``submissions/submission.csv`` -- ``tmp`` is laid out like the repository root. The detector
is ``TruthPredictor``: it knows each image's truth boxes (by the image's pixels, in both views) and
returns each with a score s and the right class with probability s, plus two low-scored false boxes,
so a calibrated confidence is meaningful. ``patched()`` makes ``infer.predict.load_member`` return it.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cytocore import classes
from cytocore.images import load_rgb
from train.base import Detections, Predictor

MODEL = "fakedet"


def _key(img: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()


class TruthPredictor(Predictor):
    """Boxes of the truth (looked up by the image's pixels) with noisy scores and classes."""

    def __init__(self, truth: dict[str, np.ndarray]):
        self.truth = truth  # key -> (N, 5) x1, y1, x2, y2, class id in that view's pixels

    def predict(self, images, conf=0.001):
        out = []
        for img in images:
            k = _key(img)
            rng = np.random.default_rng(int(k[:8], 16))
            h, w = img.shape[:2]
            t = self.truth.get(k, np.zeros((0, 5)))
            s = rng.uniform(0.3, 0.95, len(t))
            right = rng.uniform(size=len(t)) < s
            lab = np.where(right, t[:, 4], (t[:, 4] + 1 + rng.integers(0, 5, len(t))) % classes.NUM_CLASSES)
            xyxy = np.vstack([t[:, :4], [[0, 0, w * 0.15, h * 0.15], [w * 0.8, h * 0.8, w - 1, h - 1]]])
            scores = np.r_[s, rng.uniform(0.01, 0.3, 2)]
            labels = np.r_[lab, [0, 1]].astype(np.int64)
            probs = np.eye(classes.NUM_CLASSES)[labels] * 0.8 + 0.2 / classes.NUM_CLASSES
            out.append(Detections(xyxy.astype(np.float64), scores, labels, probs))
        return out


def truth_lookup(data: Path) -> dict[str, np.ndarray]:
    """Truth boxes of every train and test image, keyed by the pixels of the image and of its hflip."""
    frames = [pd.read_csv(data / "train.csv")]
    if (data / "test_labels.csv").exists():
        frames.append(pd.read_csv(data / "test_labels.csv"))
    boxes = pd.concat(frames, ignore_index=True)
    out = {}
    for name, rows in boxes.groupby("NAME"):
        img = load_rgb(data / "images" / name)
        w = img.shape[1]
        b = rows[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
        ids = rows["class"].map(classes.CLASS_TO_ID).to_numpy(np.float64)[:, None]
        out[_key(img)] = np.hstack([b, ids])
        flipped = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1)
        out[_key(img[:, ::-1])] = np.hstack([flipped, ids])
    return out


@contextlib.contextmanager
def patched(data: Path):
    """``infer.predict.load_member`` returns a ``TruthPredictor`` of ``data``."""
    from infer import predict

    truth = truth_lookup(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(predict, "load_member", lambda *a, **k: TruthPredictor(truth))
        yield


def save_classifiers(ds) -> None:
    """Untrained resnet10t crop classifiers (32 px) saved as cls folds 0 and 1 of the dataset ``ds``."""
    from cytocore import config
    from train import checkpoint
    from train.cls import model as cls_model
    from train.cls.adapter import ClassifierConfig

    cfg = config.to_dict(config.from_dict(ClassifierConfig, {"backbone": "resnet10t", "imgsz": 32}))
    for fold in (0, 1):
        checkpoint.save(ds.run_dir("cls", fold) / "best.pt", cls_model.build_model("resnet10t"), cfg, 0,
                        metric=0.0)


def build(tmp: Path, classifier: bool = False) -> tuple[Path, Path, str]:
    """``(data, work, dataset id)``: the data folder and the (outer) work folder of a tiny run; with
    ``classifier``, untrained crop classifier folds blended in at weight 0.5."""
    from cytocore import config, dataset, env, paths
    from infer import ensemble, tune
    from infer.config import load_config
    from prepare import folds
    from prepare.synth import make as synth
    from submit import make

    data, work = tmp / "data" / "demo", tmp / "work"
    with paths.using_work_dir(work / "demo"):
        env.apply()
        made = synth.main(["--out", str(data), "--images", "24", "--seed", "5", "--test-fraction", "0.25"])
        assert made == 0
        assert folds.main(["--data", str(data), "--k", "2", "--seed", "1"]) == 0
        ds = dataset.resolve(data)
        for fold in (0, 1):
            w = ds.run_dir(MODEL, fold) / "best.pt"
            w.parent.mkdir(parents=True, exist_ok=True)
            w.write_bytes(b"fake")
        logs = paths.logs_dir(ds.id)
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "ensemble.yaml").write_text(yaml.safe_dump({
            "members": [{"model": MODEL, "folds": [0, 1]}], "k": 2, "seed": 1, "tta": ["identity", "hflip"],
            "fusion": "wbf", "viz_images": 0, "backend": "torch",
            "classifier": {"members": [{"model": "cls"}], "weight": 0.5, "tta": False} if classifier else {},
            "tune": {"weights": [1.0], "iou_thr": [0.55], "skip_box_thr": [0.001], "conf_type": ["avg"],
                     "fusion": ["wbf"], "rounds": 1, "cls_weight": [0.5], "cls_tta": [False]}}))
        if classifier:
            save_classifiers(ds)
        cfg = load_config(logs / "ensemble.yaml")
        with patched(data):
            ensemble.run(cfg, data, progress=False)
            tune.run(cfg, data, logs / "tuned.yaml")
            make.run(config.load(type(cfg), logs / "tuned.yaml"), data, out_dir=paths.submissions_dir(),
                     progress=False)
    return data, work, ds.id
