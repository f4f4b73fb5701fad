"""Out-of-fold classifier probabilities of a prepared dataset: each image classified by the folds that
did not see it, for tuning (``infer.oof_eval``), the report and ``make cls-report``.

``OOFClassifier(ds, found, device)`` is ``train.cls.classify.CropClassifier`` (the one owner of
classifying a table's top-n rows, cached per crop in memory and under work/cache/cls) with the
dataset's image -> fold map. ``load_members`` loads classifier members for a submission, an exported
member's network run by ``infer.backends`` where asked.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from train.cls.classify import (  # noqa: F401 (re-exported: the names tuning and the tests use)
    ClassifierProbs,
    CropClassifier,
    combine,
    crop_windows,
    member_mean,
    top_rows,
)


def load_members(members: Sequence[tuple[Path, Any]], device: str = "cpu", backend: str = "torch") -> list:
    """``ClassifierPredictor`` of each (weights, config) member (config: None, a dict or a YAML path);
    ``backend`` (``infer.backends``) may run an exported member's network on the CPU."""
    from train.cls.adapter import ClassifierAdapter

    out = []
    for w, c in members:
        p = ClassifierAdapter().load(Path(w), c, device)
        if backend != "torch":
            import torch

            from infer import backends

            chosen = backends.choose(Path(w), backend, device, int(p.cfg.imgsz))
            if chosen != "torch":
                p.model = backends.RunnerModule(backends.runner(chosen, Path(w), torch.get_num_threads()))
        out.append(p)
    return out


class OOFClassifier(CropClassifier):
    """Out-of-fold probabilities on a prepared dataset ``ds``: each image by the folds that did not see it."""

    def __init__(self, ds: Any, found: Sequence[tuple[str, int, Path]], device: str = "cpu",
                 backend: str = "torch", disk: bool = True):
        self.ds = ds
        loader = None if backend == "torch" else (lambda w: load_members([(w, None)], device, backend)[0])
        super().__init__(Path(ds.images_dir), found, ds.images().set_index("NAME")["fold"], device, loader,
                         disk and loader is None)  # the disk cache holds the torch network's probabilities
