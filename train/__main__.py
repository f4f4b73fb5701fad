"""``python -m train``: train a model of the registry on one fold (or all) of a prepared dataset.

    python -m train --model yolov8 --fold 0 --data data/raw --k 5 --seed 42 [--resume] [--force] [k=v ...]
    python -m train --model fasterrcnn --fold all epochs=12 device=cpu
    python -m train --list

(``make train MODEL= FOLD= EPOCHS= IMGSZ= BATCH= DEVICE= WEIGHTS= RESUME=1 FORCE=1 ARGS="k=v"``.)
The fold comes from ``make folds`` (``prepare.dataset.load_fold``). Config =
dataclass defaults <- ``configs/<model>.yaml`` <- ``key=value``; unknown keys are
an error naming the valid ones. Per fold, into ``work/runs/<model>/fold<k>/``:
the resolved config, training (best epoch by the challenge score on the fold's
validation images), then the out-of-fold predictions of the best weights in
``work/preds/<model>/fold<k>/oof.parquet`` and the fold's challenge score and
mAP50. A finished fold (``done.json``) is skipped unless ``--force``; an
interrupted one continues with ``--resume``. Folds are independent jobs: run
them in parallel on a cluster (one ``--fold`` per job). Several GPUs: ultralytics
models take ``device=0,1``; torchvision ones run under
``torchrun --nproc_per_node N -m train ... device=0,1``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from cytokit import env, io, paths

log = logging.getLogger("train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description="Train a registry model on folds.")
    p.add_argument("--model", help="registry name (see --list)")
    p.add_argument("--fold", default="0", help="fold index, or 'all' (default 0)")
    p.add_argument("--data", type=Path, default=paths.DEFAULT_DATA, help="data folder given to `make folds`")
    p.add_argument("--k", type=int, default=5, help="number of folds of the prepared dataset (default 5)")
    p.add_argument("--seed", type=int, default=42, help="fold seed of the prepared dataset (default 42)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last.pt")
    p.add_argument("--force", action="store_true", help="clear a finished or unfinished run and train again")
    p.add_argument("--list", action="store_true", help="list the registered models and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p.parse_args(argv)


def folds_of(text: str, k: int) -> list[int]:
    """``"all"`` -> ``[0..k-1]``; ``"2"`` -> ``[2]``; anything else raises ``ConfigError``."""
    from cytokit.config import ConfigError

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


def run_fold(name: str, adapter: Any, cfg: Any, fold_data: Any, resume: bool, force: bool) -> dict | None:
    """Train (unless finished), predict the fold's validation images, score; the done.json record.

    Returns None on the non-zero ranks of a torchrun job (only rank 0 predicts and writes).
    """
    from train import dist, oof, runs

    fold = fold_data.fold
    run_dir, oof_file = paths.run_dir(name, fold), oof.oof_path(name, fold)
    state = runs.prepare(run_dir, resume, force, stale=(oof_file,)) if dist.is_main() else None
    state = _agree(state)
    if state == "done":
        record = json.loads((run_dir / runs.DONE).read_text())
        if oof_file.exists():
            print(f"{name} fold {fold}: already trained ({run_dir / runs.DONE}); --force to train again")
            return record
    if state in ("fresh", "resume"):
        if dist.is_main():
            runs.save_config(cfg, run_dir)
        adapter.train(cfg, fold_data, run_dir, resume=state == "resume")
        if not dist.is_main():
            return None
        runs.mark_trained(run_dir)
    best = run_dir / "best.pt"
    predictor = adapter.load(best, cfg, device=cfg.device)
    preds = oof.predict_fold(predictor, fold_data, name, cfg.conf)
    path = oof.write_oof(preds, name, fold)
    scores = oof.evaluate(preds, fold_data)
    record = {"model": name, "fold": fold, "best": str(best), "oof": str(path), "n_predictions": len(preds),
              **scores}
    runs.mark_done(run_dir, record)
    print(f"{name} fold {fold}: challenge {scores['challenge']:.4f} (GIoU term {scores['giou_term']:.4f}, "
          f"F1 term {scores['f1_term']:.4f}), mAP50 {scores['map50']:.4f} -> {path}")
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env.apply()
    io.setup_logging(args.verbose)
    if args.list:
        print(list_models())
        return 0
    from cytokit.config import ConfigError
    from prepare import dataset
    from train import dist, registry

    if not args.model:
        raise ConfigError(f"--model is required; valid models: {', '.join(registry.names())}")
    registry.check_name(args.model)
    cfg = registry.load_config(args.model, args.overrides)
    adapter = registry.get(args.model)()
    folds = folds_of(str(args.fold), args.k)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # torchrun: one process per GPU
        dist.init(dist.resolve_device(cfg.device))
    records = []
    try:
        for fold in folds:
            fold_data = dataset.load_fold(args.data, args.k, args.seed, fold)
            records.append(run_fold(args.model, adapter, cfg, fold_data, args.resume, args.force))
    finally:
        dist.cleanup()
    done = [r for r in records if r and "challenge" in r]
    if len(done) > 1:
        mean = sum(r["challenge"] for r in done) / len(done)
        print(f"{args.model}: mean challenge score over {len(done)} folds {mean:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
