"""``python -m infer``: every ensemble member with TTA over the test (and out-of-fold) images, then fusion.

    python -m infer [--config ENSEMBLE.yaml] --data DATA [--force] [key=value ...]

(``make infer``; the submission is ``python -m submit``, ``make submission``). What it writes and
reuses: ``infer.ensemble``. Without
``--config`` (ENSEMBLE=): the last ``make all``'s tuned ensemble of the dataset (``cytocore.lastrun``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cytocore import env, io, paths
from infer.config import chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infer", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path,
                        help="ensemble config (default: the last make all's tuned one, cytocore.lastrun)")
    parser.add_argument("--data", type=Path, default=paths.DEFAULT_DATA, help="challenge data folder")
    parser.add_argument("--force", action="store_true", help="predict again even when the tables are current")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="ensemble config overrides")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    cfg, _ = chosen(args.data, args.config, args.overrides)
    from infer import ensemble

    ensemble.run(cfg, args.data, args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
