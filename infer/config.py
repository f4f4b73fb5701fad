"""The ensemble config (``configs/ensemble.yaml``): members, TTA, fusion, classifier, tuning grids.

``load_config(path, overrides)`` reads it into ``EnsembleConfig`` (unknown keys
are an error naming the valid ones); ``member_list()``, ``fuse_params()``,
``tune_grid()`` and ``classifier_section()`` give the typed parts;
``classifier_weights`` finds the classifier folds trained on the prepared
dataset. ``python -m infer.tune`` writes a tuned copy (``work/tuned/ensemble.yaml``)
that loads the same way.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from cytocore import config as kit_config
from cytocore import members as kit_members
from cytocore import paths
from cytocore.config import ConfigError
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

    model: str  # registry name (python -m train --list): the adapter that loads it
    name: str = ""  # the member's key (its runs, tables, fusion weight; cytocore.members); "" = model
    folds: list[int] = dataclasses.field(default_factory=list)  # folds to use; empty = all k folds
    weight: float = 1.0  # the member's share in the fusion (split over its folds and views)
    weights: str | None = None  # path template ({fold}, {model}, {name}); None = the runs of this dataset
    overrides: list[str] = dataclasses.field(default_factory=list)  # model config key=value at load time

    def __post_init__(self) -> None:
        self.name = kit_members.member_name(self.name, self.model, f"member {self.model}")
        if self.weight < 0:
            raise ConfigError(f"member {self.name}: weight must be >= 0, got {self.weight}")

    def weights_path(self, ds: Any, fold: int) -> Path:
        return weights_path(self, ds, fold)


def weights_path(member: Any, ds: Any, fold: int) -> Path:
    """The weights of one fold of a member (``Member``, ``ClassifierMember``): its ``weights`` template
    with ``{fold}``, ``{model}`` and ``{name}`` filled in, else the ``best.pt`` of its run on the prepared
    dataset ``ds`` (``ds.run_dir(name, fold)``)."""
    if member.weights:
        return Path(member.weights.format(fold=fold, model=member.model, name=member.name))
    return ds.run_dir(member.name, fold) / paths.BEST


@dataclasses.dataclass
class ClassifierMember:
    """One second-stage classifier model with the folds whose weights it uses (like ``Member``)."""

    model: str = "cls"  # registry name: cls (crops of boxes) or cls_full (whole single-cell images)
    name: str = ""  # the member's key (its runs; cytocore.members); "" = model
    folds: list[int] = dataclasses.field(default_factory=list)  # folds to use; empty = all k folds
    weight: float = 1.0  # relative share among the crop members (each the mean of its folds); 0 = unused
    weights: str | None = None  # path template ({fold}, {model}, {name}); None = its runs on this dataset

    def __post_init__(self) -> None:
        self.name = kit_members.member_name(self.name, self.model, f"classifier member {self.model}")
        if self.weight < 0:
            raise ConfigError(f"classifier member {self.name}: weight must be >= 0, got {self.weight}")

    def weights_path(self, ds: Any, fold: int) -> Path:
        return weights_path(self, ds, fold)


@dataclasses.dataclass
class ClassifierSection:
    """The second stage (``infer.blend``): which classifier folds, and how they blend with the detectors."""

    members: list[ClassifierMember]
    weight: float = 0.5  # classifier share of the blended class probabilities (0 = detectors' classes)
    tta: bool = True  # mean over identity, horizontal and vertical flips of every crop
    full_weight: float = 0.5  # share of full-image members (cls_full) on single-cell images

    def __post_init__(self) -> None:
        for key in ("weight", "full_weight"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"classifier.{key} must be in [0, 1], got {getattr(self, key)}")

    def shares(self) -> dict[str, float]:
        """Each member's relative share (``weight``) by name: what mixes the crop members
        (``infer.blend.member_mean``; full-image members' entries go unused)."""
        return {m.name: float(m.weight) for m in self.members}


CLASSIFIER_DEFAULT = {"members": [{"model": "cls"}], "weight": 0.5, "tta": True, "full_weight": 0.5}


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
    cls_weight: list[float] = _list(*[round(0.05 * i, 2) for i in range(21)])  # classifier blend weights
    cls_tta: list[bool] = _list(True, False)  # classifier flip TTA on / off
    full_weight: list[float] = _list(0.0, 0.25, 0.5, 0.75, 1.0)  # full-image shares (with a cls_full member)
    cls_member_weights: list[float] = _list(0.0, 0.5, 1.0, 2.0)  # each crop member's share (with 2+ of them)
    max_images: int = 5000  # OOF images used (a fixed random subset; 0 = all)
    seed: int = 0  # seed of that subset


@dataclasses.dataclass
class EnsembleConfig:
    """Everything ``python -m infer`` and ``python -m infer.tune`` need."""

    DEFAULTS: ClassVar[str] = "ensemble.yaml"  # the default of each field without one here

    members: list[dict] = dataclasses.field(default_factory=list)  # Member entries (model, name, folds...)
    k: int | None = None  # folds of the prepared dataset; None = as prepared by make folds
    seed: int | None = None  # fold seed of the prepared dataset; None = as prepared by make folds
    tta: list[str] = _list("identity", "hflip")  # TTA views
    conf: float = 0.001  # detection threshold of every member (low: fusion decides)
    max_det: int = 20  # boxes kept per image, member and view before fusion
    batch: int = 8  # images per predictor call
    device: str = "cpu"  # cpu, cuda, cuda:0 ...
    backend: str = "auto"  # torch | onnx | openvino | auto (fastest measured by make export, else torch)
    predict_oof: bool = True  # also predict each fold's validation images with TTA (oof_tta.parquet)
    fusion: str = "auto"  # wbf | agnostic | auto (the better on out-of-fold predictions)
    iou_thr: float = dataclasses.field(kw_only=True)  # WBF: IoU for boxes to join a cluster (YAML default)
    skip_box_thr: float = 0.001  # WBF: boxes scored below are ignored
    conf_type: str = "avg"  # WBF: avg | max | box_and_model_avg | absent_model_aware_avg
    fuse_workers: int = 0  # processes fusing the submission's image chunks; 0 = one per core, 1 = in-process
    classifier: dict | None = dataclasses.field(  # ClassifierSection keys; {} or null = no classifier
        default_factory=lambda: copy.deepcopy(CLASSIFIER_DEFAULT))
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
        if self.max_det < 0 or self.batch < 1 or (self.k is not None and self.k < 1):
            raise ConfigError("max_det must be >= 0, batch >= 1 and k >= 1")
        if self.fuse_workers < 0:
            raise ConfigError(f"fuse_workers must be >= 0 (0 = one per CPU core), got {self.fuse_workers}")
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
            if self.k is None:  # not bound to a prepared dataset yet (see bind)
                out.append(m)
                continue
            m.folds = list(m.folds) or list(range(self.k))
            bad = [f for f in m.folds if not 0 <= f < self.k]
            if bad:
                raise ConfigError(f"members[{i}] ({m.name}): fold(s) {bad} out of range for k={self.k}")
            out.append(m)
        dup = kit_members.duplicates(m.name for m in out)
        if dup:
            raise ConfigError(f"member name(s) listed twice in members: {', '.join(dup)} (a member's name is "
                              "its model unless it has name:)")
        return out

    def tune_grid(self) -> TuneGrid:
        return kit_config.from_dict(TuneGrid, self.tune, "tune")

    def classifier_section(self) -> ClassifierSection | None:
        """The typed classifier section, or None when it is empty (``{}``, null) or its members are ``[]``."""
        c = dict(self.classifier or {})
        if not c:
            return None
        raw = c.get("members", CLASSIFIER_DEFAULT["members"])
        if raw == []:
            return None
        if not isinstance(raw, list):
            raise ConfigError("classifier.members must be a list of {model, name, folds, weight, weights}, "
                              f"got {raw!r}")
        members = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict):
                raise ConfigError(f"classifier.members[{i}] must be a mapping like {{model: cls}}, got {m!r}")
            members.append(kit_config.from_dict(ClassifierMember, m, f"classifier.members[{i}]"))
        dup = kit_members.duplicates(m.name for m in members)
        if dup:
            raise ConfigError(f"classifier.members: name(s) listed twice ({', '.join(dup)}); list each "
                              "member once with its folds, e.g. {model: cls} or {model: cls, weights: "
                              "path/fold{fold}/best.pt}, or give variants their own name:")
        return kit_config.from_dict(ClassifierSection, {**c, "members": members}, "classifier")

    def fuse_params(self, mode: str | None = None) -> FuseParams:
        """The fusion settings; ``mode`` replaces ``fusion`` (needed when it is ``auto``)."""
        mode = mode or self.fusion
        if mode == "auto":
            raise ValueError("fusion 'auto' must be resolved on out-of-fold predictions first")
        return FuseParams(
            mode=mode, iou_thr=self.iou_thr, skip_box_thr=self.skip_box_thr, conf_type=self.conf_type,
            max_det=self.max_det, weights={m.name: m.weight for m in self.member_list()},
        )


def bind(cfg: EnsembleConfig, data: Path) -> tuple[EnsembleConfig, Any]:
    """The prepared dataset of ``data`` (``cytocore.dataset.Dataset``; K and SEED from the config when
    set) and the config with its K and SEED, so every member's folds are known."""
    from cytocore import dataset

    ds = dataset.resolve(data, cfg.k, cfg.seed)
    return dataclasses.replace(cfg, k=ds.k, seed=ds.seed), ds


def one_fold(cfg: EnsembleConfig, fold: int) -> EnsembleConfig | None:
    """The ensemble of fold ``fold``'s models only (a config bound to its dataset, see ``bind``): each
    detector and classifier member that uses that fold, with that fold alone. What fold ``fold`` of round
    one predicts, as its out-of-fold predictions are made (``infer.pseudo``'s per-fold labels). None
    when no detector member uses that fold."""
    if cfg.k is None:
        raise ValueError("one_fold needs a config bound to its dataset (infer.config.bind)")
    members = [{**raw, "folds": [fold]} for raw, m in zip(cfg.members, cfg.member_list()) if fold in m.folds]
    if not members:
        return None
    section, classifier = cfg.classifier_section(), cfg.classifier
    if section is not None:
        chosen = [{**kit_config.to_dict(m), "folds": [fold]} for m in section.members
                  if not m.folds or fold in m.folds]
        classifier = {**(cfg.classifier or {}), "members": chosen}
    return dataclasses.replace(cfg, members=members, classifier=classifier)


def classifier_weights(section: ClassifierSection, ds: Any) -> tuple[list[tuple[str, int, Path]],
                                                                      list[Path]]:
    """``(found, missing)``: ``(name, fold, best.pt)`` of every classifier member fold that exists on
    the prepared dataset ``ds`` (``ClassifierMember.weights_path``), and the paths that do not."""
    found, missing = [], []
    for m in section.members:
        for fold in list(m.folds) or list(range(ds.k)):
            if not 0 <= fold < ds.k:
                raise ConfigError(f"classifier member {m.name}: fold {fold} out of range for k={ds.k}")
            path = m.weights_path(ds, fold)
            if path.exists():
                found.append((m.name, fold, path))
            else:
                missing.append(path)
    return found, missing


def load_config(path: Path, overrides: list[str] | dict = ()) -> EnsembleConfig:
    """The ensemble config from YAML plus ``key=value`` overrides."""
    return kit_config.load(EnsembleConfig, Path(path), overrides)


def device(cfg_device: str, override: str | None = None) -> str:
    """The device a step runs its networks on: ``override`` (a ``--device`` flag), else the ensemble
    config's (the recipe's) ``device``, into which ``make ... DEVICE=`` already went as ``device=``
    (one way in: a ``DEVICE`` left in a user's shell environment changes nothing). Tuning, the report
    and ``make cls-report`` all ask here."""
    return override or cfg_device


def chosen(data: Path, given: Path | None, overrides: list[str]) -> tuple[EnsembleConfig, Path]:
    """The ensemble config of a command on ``data`` (``python -m infer``, ``python -m submit``): ``given``,
    else the last ``make all``'s tuned one of the dataset (``cytocore.lastrun``, its line printed first),
    with the ``key=value`` overrides; and its path."""
    from cytocore import lastrun

    k, seed = lastrun.ds_keys(overrides)
    choice = lastrun.ensemble(data, k, seed, given=given)
    print(choice.line())
    return load_config(choice.path, overrides), choice.path
