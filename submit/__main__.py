"""``python -m submit``: the submission CSV of an ensemble (``make submission``; see ``submit.make``).

    python -m submit [--config ENSEMBLE.yaml] --data DATA [--out DIR] [--force] [key=value ...]

Without ``--config`` (ENSEMBLE=): the last ``make all``'s tuned ensemble of the dataset
(``cytocore.lastrun``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cytocore import env, io, paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submit", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path,
                        help="ensemble config (default: the last make all's tuned one, cytocore.lastrun)")
    parser.add_argument("--data", type=Path, default=paths.DEFAULT_DATA, help="challenge data folder")
    parser.add_argument("--out", type=Path, help="submission folder (default: out_dir, else submissions/)")
    parser.add_argument("--force", action="store_true", help="predict again even when the tables are current")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="ensemble config overrides")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    from cytocore import dataset
    from infer import calibrate
    from infer.config import chosen
    from submit import make

    cfg, path = chosen(args.data, args.config, args.overrides)
    ds = dataset.resolve(args.data, cfg.k, cfg.seed)
    cal = calibrate.current(paths.logs_dir(ds.id) / calibrate.FILE, path)  # fitted by make all / report
    make.run(cfg, args.data, args.out, args.force, calibration=cal)
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
