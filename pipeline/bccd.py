"""``make bccd``: the BCCD data folder (``prepare.bccd``), then ``make all`` on it with configs/bccd.yaml.

    python -m pipeline.bccd [--bccd ../shared/data/bccd] [--out DIR] [--jobs N] [key=value ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cytocore import io, paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bccd", description=__doc__.split("\n")[0])
    p.add_argument("--bccd", type=Path, default=paths.bccd_dir(), help="the BCCD folder (read only)")
    p.add_argument("--out", type=Path, help="the data folder to write (default <work>/data/bccd)")
    p.add_argument("--jobs", type=int, help="training jobs at once (default: the recipe's jobs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    args = p.parse_args(argv)
    from pipeline.__main__ import main as make_all
    from prepare import bccd

    out = args.out or bccd.default_out()
    code = bccd.main(["--bccd", str(args.bccd), "--out", str(out)])
    if code:
        return code
    return make_all(["--recipe", str(paths.CONFIGS / "bccd.yaml"), "--data", str(out), *args.overrides,
                     *(["--jobs", str(args.jobs)] if args.jobs is not None else [])])


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
