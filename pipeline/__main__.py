"""``python -m pipeline``: the whole recipe in one command (``make all``; see ``pipeline.run``).

    python -m pipeline --recipe configs/recipe.yaml --data data/raw [--jobs N] [key=value ...]

Overrides are recipe keys (``jobs=2``, ``k=3``, ``tune=false``). Exit status 1
when a training job failed (the submission is still made from the others).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cytokit import env, io, paths


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", type=Path, default=paths.CONFIGS / "recipe.yaml", help="the recipe YAML")
    p.add_argument("--data", type=Path, default=paths.DEFAULT_DATA, help="challenge data folder")
    p.add_argument("--jobs", type=int, help="training jobs at once (the recipe's jobs)")
    p.add_argument("--out", type=Path,
                   help="submission folder (default: the ensemble's out_dir, else submissions/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env.apply()
    io.setup_logging()
    from train.parallel import passive_wait

    passive_wait()  # before torch is loaded: inference runs in this process
    from pipeline import recipe, run

    overrides = [*args.overrides, *([f"jobs={args.jobs}"] if args.jobs is not None else [])]
    report = run.run(recipe.load(args.recipe, overrides), args.data, args.out, recipe_path=args.recipe)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
