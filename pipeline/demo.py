"""``make demo``: the ``make all`` orchestrator on synthetic data, from nothing, on a CPU.

    python -m pipeline.demo --data data/demo [--config configs/demo.yaml] [--jobs N] [key=value ...]

The recipe ``configs/demo.yaml`` (its ``synth`` section makes the data when
DATA has no train.csv) runs through ``pipeline.run``: folds, every member x fold
as parallel jobs, inference with TTA, tuning, the submission, then the score on
DATA/test_labels.csv with each member alone vs the ensemble, and beside it the
yardstick of the data's difficulty (``prepare.synth.baseline``). Every output goes
to ``work/demo/`` (its own work folder: the demo's runs never mix with the runs
of real data); the run report is ``work/demo/logs/<dataset id>/report.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cytocore import env, io, paths

DEFAULT_CONFIG = paths.CONFIGS / "demo.yaml"


def last_report() -> Path | None:
    """The report.json of the latest ``make demo`` (in the demo's work folder), or None."""
    found = sorted((paths.demo_dir() / "logs").glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=paths.DEMO_DATA,
                        help="demo data folder (made if absent)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the demo's recipe")
    parser.add_argument("--jobs", type=int, help="training jobs at once (the recipe's jobs)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    from train.parallel import passive_wait

    passive_wait()  # before torch is loaded: inference runs in this process
    from pipeline import recipe, run

    overrides = [*args.overrides, *([f"jobs={args.jobs}"] if args.jobs is not None else [])]
    cfg = recipe.load(args.config, overrides)
    with paths.using_work_dir(paths.demo_dir()):
        env.apply()
        report = run.run(cfg, args.data.resolve(), paths.submissions_dir())
        if "score" in report:
            yardstick(report)
    return 1 if report["failures"] else 0


def yardstick(report: dict) -> None:
    """Print the colour-histogram + box-size baseline of the demo data beside the demo's score, and keep
    it in report.json: the score must come from learning, not from easier data (issue #10)."""
    from prepare.synth.baseline import baseline, describe

    base = baseline(Path(report["data"]))
    print(f"\nyardstick: {describe(base)}")
    print(f"  the demo's macro-F1 term: {report['f1_term']:.3f}")
    report["baseline"] = base
    if report.get("report"):
        io.atomic_write_text(Path(report["report"]), json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
