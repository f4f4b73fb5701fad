"""Writing the submission CSV: validated, atomic, timestamped, with ``submission.csv`` at the latest.

``write_submission`` validates the table with ``submit.validate`` and writes it
atomically to ``submissions/submission_<timestamp>.csv`` (never overwriting)
with ``submissions/submission.csv`` pointing at the latest. The rows
themselves come from ``cytocore.submission.make_submission``.

Command line: ``python -m submit.write --preds PARQUET --test TEST.csv --images DIR``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from cytocore import io, paths
from cytocore.tables import SUBMISSION_COLUMNS as COLUMNS

log = logging.getLogger(__name__)


def _point_latest(target: Path) -> Path:
    """Make ``<folder>/submission.csv`` a symlink to ``target`` (a copy where links fail), atomically."""
    latest = target.parent / "submission.csv"
    tmp = target.parent / f".submission.csv.{os.getpid()}.tmp"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target.name, tmp)
        os.replace(tmp, latest)
    except OSError:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        with io.atomic_write(latest) as part:
            shutil.copyfile(target, part)
    return latest


def write_submission(df: pd.DataFrame, test_path: Path, out_dir: Path | None = None,
                     images_dir: Path | None = None) -> Path:
    """Validate ``df`` against ``test_path`` and write it as a new timestamped CSV in ``out_dir``
    (default ``paths.submissions_dir()``).

    Raises ``DataError`` listing every problem (nothing written) when the
    validator finds an error; warnings are logged; a folder that cannot be
    written raises the ``OSError`` naming it (one line through ``io.cli``).
    Returns the new file's path; ``out_dir/submission.csv`` then points at it.
    """
    from submit.validate import validate_submission

    out_dir = Path(out_dir) if out_dir is not None else paths.submissions_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, i = out_dir / f"submission_{stamp}.csv", 1
    while target.exists():
        target, i = out_dir / f"submission_{stamp}_{i}.csv", i + 1
    with io.atomic_write(target) as tmp:
        df[COLUMNS].to_csv(tmp, index=False)
        problems = [dataclasses.replace(p, file=str(target)) if p.file == str(tmp) else p
                    for p in validate_submission(tmp, test_path, images_dir)]
        for p in problems:
            if p.level == "warning":
                log.warning("%s", p)
        if any(p.level == "error" for p in problems):
            raise io.DataError(problems)
    _point_latest(target)
    log.info("wrote %s (%d rows)", target, len(df))
    return target
