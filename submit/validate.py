"""Check a submission CSV against test.csv before it is uploaded: every problem, with its line.

    python -m submit.validate --submission SUB.csv --test TEST.csv [--images DIR]

Errors: a header other than exactly ``trustii_id,NAME,x1,y1,x2,y2,class``; a
row count or trustii_id set that differs from test.csv; a trustii_id under
another image's NAME; an empty or NaN cell; a class outside the 23 codes (the
nearest code is suggested); coordinates that are not finite numbers or with
x2 <= x1 or y2 <= y1; an exact duplicate (box, class) inside one image (the
metric would drop it). Warnings: rows not in test.csv order; with ``--images``,
boxes that leave their image (sizes from the image headers), unreadable images
and (in one warning) missing ones. At most ``cytocore.io.MAX_SHOWN`` problems are
printed, errors first, then how many more there are.
Exit status 1 when there is any error, 0 otherwise.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import images, io, tables
from cytocore.io import Problem
from cytocore.tables import COORDS

log = logging.getLogger(__name__)


def _line(pos: int) -> int:
    return int(pos) + 2


def _against_test(sub: pd.DataFrame, test: pd.DataFrame, file: str, test_file: str) -> list[Problem]:
    """Row count, trustii_id set, NAME of each trustii_id, order."""
    problems: list[Problem] = []
    if len(sub) != len(test):
        problems.append(Problem(file, f"{len(sub)} rows, test.csv has {len(test)} "
                                      "(one row per test.csv row)"))
    test_pos = pd.Series(np.arange(len(test)), index=test["trustii_id"].to_numpy())
    test_pos = test_pos[~test_pos.index.duplicated()]
    pos = test_pos.reindex(sub["trustii_id"].to_numpy()).to_numpy()
    extra = [Problem(file, f"trustii_id {sub['trustii_id'].iat[i]} is not in {test_file}", line=_line(i),
                     column="trustii_id") for i in np.flatnonzero(np.isnan(pos) & (sub["trustii_id"] != -1))]
    problems += extra
    missing_ids = ~test["trustii_id"].isin(sub["trustii_id"]).to_numpy()
    missing = [Problem(file, f"no row for trustii_id {test['trustii_id'].iat[i]} "
                             f"({test_file} line {_line(i)}, {test['NAME'].iat[i]})", column="trustii_id")
               for i in np.flatnonzero(missing_ids)]
    problems += missing
    known = np.flatnonzero(~np.isnan(pos))
    want = test["NAME"].to_numpy(dtype=object)[pos[known].astype(np.int64)]
    wrong = known[sub["NAME"].to_numpy(dtype=object)[known] != want]
    wrong_name = [Problem(file, f"NAME {sub['NAME'].iat[i]!r} but {test_file} gives "
                                f"{want[np.searchsorted(known, i)]!r} "
                                f"for trustii_id {sub['trustii_id'].iat[i]}",
                          line=_line(i), column="NAME") for i in wrong]
    problems += wrong_name
    if not problems and not np.array_equal(pos, np.arange(len(test))):
        first = int(np.flatnonzero(pos != np.arange(len(test)))[0])
        problems.append(Problem(file, "rows are not in test.csv order (the metric does not need it)",
                                line=_line(first), level="warning"))
    return problems


def _duplicates(sub: pd.DataFrame, file: str) -> list[Problem]:
    """Exact duplicate (NAME, box, class) rows: the metric keeps only the first."""
    key = ["NAME", *COORDS, "class"]
    # whole-row repeats are already reported by tables.check_rows
    dup = (sub.duplicated(subset=key, keep="first") & ~sub.duplicated(keep="first")).to_numpy()
    if not dup.any():
        return []
    numbered = sub.reset_index(drop=True).reset_index()
    first = numbered.groupby(key, sort=False)["index"].transform("min").to_numpy()
    found = [Problem(file, f"same box and class as line {_line(first[i])} in image {sub['NAME'].iat[i]} "
                           "(the metric would drop this row)", line=_line(i)) for i in np.flatnonzero(dup)]
    return found


def _outside(sub: pd.DataFrame, images_dir: Path, file: str) -> list[Problem]:
    """Warnings for boxes leaving their image and for images that cannot be read (missing ones
    counted in one warning)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        return [Problem(str(images_dir), "images folder not found: boxes not checked against image sizes",
                        level="warning")]
    sizes, missing, problems = {}, [], []
    for name in pd.unique(sub["NAME"]):
        path = images_dir / name
        if not path.is_file():
            missing.append(name)
            continue
        try:
            sizes[name] = images.read_size(path)
        except ValueError as exc:
            problems.append(Problem(file, f"image {name}: {exc}", level="warning"))
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        problems.insert(
            0,
            Problem(
                str(images_dir),
                f"{len(missing)} of {len(sizes) + len(missing) + len(problems)} "
                f"image(s) of {file} not found ({shown}): their boxes are not checked",
                level="warning",
            ),
        )
    wh = np.array([sizes.get(n, (np.nan, np.nan)) for n in sub["NAME"]], dtype=np.float64).reshape(-1, 2)
    w, h = wh[:, 0], wh[:, 1]
    x1, y1, x2, y2 = (sub[c].to_numpy(np.float64) for c in COORDS)
    with np.errstate(invalid="ignore"):
        out = np.isfinite(w) & ((x1 < 0) | (y1 < 0) | (x2 > w) | (y2 > h))
    return problems + [Problem(file, f"box {sub[COORDS].iloc[i].tolist()} leaves image {sub['NAME'].iat[i]} "
                                     f"({int(w[i])}x{int(h[i])})", line=_line(i), level="warning")
                       for i in np.flatnonzero(out)]


def validate_submission(sub_path: Path, test_path: Path, images_dir: Path | None = None) -> list[Problem]:
    """Every problem of the submission at ``sub_path`` against ``test_path`` (errors and warnings).

    Builds on ``cytocore.tables.inspect`` for the header, types, classes and boxes,
    then checks the rows against test.csv, duplicates inside images and, when
    ``images_dir`` is given, boxes against the image sizes.
    """
    file = str(sub_path)
    sub, problems = tables.inspect(Path(sub_path), "submission")
    test, test_problems = tables.inspect(Path(test_path), "test")
    problems = list(problems) + [p for p in test_problems if p.level == "error"]
    if sub is None or test is None:
        return problems
    problems += _against_test(sub, test, file, str(test_path))
    problems += _duplicates(sub, file)
    if images_dir is not None:
        problems += _outside(sub, Path(images_dir), file)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submit.validate", description=__doc__.split("\n")[0])
    parser.add_argument("--submission", type=Path, required=True, help="submission CSV to check")
    parser.add_argument("--test", type=Path, required=True, help="the challenge's test.csv")
    parser.add_argument("--images", type=Path, help="image folder: also check boxes against image sizes")
    args = parser.parse_args(argv)
    problems = validate_submission(args.submission, args.test, args.images)
    errors = sum(p.level == "error" for p in problems)
    shown = sorted(problems, key=lambda p: p.level != "error")[:io.MAX_SHOWN]  # errors first
    for p in shown:
        print(p)
    if len(problems) > len(shown):
        print(f"... {len(problems) - len(shown)} more problem(s) not shown")
    print(f"{args.submission}: {errors} error(s), {len(problems) - errors} warning(s)"
          + ("" if errors else " -- ready to upload"))
    return 1 if errors else 0

if __name__ == "__main__":
    raise SystemExit(io.cli(main))
