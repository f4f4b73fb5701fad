"""``python -m submit.score``: score a submission CSV against a truth CSV with the challenge metric.

    python -m submit.score --truth TRUTH.csv --submission SUB.csv [--json OUT.json] [--confusion OUT.png]

The truth is read strictly (``cytocore.tables``, header
``trustii_id,NAME,x1,y1,x2,y2,class``); the submission leniently, like the
platform (NaN classes, typos and extra rows are scored, not refused). The
metric itself is ``cytocore.metric.score``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from cytocore import env, io, makevars, metric, tables
from cytocore.metric import COLUMNS


def read_submission_lenient(path: Path) -> pd.DataFrame:
    """A submission CSV read the way the platform reads it (pandas defaults, nothing refused)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: submission file not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise io.DataError(io.Problem(str(path), f"cannot be read as CSV: {exc}")) from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise io.DataError(io.Problem(str(path), f"missing column(s) {', '.join(missing)}", line=1))
    return df


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submit.score", description=__doc__.split("\n")[0])
    parser.add_argument("--truth", type=Path, help="truth CSV: trustii_id,NAME,x1,y1,x2,y2,class (required)")
    parser.add_argument("--submission", type=Path, required=True, help="submission CSV to score")
    parser.add_argument("--json", type=Path, help="write the result as JSON here")
    parser.add_argument("--confusion", type=Path, help="save the confusion matrix as a PNG here")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="device= only (scoring is on the CPU)")
    args = parser.parse_args(argv)
    if args.truth is None:
        raise io.ConfigError(f"scoring {args.submission} needs the truth: "
                             f"{makevars.setting('--truth', 'truth.csv')} "
                             "(header trustii_id,NAME,x1,y1,x2,y2,class)")
    makevars.scoring_overrides(args.overrides, "make score" if makevars.under_make() else "submit.score")
    env.apply()
    result = metric.score(tables.read(args.truth, "submission"), read_submission_lenient(args.submission))
    print(metric.format_result(result))
    if args.json:
        io.atomic_write_text(args.json, json.dumps(result.to_dict(), indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.confusion:
        metric.save_confusion(result, args.confusion)
        print(f"wrote {args.confusion}")
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
