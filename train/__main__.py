"""``python -m train``: train a model of the registry on one fold (or all) of a prepared dataset.

    python -m train --model yolov8 --fold 0 --data data/raw --k 5 --seed 42 [--resume] [--force] [k=v ...]
    python -m train --model fasterrcnn --fold all epochs=12 device=cpu
    python -m train --model yolov8 --fold all --jobs 2     (folds as parallel processes, train.parallel)
    python -m train --model yolov8 --name yolov8m_640 --fold 0 size=m imgsz=640   (a named variant)
    python -m train --list

(``make train MODEL= NAME= FOLD= JOBS= EPOCHS= IMGSZ= BATCH= DEVICE= WEIGHTS= RESUME=1 FORCE=1
ARGS="k=v"``.) The fold comes from ``make folds`` (``cytocore.dataset.load_fold``). Config =
defaults (``configs/<family>.yaml``, see --list) <- the member's settings (``--name``, default the
model) in the recipe of the last ``make all`` on the dataset (``--recipe`` / RECIPE= another,
``none`` none) <- ``key=value``; unknown keys are
an error naming the valid ones. Per fold, into ``work/runs/<dataset id>/<name>/fold<k>/``:
the resolved config, training (best epoch by the challenge score on the fold's
validation images), then the out-of-fold predictions of the best weights in
``work/preds/<dataset id>/<name>/fold<k>/oof.parquet`` and the fold's challenge score and
mAP50. A finished fold (``done.json``) is skipped unless ``--force``; an
interrupted one continues with ``--resume``. Folds are independent jobs: run
them in parallel on a cluster (one ``--fold`` per job). Several GPUs: ultralytics
models take ``device=0,1``; torchvision ones run under
``torchrun --nproc_per_node N -m train ... device=0,1``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cytocore import env, io, paths


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description="Train a registry model on folds.")
    p.add_argument("--model", help="registry name (see --list)")
    p.add_argument("--name", default="", help="the member's name: its run folder and tables (default: the "
                   "model; lowercase letters, digits, _ and -), as a recipe's name:")
    p.add_argument("--fold", default="0", help="fold index, or 'all' (default 0)")
    p.add_argument("--data", type=Path, default=paths.DEFAULT_DATA, help="data folder given to `make folds`")
    p.add_argument("--k", type=int, help="number of folds of the prepared dataset (default: as prepared)")
    p.add_argument("--seed", type=int, help="fold seed of the prepared dataset (default: as prepared)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last.pt")
    p.add_argument("--force", action="store_true", help="clear a finished or unfinished run and train again")
    p.add_argument("--jobs", type=int, help="run the folds as this many parallel processes, the CPU threads "
                   "(or the GPUs) split between them; logs in work/logs/<dataset id>/")
    p.add_argument("--recipe", type=Path, help="recipe whose member settings come first (default: the last "
                   "make all's on the dataset, cytocore.lastrun; 'none': the model's config alone)")
    p.add_argument("--list", action="store_true", help="list the registered models and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:  # a listing writes nothing (no work/config from env.apply)
        from train import job

        print(job.list_models())
        return 0
    env.apply()
    io.setup_logging(args.verbose)
    from train import job, parallel

    parallel.apply_threads()  # a job of train.parallel: its share of the CPU threads
    overrides = [*recipe_overrides(args), *args.overrides]
    if args.model:  # config, device, disk, /dev/shm and memory before any run folder (train.preflight)
        from train import preflight

        folds = max(1, args.jobs or 1) if str(args.fold) == "all" else 1
        preflight.check_training(args.model, overrides, folds, args.jobs or 1)
    if args.jobs is not None:
        return parallel.train_folds(args.model, args.fold, args.data, args.k, args.seed, overrides,
                                    args.jobs, args.resume, args.force, args.name)
    job.train(args.model, str(args.fold), args.data, args.k, args.seed, overrides, args.resume,
              args.force, args.name)
    return 0


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """The member's settings in the recipe (``--recipe``, else the last make all's on the dataset): the
    member named ``--name`` (default: the model), which the command line's ``key=value`` then override;
    [] when none lists it. One line says which file, so ``make train`` after ``make all`` trains what the
    run trained."""
    from cytocore import lastrun

    if not args.model or (args.recipe is not None and str(args.recipe).lower() == "none"):
        return []
    choice = lastrun.recipe(args.data, args.k, args.seed, given=args.recipe)
    if choice is None:
        return []
    overrides = lastrun.member_overrides(choice.path, args.model, args.name)
    if overrides is None:
        return []
    shown = " ".join(overrides) or "(none)"
    print(choice.line(f"{args.name or args.model} settings", "RECIPE=") + f": {shown}")
    return overrides


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
