"""Ensemble settings scored on out-of-fold images exactly as a submission made with them would be.

``Evaluator(oof, classifier)`` turns ``Settings`` (the fusion's ``FuseParams``
plus the classifier ``Blend``) into the out-of-fold prediction table a
submission with those settings implies -- the members' OOF tables fused
(``infer.fuse``), the classifier blended into the fused boxes (``infer.blend``,
each image classified by the folds that did not see it, ``infer.oof_cls``) --
and scores it with ``cytocore.submission.oof_score``: the writer's rows per
test.csv row (top-N by score, full-image fillers with the image's likely class)
and the challenge metric. Tuning (``infer.tune``), ``fusion: auto`` and
``make score`` all go through it, so their numbers are the same number.

``load_oof`` gathers the members' OOF tables over the images every member
covers; ``config_settings`` reads an ensemble config's settings (with 2+ crop
classifier members, ``crop_members``, their relative shares too);
``intervals`` is the paired bootstrap (``cytocore.compare``) of each row
against a reference row, as the score tables print it.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytocore import members, predictions
from infer import blend
from infer.config import EnsembleConfig, bind, classifier_weights
from infer.fuse import FuseParams, fuse_grouped, group

log = logging.getLogger(__name__)


@dataclasses.dataclass
class OOF:
    """Out-of-fold predictions of every member on the images all of them cover, and the truth."""

    preds: pd.DataFrame
    truth_boxes: pd.DataFrame  # NAME,x1,y1,x2,y2,class
    images: pd.DataFrame  # NAME,width,height
    sources: list[Path]


def load_oof(cfg: EnsembleConfig, data: Path, max_images: int = 0, seed: int = 0) -> OOF:
    """Each member's OOF tables over its folds, restricted to the images covered by every member."""
    cfg, ds = bind(cfg, data)
    tables, sources, covered, boxes, images = [], [], None, {}, {}
    for m in cfg.member_list():
        names: set[str] = set()
        for fold in m.folds:
            fd = ds.fold(fold)
            folder = ds.preds_dir(m.name, fold)
            path = next((folder / f for f in predictions.OOF_FILES if (folder / f).exists()), None)
            if path is None:
                raise FileNotFoundError(f"{folder}: no {' or '.join(predictions.OOF_FILES)}; "
                                        f"train {m.name} fold {fold} and run make infer first")
            table = predictions.read(path)
            table["model"] = m.name  # the member's key: its fusion weight and table rows
            tables.append(table)
            sources.append(path)
            names |= set(fd.val_images["NAME"])
            boxes[fold], images[fold] = fd.val_boxes, fd.val_images
        covered = names if covered is None else covered & names
    if not covered:
        raise ValueError("the members' folds share no validation image; nothing to score out of fold")
    keep = sorted(covered)
    if max_images and len(keep) > max_images:
        keep = sorted(np.random.default_rng(seed).choice(keep, max_images, replace=False).tolist())
    keep_set = set(keep)
    preds = pd.concat(tables, ignore_index=True)
    truth = pd.concat(boxes.values(), ignore_index=True)
    imgs = pd.concat(images.values(), ignore_index=True).drop_duplicates("NAME")
    return OOF(preds[preds["NAME"].isin(keep_set)].reset_index(drop=True),
               truth[truth["NAME"].isin(keep_set)].reset_index(drop=True),
               imgs[imgs["NAME"].isin(keep_set)].reset_index(drop=True), sources)


@dataclasses.dataclass(frozen=True)
class Blend:
    """The classifier's part of a trial (``classifier`` section of the config)."""

    weight: float = 0.0  # 0 = the detectors' classes
    tta: bool = True
    full_weight: float = 0.5
    members: tuple[tuple[str, float], ...] = ()  # (crop member, relative share) with 2+ of them; () = equal


OFF = Blend()


@dataclasses.dataclass(frozen=True)
class Settings:
    """One point of the search: fusion settings and classifier blend."""

    fuse: FuseParams
    blend: Blend = OFF

    def key(self) -> tuple:
        p, b = self.fuse, self.blend
        cls = (b.weight, b.tta, b.full_weight) if b.weight > 0 else (0.0,)
        if b.weight > 0 and len(b.members) > 1:  # one crop member: the key (and cache) of before
            cls += (tuple(sorted(b.members)),)
        return (p.mode, p.iou_thr, p.skip_box_thr, p.conf_type, p.max_det,
                tuple(sorted((m, w) for m, w in p.weights.items())), tuple(p.views), cls)


def classifier_for(cfg: EnsembleConfig, ds: Any, quiet: bool = False):
    """The ``infer.oof_cls.OOFClassifier`` of the config's classifier section on ``ds`` (None when the
    section is off or no fold is trained; then one line says so, unless ``quiet``)."""
    from infer.config import device
    from infer.oof_cls import OOFClassifier

    section = cfg.classifier_section()
    if section is None:
        return None
    found, missing = classifier_weights(section, ds)
    if not found:
        if not quiet:
            log.warning(missing_message(section, ds, missing))
        return None
    if missing and not quiet:
        log.warning("classifier: %d fold(s) not trained (first: %s); their images keep the detectors' "
                    "classes out of fold", len(missing), missing[0])
    return OOFClassifier(ds, found, device(cfg.device))


def missing_message(section: Any, ds: Any, missing: list[Path]) -> str:
    """One line: no classifier fold is trained, how to train them or switch the classifier off."""
    models = ", ".join(m.name for m in section.members)
    data = ds.meta.get("data", "DATA")
    train = "; ".join(f"make train {members.train_vars(m.name, m.model)} FOLD=all DATA={data}"
                      for m in section.members)
    return (f"classifier: no trained {models} fold on dataset {ds.id} (looked for {missing[0]}); "
            f"the detectors' classes are used. Train it with `{train}`, or switch it off with "
            "`classifier: {}` in the ensemble config")


def crop_members(classifier: Any) -> list[str]:
    """The crop (not full-image) members of a classifier (``CropClassifier``; None: none)."""
    if classifier is None:
        return []
    return [m for m in classifier.models if classifier.mode(m) == "crop"]


def config_settings(cfg: EnsembleConfig, views: list[str], classifier: bool,
                    crop: Sequence[str] = ()) -> list[Settings]:
    """The settings of ``cfg`` as ``make submission`` applies them (one per mode for ``fusion: auto``);
    ``views``: the TTA views the OOF tables hold; ``classifier``: whether its folds exist; ``crop``:
    its crop members with trained folds (``crop_members``): with 2+, the blend holds their shares."""
    section = cfg.classifier_section()
    b = OFF
    if classifier and section is not None:
        shares = tuple((m, w) for m, w in section.shares().items() if m in crop)
        b = Blend(section.weight, section.tta, section.full_weight, shares if len(shares) > 1 else ())
    kept = tuple(v for v in cfg.tta if v in views)
    modes = ("wbf", "agnostic") if cfg.fusion == "auto" else (cfg.fusion,)
    return [Settings(dataclasses.replace(cfg.fuse_params(mode), views=kept), b) for mode in modes]


class Evaluator:
    """Fuse, blend and score out-of-fold settings; each setting scored once (see the module docstring)."""

    def __init__(self, oof: OOF, classifier: Any = None, skip_box_thr: float = 0.001, max_det: int = 0):
        self.oof, self.classifier = oof, classifier
        self.n_cells = oof.truth_boxes.groupby("NAME").size().to_dict()
        self.skip_box_thr, self.max_det = skip_box_thr, max_det
        self.grouped = group(oof.preds, skip_box_thr, max_det, oof=True)
        self.views = sorted(set(oof.preds["view"]))
        self.results: dict[tuple, Any] = {}
        self.seconds = {"fuse": 0.0, "classify": 0.0, "score": 0.0}
        self._fused: tuple[tuple, pd.DataFrame] | None = None

    def fused(self, p: FuseParams) -> pd.DataFrame:
        """The fused OOF table of ``p`` (the last one is kept: classifier moves reuse it)."""
        if p.skip_box_thr < self.skip_box_thr or p.max_det != self.max_det:
            raise ValueError(f"settings need skip_box_thr >= {self.skip_box_thr} and max_det "
                             f"{self.max_det}, got {p.skip_box_thr} and {p.max_det}")
        key = Settings(p).key()
        if self._fused is None or self._fused[0] != key:
            start = time.perf_counter()
            self._fused = key, fuse_grouped(self.grouped, p, progress=False)
            self.seconds["fuse"] += time.perf_counter() - start
        return self._fused[1]

    def table(self, s: Settings) -> pd.DataFrame:
        """The OOF prediction table a submission with ``s`` implies (before the writer)."""
        fused = self.fused(s.fuse)
        if s.blend.weight == 0 or self.classifier is None or not len(fused):
            return fused
        start = time.perf_counter()
        probs = self.classifier.probs(fused, s.blend.tta, self.n_cells)
        self.seconds["classify"] += time.perf_counter() - start
        return blend.blend_table(fused, probs, s.blend.weight, s.blend.full_weight, dict(s.blend.members))

    def result(self, s: Settings):
        """``cytocore.metric.ScoreResult`` of ``s`` (cached per settings)."""
        from cytocore.submission import oof_score

        key = s.key()
        if key not in self.results:
            table = self.table(s)
            start = time.perf_counter()
            self.results[key] = oof_score(table, self.oof.truth_boxes, self.oof.images)
            self.seconds["score"] += time.perf_counter() - start
        return self.results[key]


def intervals(results: dict[str, Any], reference: str, n: int = 1000) -> dict[str, str]:
    """Per row: ``diff [lo, hi]`` of its score minus the reference row's, a paired bootstrap over images
    (95 %); empty for the reference itself."""
    from cytocore.compare import paired_bootstrap

    ref = results[reference]
    return {label: "" if label == reference else str(paired_bootstrap(r, ref, n=n))
            for label, r in results.items()}
