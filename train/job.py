"""One training job: a model of the registry on one fold or all folds of a prepared dataset.

``train(model, fold, data, k, seed, overrides, resume, force, name)`` is what
``python -m train`` (and ``make all``) runs: per fold, in the run folder of the member ``name``
(default: the model; ``cytocore.members``), the run folder's state
(fresh, resume, done; ``train.runs``), training through the model's adapter,
then the out-of-fold predictions of the best weights and the fold's challenge
score (``run_fold``). Under torchrun only rank 0 predicts and writes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from cytocore import makevars, paths

log = logging.getLogger("train")


def folds_of(text: str, k: int) -> list[int]:
    """``"all"`` -> ``[0..k-1]``; ``"2"`` -> ``[2]``; anything else raises ``ConfigError``."""
    from cytocore.config import ConfigError

    if text == "all":
        return list(range(k))
    try:
        fold = int(text)
    except ValueError:
        raise ConfigError(f"--fold {text!r}: expected a fold index (0..{k - 1}) or 'all'") from None
    if not 0 <= fold < k:
        raise ConfigError(f"--fold {fold}: out of range for k={k} (valid: 0..{k - 1}, or 'all')")
    return [fold]


def list_models() -> str:
    from train import registry

    lines = [f"{'model':<22} {'adapter':<36} config"]
    for name in registry.names():
        cfg = registry.config_path(name)
        shown = cfg.relative_to(paths.ROOT) if cfg.exists() else "(none)"
        lines.append(f"{name:<22} {registry.MODELS[name]:<36} {shown}")
    return "\n".join(lines)


def _agree(state: Any) -> Any:
    """Rank 0's value on every rank (torchrun); the value itself otherwise."""
    from train import dist

    if not dist.is_distributed():
        return state
    import torch.distributed as torch_dist

    box = [state]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def check_torchrun(model: str, adapter: Any) -> None:
    """Refuse torchrun for models whose training is not one-process-per-GPU DDP: ultralytics starts its
    own DDP workers (``device=0,1``) and would join a second process group; cls and unet would train the
    whole job once per process."""
    from cytocore.config import ConfigError
    from train.tv.adapter import TvAdapter
    from train.yolo.adapter import UltraAdapter

    if isinstance(adapter, TvAdapter):
        return
    hint = "device=0,1 without torchrun" if isinstance(adapter, UltraAdapter) else \
        "one GPU per fold (device=0), folds as separate jobs"
    raise ConfigError(f"{model}: torchrun (WORLD_SIZE={os.environ.get('WORLD_SIZE')}) is only for the "
                      f"torchvision models; use {hint}")


def continued_config(name: str, fold: int, cfg: Any, run_dir: Path, state: str, model: str = "") -> Any:
    """The config a run that already started goes on with: the settings it recorded in config.yaml, with
    this call's ``train.runs.RUNTIME_KEYS`` (device, workers...). A checkpoint continues what it started
    (ultralytics' resume reads its own arguments from last.pt), so settings this call changes are not
    applied, and not recorded: one line says which (``--force`` trains again with them). ``name``: the
    member, ``model``: its registry model (default: the name)."""
    from cytocore import config as kit_config
    from train import registry, runs

    changed = runs.recorded_differences(cfg, run_dir)
    if not changed:
        return cfg
    new, old = kit_config.to_dict(cfg), kit_config.read_yaml(Path(run_dir) / runs.CONFIG)
    taken = {k: v for k, v in new.items() if k in runs.RUNTIME_KEYS or k not in old}  # + keys new to the kit
    verb = "resumes with" if state == "resume" else "keeps"
    log.warning("%s fold %s: %s the settings it started with, not this call's (%s); %s trains it "
                "again with them", name, fold, verb, "; ".join(changed), makevars.spell("--force"))
    return registry.run_config(model or name, run_dir, taken)


def run_fold(name: str, adapter: Any, cfg: Any, fold_data: Any, resume: bool, force: bool,
             model: str = "") -> dict | None:
    """Train (unless finished), predict the fold's validation images, score; the done.json record.
    ``name``: the member (its run folder and tables), ``model``: its registry model (default: the name).

    Returns None on the non-zero ranks of a torchrun job (only rank 0 predicts and writes).
    """
    from train import dist, oof, runs

    fold = fold_data.fold
    run_dir, oof_file = fold_data.run_dir(name), oof.oof_path(fold_data, name)
    state = runs.prepare(run_dir, resume, force, stale=(oof_file,)) if dist.is_main() else None
    state = _agree(state)
    if state == "done":
        record = json.loads((run_dir / runs.DONE).read_text())
        stale = runs.other_folds(run_dir, fold_data.root)
        if stale:
            log.warning("%s fold %d: %s; %s to train it on the current folds", name, fold, stale,
                        makevars.spell("--force"))
        if oof_file.exists():
            print(f"{name} fold {fold}: already trained ({run_dir / runs.DONE}); "
                  f"{makevars.spell('--force')} to train again")
            return record
    if state != "fresh":
        cfg = continued_config(name, fold, cfg, run_dir, state, model)
    if state in ("fresh", "resume"):
        if dist.is_main():
            runs.save_config(cfg, run_dir)  # on resume: the recorded settings (with this call's runtime keys)
        adapter.train(cfg, fold_data, run_dir, resume=state == "resume")
        if dist.is_main():
            runs.mark_trained(run_dir)
    if not dist.is_main():  # trained (now or before): rank 0 alone predicts and writes
        return None
    best = run_dir / runs.BEST
    predictor = adapter.load(best, cfg, device=cfg.device)
    preds = adapter.oof_predictions(predictor, cfg, fold_data)
    if preds is None:
        preds = oof.predict_fold(predictor, fold_data, name, cfg.conf)
    preds["model"] = name  # the member's key in every table (an adapter's own table names its model)
    path = oof.write_oof(preds, fold_data, name)
    scores = oof.evaluate(preds, fold_data)
    record = {"model": model or name, "name": name, "fold": fold, "best": str(best), "oof": str(path),
              "n_predictions": len(preds),
              **runs.folds_record(fold_data.dataset.id if fold_data.dataset else Path(fold_data.root).name,
                                 fold_data.root), **scores}
    runs.mark_done(run_dir, record)
    print(f"{name} fold {fold}: challenge {scores['challenge']:.4f} (GIoU term {scores['giou_term']:.4f}, "
          f"F1 term {scores['f1_term']:.4f}), mAP50 {scores['map50']:.4f} -> {path}")
    return record


def train(model: str | None, fold: str, data: Path, k: int | None, seed: int | None,
          overrides: list[str] | tuple = (), resume: bool = False, force: bool = False,
          name: str = "") -> list[dict | None]:
    """Train ``model`` on ``fold`` (an index or ``all``) of the dataset prepared from ``data``, as the
    member ``name`` (its run folder; default: the model); the done.json records of the folds (None on
    non-zero torchrun ranks)."""
    from cytocore import dataset, members
    from cytocore.config import ConfigError
    from train import dist, registry

    if not model:
        raise ConfigError(f"--model is required; valid models: {', '.join(registry.names())}")
    registry.check_name(model)
    name = members.member_name(name, model, "--name")
    cfg = registry.load_config(model, list(overrides))
    adapter = registry.get(model)()
    torchrun = int(os.environ.get("WORLD_SIZE", 1)) > 1  # one process per GPU
    if torchrun:
        check_torchrun(model, adapter)
    ds = dataset.resolve(data, k, seed)
    folds = folds_of(str(fold), ds.k)
    if torchrun:
        dist.init(dist.resolve_device(cfg.device))
    records = []
    try:
        for f in folds:
            fold_data = ds.fold(f)
            records.append(run_fold(name, adapter, cfg, fold_data, resume, force, model))
    finally:
        dist.cleanup()
    done = [r for r in records if r and "challenge" in r]
    if len(done) > 1:
        mean = sum(r["challenge"] for r in done) / len(done)
        print(f"{name}: mean challenge score over {len(done)} folds {mean:.4f}")
    return records
