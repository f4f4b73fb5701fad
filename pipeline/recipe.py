"""The recipe of ``make all`` / ``make demo`` (``configs/recipe.yaml``, ``configs/demo.yaml``), typed.

A recipe names everything one run needs: the folds (k, seed, prepare.folds
overrides), the detectors and crop classifiers to train per fold with their
config overrides, how many training jobs run at once, the ensemble (keys of
``configs/ensemble.yaml``, which it starts from), whether to tune, and for the
demo the synthetic data to make, the out-of-fold label audit and cleaning
(``clean``: an audit after round one; with a policy, round two on the cleaned
labels) and the pseudo-labels (``pseudo``: round two also trains on round one's
sure test images, ``infer.pseudo``). ``load(path, overrides)`` reads it; unknown
keys are an error naming the valid ones (``key=value`` overrides too, e.g.
``jobs=2`` or ``k=3``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cytocore import config as kit_config
from cytocore import dataset, members, paths
from cytocore.config import ConfigError

CLASSIFIER_KEYS = ("weight", "tta", "full_weight")  # what the recipe may set of the ensemble's classifier


@dataclasses.dataclass
class TrainMember:
    """One model trained on folds: a detector (boxes + classes) or a crop classifier."""

    model: str  # registry name (python -m train --list): the adapter and its config family
    name: str = ""  # the member's key (run folder, tables, fusion weight; cytocore.members); "" = model
    folds: list[int] = dataclasses.field(default_factory=list)  # folds to train; empty = all k
    overrides: list[str] = dataclasses.field(default_factory=list)  # configs/<model>.yaml key=value
    weight: float = 1.0  # starting weight, tuned: a detector's in the fusion, a classifier's among crop ones


@dataclasses.dataclass
class SynthSettings:
    """The synthetic data made when DATA has no train.csv (the demo)."""

    images: int = 400  # synthetic images
    test_fraction: float = 0.25  # share of them in test.csv (with test_labels.csv for the local score)
    workers: int = 2  # processes drawing them (the data does not depend on it)


@dataclasses.dataclass
class RecipeConfig:
    """configs/recipe.yaml: the whole recipe of one ``make all`` run."""

    k: int = dataset.DEFAULT_K  # folds made by prepare.folds
    seed: int = dataset.DEFAULT_SEED  # fold seed (and seed of the synthetic data)
    folds: list[str] = dataclasses.field(default_factory=list)  # prepare.folds key=value (configs/folds.yaml)
    jobs: int = 1  # training jobs at once: CPU threads split between them; on GPUs one GPU per job
    threads: int = 0  # CPU threads per training job; 0 = cores // jobs (jobs 1: the trainer's own)
    detectors: list[dict] = dataclasses.field(default_factory=list)  # TrainMember entries: the members
    classifiers: list[dict] = dataclasses.field(default_factory=list)  # TrainMember entries, trained per fold
    ensemble: dict = dataclasses.field(default_factory=dict)  # configs/ensemble.yaml keys on top of that file
    ensemble_base: str = "configs/ensemble.yaml"  # the ensemble config the section above overrides
    tune: bool = True  # tune weights, views, WBF and the classifier blend out-of-fold before the submission
    synth: dict = dataclasses.field(default_factory=dict)  # SynthSettings if DATA has no train.csv; {}: never
    cluster: dict = dataclasses.field(default_factory=dict)  # LAUNCHER=slurm settings (pipeline.cluster)
    tracker: str = "none"  # none | csv | tensorboard | mlflow (train.tracking); TRACKER= on make wins
    clean: dict = dataclasses.field(default_factory=dict)  # infer.label_audit.CleanConfig keys; {} = no audit
    pseudo: dict = dataclasses.field(default_factory=dict)  # infer.pseudo.PseudoConfig keys; {} = off

    def __post_init__(self) -> None:
        if self.k < 2 or self.jobs < 1 or self.threads < 0:
            raise ConfigError(f"recipe: k >= 2, jobs >= 1 and threads >= 0 are required "
                              f"(k={self.k}, jobs={self.jobs}, threads={self.threads})")
        detectors, classifiers = self.detector_list(), self.classifier_list()
        dup = members.duplicates(m.name for m in detectors + classifiers)
        if dup:
            raise ConfigError(f"recipe: member name(s) listed twice: {', '.join(dup)} (a member's name is "
                              "its model unless it has name:; give each variant of a model its own name)")
        known = [m.name for m in detectors]
        for c in classifiers:
            det = val_detector(c)
            if det and det not in known:
                raise ConfigError(f"recipe: classifier {c.name}: val_detector={det} is not a detector of the "
                                  f"recipe; valid: {', '.join(known)} (a detector member's name)")
        for key in ("members", "k", "seed"):
            if key in self.ensemble:
                raise ConfigError(f"recipe: ensemble.{key} comes from the recipe itself; remove it")
        extra = sorted(set(self.ensemble.get("classifier") or {}) - set(CLASSIFIER_KEYS))
        if extra:
            raise ConfigError(f"recipe: ensemble.classifier: unknown key(s) {', '.join(extra)}; valid: "
                              f"{', '.join(CLASSIFIER_KEYS)} (its members are the recipe's classifiers)")
        self.synth_settings()
        self.clean_settings()  # an unknown clean key or policy is refused with the recipe
        self.pseudo_settings()
        self.folds_config()  # a bad folds key is refused with the recipe, not after the synthetic data
        from train import tracking

        tracking.selected(self.tracker)  # an unknown tracker is refused with the recipe, not after training

    def _members(self, entries: list[dict], what: str) -> list[TrainMember]:
        from train import registry

        out = []
        for i, raw in enumerate(entries):
            if not isinstance(raw, dict) or "model" not in raw:
                raise ConfigError(f"recipe: {what}[{i}] needs a model (and optional name, folds, overrides, "
                                  f"weight); got {raw!r}")
            m = kit_config.from_dict(TrainMember, raw, f"recipe: {what}[{i}]")
            registry.check_name(m.model)
            m.name = members.member_name(m.name, m.model, f"recipe: {what}[{i}] ({m.model})")
            bad = [f for f in m.folds if not 0 <= f < self.k]
            if bad:
                raise ConfigError(f"recipe: {what}[{i}] ({m.name}): fold(s) {bad} out of range "
                                  f"for k={self.k}")
            m.folds = list(m.folds) or list(range(self.k))
            out.append(m)
        return out

    def detector_list(self) -> list[TrainMember]:
        """The detectors, typed; folds filled in (all k) when left empty."""
        return self._members(self.detectors, "detectors")

    def classifier_list(self) -> list[TrainMember]:
        """The crop classifiers, typed; folds filled in (all k) when left empty."""
        return self._members(self.classifiers, "classifiers")

    def folds_config(self):
        """``prepare.folds.FoldsConfig``: configs/folds.yaml <- the recipe's ``folds`` key=value, k, seed."""
        from prepare.folds import DEFAULT_CONFIG, FoldsConfig

        overrides = {**kit_config.parse_overrides(self.folds), "k": self.k, "seed": self.seed}
        return kit_config.load(FoldsConfig, DEFAULT_CONFIG, overrides)

    def clean_settings(self):
        """``infer.label_audit.CleanConfig`` of the ``clean`` section; None when it is empty (off)."""
        from infer.label_audit import CleanConfig

        return kit_config.from_dict(CleanConfig, self.clean, "recipe: clean") if self.clean else None

    def pseudo_settings(self):
        """``infer.pseudo.PseudoConfig`` of the ``pseudo`` section; None when it is empty (off)."""
        from infer.pseudo import PseudoConfig

        return kit_config.from_dict(PseudoConfig, self.pseudo, "recipe: pseudo") if self.pseudo else None

    def round_two(self) -> bool:
        """Whether a second round trains after the first: pseudo-labels, or cleaning with a policy."""
        clean = self.clean_settings()
        return self.pseudo_settings() is not None or bool(clean is not None and clean.policy)

    def synth_settings(self) -> SynthSettings | None:
        return kit_config.from_dict(SynthSettings, self.synth, "recipe: synth") if self.synth else None


def load(path: Path, overrides: list[str] | dict = ()) -> RecipeConfig:
    """The recipe from YAML plus ``key=value`` overrides."""
    recipe = kit_config.load(RecipeConfig, Path(path), overrides)
    if not recipe.detectors:
        raise ConfigError(f"{path}: detectors lists no model; the ensemble needs at least one")
    return recipe


def val_detector(member: TrainMember) -> str:
    """The detector member (its name) a classifier validates on: its ``val_detector`` override, else its
    config file's; "" for none (ground-truth crops)."""
    given = kit_config.parse_overrides(member.overrides)
    if "val_detector" in given:
        return str(given["val_detector"] or "")
    from train import registry

    path = registry.config_path(member.model)
    return str(kit_config.read_yaml(path).get("val_detector") or "") if path.exists() else ""


def ensemble_values(recipe: RecipeConfig, ds: Any, detectors: dict[str, list[int]],
                    classifiers: dict[str, list[int]]) -> dict[str, Any]:
    """The ensemble config (as a dict) of the trained members: ``detectors`` and ``classifiers`` map
    each member's name to its folds that finished training; members without any are left out. Each
    member entry carries its ``name`` (the files), ``model`` (the adapter) and starting ``weight``."""
    base = kit_config.read_yaml(paths.ROOT / recipe.ensemble_base)
    values = {**base, **recipe.ensemble, "k": ds.k, "seed": ds.seed}
    dets = {m.name: m for m in recipe.detector_list()}
    values["members"] = [{"name": name, "model": dets[name].model, "folds": folds,
                          "weight": dets[name].weight} for name, folds in detectors.items() if folds]
    section = {**(base.get("classifier") or {}), **(recipe.ensemble.get("classifier") or {})}
    clss = {m.name: m for m in recipe.classifier_list()}
    chosen = [{"name": name, "model": clss[name].model, "folds": folds, "weight": clss[name].weight}
              for name, folds in classifiers.items() if folds]
    values["classifier"] = {**{k: v for k, v in section.items() if k != "members"}, "members": chosen} \
        if chosen else {}
    return values
