"""The ensemble config (``configs/ensemble.yaml``): members, TTA, fusion, classifier, tuning grids.

``load_config(path, overrides)`` reads it into ``EnsembleConfig`` (unknown keys
are an error naming the valid ones); ``members()``, ``fuse_params()``,
``tune_grid()`` give the typed parts. ``python -m infer.tune`` writes a tuned
copy (``work/tuned/ensemble.yaml``) that loads the same way.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cytokit import config as kit_config
from cytokit.config import ConfigError
from infer import tta, wbf
from infer.fuse import MODES, FuseParams

FUSION_CHOICES = (*MODES, "auto")
BACKEND_CHOICES = ("torch", "onnx", "openvino", "auto")  # infer.backends.CHOICES


def _list(*values: Any) -> Any:
    """A dataclass field defaulting to a fresh list of ``values``."""
    return dataclasses.field(default_factory=lambda: list(values))


@dataclasses.dataclass
class Member:
    """One model of the ensemble with the folds whose weights it uses."""

    model: str  # registry name (python -m train --list)
    folds: list[int] = dataclasses.field(default_factory=list)  # folds to use; empty = all k folds
    weight: float = 1.0  # the model's share in the fusion (split over its folds and views)
    weights: str | None = None  # path template ({fold}, {model}); None = work/runs/<model>/fold<k>/best.pt
    overrides: list[str] = dataclasses.field(default_factory=list)  # model config key=value at load time

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"member {self.model}: weight must be >= 0, got {self.weight}")


@dataclasses.dataclass
class TuneGrid:
    """What ``python -m infer.tune`` searches (coordinate ascent over these values)."""

    weights: list[float] = _list(0.0, 0.5, 1.0, 2.0, 3.0)  # per-model weights tried
    iou_thr: list[float] = _list(0.4, 0.5, 0.55, 0.6, 0.7)  # WBF IoU thresholds
    skip_box_thr: list[float] = _list(0.001, 0.01, 0.05)  # WBF skip thresholds
    conf_type: list[str] = _list("avg", "max", "box_and_model_avg")  # WBF conf_type
    fusion: list[str] = _list("wbf", "agnostic")  # fusion modes
    views: bool = True  # also try leaving each TTA view out (the tuned config keeps the views that help)
    rounds: int = 2  # passes of coordinate ascent over all settings
    max_images: int = 0  # OOF images used (a fixed random subset; 0 = all)
    seed: int = 0  # seed of that subset


@dataclasses.dataclass
class EnsembleConfig:
    """Everything ``python -m infer`` and ``python -m infer.tune`` need."""

    members: list[dict] = dataclasses.field(default_factory=list)  # Member entries (model, folds, weight...)
    k: int = 5  # folds of the prepared dataset (as in make folds)
    seed: int = 42  # fold seed (as in make folds)
    tta: list[str] = _list("identity", "hflip")  # TTA views
    conf: float = 0.001  # detection threshold of every member (low: fusion decides)
    max_det: int = 20  # boxes kept per image, member and view before fusion
    batch: int = 8  # images per predictor call
    device: str = "cpu"  # cpu, cuda, cuda:0 ...
    backend: str = "auto"  # torch | onnx | openvino | auto (fastest measured by make export, else torch)
    predict_oof: bool = True  # also predict each fold's validation images with TTA (oof_tta.parquet)
    fusion: str = "auto"  # wbf | agnostic | auto (the better on out-of-fold predictions)
    iou_thr: float = 0.55  # WBF: IoU for boxes to join a cluster
    skip_box_thr: float = 0.001  # WBF: boxes scored below are ignored
    conf_type: str = "avg"  # WBF: avg | max | box_and_model_avg | absent_model_aware_avg
    classifier: dict = dataclasses.field(default_factory=dict)  # {members: [{weights, config}], weight, tta}
    viz_images: int = 16  # images drawn in the PNG grid beside the submission (0 = none)
    out_dir: str | None = None  # submission folder; default submissions/
    tune: dict = dataclasses.field(default_factory=dict)  # TuneGrid overrides for python -m infer.tune

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_CHOICES:
            raise ConfigError(f"fusion must be one of {', '.join(FUSION_CHOICES)}, got {self.fusion!r}")
        try:
            wbf.check_params(self.iou_thr, self.skip_box_thr, self.conf_type)
            tta.get_views(self.tta)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.backend not in BACKEND_CHOICES:
            raise ConfigError(f"backend={self.backend!r}: valid values are {', '.join(BACKEND_CHOICES)}")
        if self.max_det < 0 or self.batch < 1 or self.k < 1:
            raise ConfigError("max_det must be >= 0, batch >= 1 and k >= 1")
        self.member_list()
        self.tune_grid()
        self.classifier_section()

    def member_list(self) -> list[Member]:
        """The members, typed; folds filled in (all k) when left empty."""
        out = []
        for i, raw in enumerate(self.members):
            if not isinstance(raw, dict):
                raise ConfigError(f"members[{i}] must be a mapping with at least 'model', got {raw!r}")
            m = kit_config.from_dict(Member, raw, f"members[{i}]")
            m.folds = list(m.folds) or list(range(self.k))
            bad = [f for f in m.folds if not 0 <= f < self.k]
            if bad:
                raise ConfigError(f"members[{i}] ({m.model}): fold(s) {bad} out of range for k={self.k}")
            out.append(m)
        models = [m.model for m in out]
        dup = sorted({m for m in models if models.count(m) > 1})
        if dup:
            raise ConfigError(f"model(s) listed twice in members: {', '.join(dup)}")
        return out

    def tune_grid(self) -> TuneGrid:
        return kit_config.from_dict(TuneGrid, self.tune, "tune")

    def classifier_section(self) -> dict[str, Any] | None:
        """``{members: [(weights, config)], weight, tta}``, or None when the section is empty."""
        c = dict(self.classifier or {})
        if not c or not c.get("members"):
            return None
        unknown = sorted(set(c) - {"members", "weight", "tta", "full_weight"})
        if unknown:
            raise ConfigError(f"classifier: unknown key(s) {', '.join(unknown)}; "
                              "valid: full_weight, members, tta, weight")
        members = []
        for i, m in enumerate(c["members"]):
            if not isinstance(m, dict) or "weights" not in m:
                raise ConfigError(f"classifier.members[{i}] must be a mapping with 'weights' "
                                  "(and optional 'config')")
            members.append((Path(m["weights"]), m.get("config")))
        weight = float(c.get("weight", 0.5))
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"classifier.weight must be in [0, 1], got {weight}")
        return {"members": members, "weight": weight, "tta": bool(c.get("tta", True)),
                "full_weight": float(c.get("full_weight", 0.5))}

    def fuse_params(self, mode: str | None = None) -> FuseParams:
        """The fusion settings; ``mode`` replaces ``fusion`` (needed when it is ``auto``)."""
        mode = mode or self.fusion
        if mode == "auto":
            raise ValueError("fusion 'auto' must be resolved on out-of-fold predictions first")
        return FuseParams(
            mode=mode, iou_thr=self.iou_thr, skip_box_thr=self.skip_box_thr, conf_type=self.conf_type,
            max_det=self.max_det, weights={m.model: m.weight for m in self.member_list()},
        )


def load_config(path: Path, overrides: list[str] | dict = ()) -> EnsembleConfig:
    """The ensemble config from YAML plus ``key=value`` overrides."""
    return kit_config.load(EnsembleConfig, Path(path), overrides)
