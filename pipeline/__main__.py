"""``python -m pipeline``: the whole recipe in one command (``make all``; see ``pipeline.run``).

    python -m pipeline --recipe configs/recipe.yaml --data data/raw [--jobs N] [--member epochs=3]
                       [--detector imgsz=640] [key=value ...]

Overrides are recipe keys (``jobs=2``, ``k=3``, ``tune=false``); ``--member`` / ``--detector`` add a
setting to every member's / detector's config (``make all EPOCHS= BATCH= DEVICE= WEIGHTS=`` / ``IMGSZ=``).
Exit status 1 when a training job failed (the submission is still made from the others).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cytocore import env, io, paths


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", type=Path, default=paths.CONFIGS / "recipe.yaml", help="the recipe YAML")
    p.add_argument("--data", type=Path, default=paths.DEFAULT_DATA, help="challenge data folder")
    p.add_argument("--jobs", type=int, help="training jobs at once (the recipe's jobs)")
    p.add_argument("--out", type=Path,
                   help="submission folder (default: the ensemble's out_dir, else submissions/)")
    p.add_argument("--member", action="append", default=[], metavar="key=value",
                   help="a setting of every member's config (make all EPOCHS= BATCH= DEVICE= WEIGHTS=)")
    p.add_argument("--detector", action="append", default=[], metavar="key=value",
                   help="a setting of every detector's config (make all IMGSZ=: a classifier's imgsz is its "
                        "crop size)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    return p.parse_args(argv)


def member_settings(recipe, every: list[str], detectors: list[str]) -> str | None:
    """Append ``every`` to each member's overrides and ``detectors`` to each detector's (they win over
    the recipe's own); ``device`` also becomes the ensemble's inference device. The line saying so."""
    from cytocore import config as kit_config

    kit_config.parse_overrides([*every, *detectors])  # key=value, or a one-line error
    for what, extra in (("detectors", every + detectors), ("classifiers", every)):
        for entry in getattr(recipe, what):
            entry["overrides"] = [*(entry.get("overrides") or []), *extra]
    device = kit_config.parse_overrides(every).get("device")
    if device is not None:
        recipe.ensemble = {**recipe.ensemble, "device": device}
    parts = [f"every member: {' '.join(every)}"] if every else []
    if detectors:
        parts.append(f"detectors only: {' '.join(detectors)} (a classifier's imgsz is its crop size)")
    return "; ".join(parts) + (" (device: inference too)" if device is not None else "") if parts else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env.apply()
    io.setup_logging()
    from train.parallel import passive_wait

    passive_wait()  # before torch is loaded: inference runs in this process
    from pipeline import recipe, run

    overrides = [*args.overrides, *([f"jobs={args.jobs}"] if args.jobs is not None else [])]
    cfg = recipe.load(args.recipe, overrides)
    line = member_settings(cfg, args.member, args.detector)
    if line:
        print(f"make all: {line}")
    report = run.run(cfg, args.data, args.out, recipe_path=args.recipe)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
