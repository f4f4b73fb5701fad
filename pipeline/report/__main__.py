"""``python -m pipeline.report --data DATA [--k K --seed SEED] [key=value ...]``: the dataset's HTML report.

``make report``; the page is described in ``pipeline.report``. Without ``--config`` (ENSEMBLE=) the
out-of-fold table uses the last ``make all``'s tuned ensemble of the dataset (``cytocore.lastrun``), so the
page of a run made again gives that run's numbers.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cytocore import env, io, lastrun, paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report",
                                     description="Write a prepared dataset's HTML report (make report).")
    parser.add_argument("--data", type=Path, default=paths.DEFAULT_DATA, help="the data folder of make folds")
    parser.add_argument("--k", type=int, help="folds of the prepared dataset (default: as prepared)")
    parser.add_argument("--seed", type=int, help="fold seed of the prepared dataset (default: as prepared)")
    parser.add_argument("--config", type=Path,
                        help="ensemble config (default: the last make all's tuned one, cytocore.lastrun)")
    parser.add_argument("--submission", type=Path, help="submission to validate (default: the latest)")
    parser.add_argument("--out", type=Path, help="HTML file to write (default work/reports/<dataset>.html)")
    parser.add_argument("--no-classifier", action="store_true", help="skip the classifier blend rows")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per comparison")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="ensemble config overrides (device=cuda, ...)")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    from pipeline.report import build_report

    choice = lastrun.ensemble(args.data, args.k, args.seed, given=args.config)
    print(choice.line())
    path = build_report(args.data, args.k, args.seed, choice.path, args.submission, args.out,
                        not args.no_classifier, args.bootstrap, args.overrides)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
