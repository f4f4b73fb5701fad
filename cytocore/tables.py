"""Readers for the challenge's CSV files that report EVERY problem at once.

Kinds of table (exact header, in this order):

- ``train``      -- ``NAME,x1,y1,x2,y2,class``          (train.csv)
- ``test``       -- ``trustii_id,NAME``                  (test.csv)
- ``submission`` -- ``trustii_id,NAME,x1,y1,x2,y2,class`` (a submission, or test_labels.csv)

``read(path, kind)`` returns a typed DataFrame (coordinates float64, trustii_id
int64, NAME and class str) or raises ``DataError`` listing each problem with its
file, line (the header is line 1) and column. Warnings (for example duplicate
train rows) are logged and do not stop the read. Raw files are only read.

A NAME is a file name inside the data folder's ``images/``: a folder part, an
absolute path or ``..`` is an error. In train.csv two names whose stems are equal
when case is ignored (``a.jpg`` / ``a.png``, ``A.jpg`` / ``a.jpg``) are an error:
the YOLO label file and the mask of an image are named by its stem.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import classes
from cytocore.io import DataError, Problem

log = logging.getLogger(__name__)

COORDS = ["x1", "y1", "x2", "y2"]  # the box columns of every table (a list: ``df[COORDS]`` selects them)
SUBMISSION_COLUMNS = ["trustii_id", "NAME", *COORDS, "class"]  # a submission / test_labels.csv, in order
COLUMNS: dict[str, tuple[str, ...]] = {
    "train": ("NAME", *COORDS, "class"),
    "test": ("trustii_id", "NAME"),
    "submission": ("trustii_id", "NAME", *COORDS, "class"),
}


def _line(raw: pd.DataFrame, position: int) -> int:
    """File line of the data row at ``position`` (the raw table's index holds line numbers)."""
    return int(raw.index[position])


def read_raw(path: Path) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Every cell as a string, indexed by its 1-based file line (the header is line 1).

    Blank lines are skipped but counted; a row whose number of fields differs from
    the header's is reported on its own line and left out. Returns ``None`` and the
    problem when the file cannot be read as a CSV at all.
    """
    path = Path(path)
    f = str(path)
    if not path.exists():
        return None, [Problem(f, "file not found")]
    if path.is_dir():
        return None, [Problem(f, "is a folder, expected a CSV file")]
    if path.stat().st_size == 0:
        return None, [Problem(f, "file is empty (expected a CSV with a header line)")]
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        return None, [Problem(f, "not a text CSV file (cannot be decoded as UTF-8)")]
    if "\x00" in text:
        return None, [Problem(f, "not a text CSV file (contains NUL bytes)")]
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    problems: list[Problem] = []
    try:
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line: skipped, but reader.line_num keeps counting
            if header is None:
                header = [c.strip() for c in fields]
                continue
            if len(fields) != len(header):
                few = "fewer" if len(fields) < len(header) else "more"
                problems.append(Problem(
                    f, f"row has {few} fields than the header ({len(fields)} instead of {len(header)})",
                    line=reader.line_num))
                continue
            rows.append(fields)
            lines.append(reader.line_num)
    except csv.Error as exc:
        return None, [Problem(f, f"not a valid CSV file: {exc}", line=reader.line_num)]
    if header is None:
        return None, [Problem(f, "file is empty (expected a CSV with a header line)")]
    if len(set(header)) != len(header):
        return None, [Problem(f, f"header repeats a column name: {','.join(header)}", line=1)]
    df = pd.DataFrame(rows, columns=header, index=pd.Index(lines, dtype=np.int64), dtype=object)
    return df, problems


def check_header(columns: list[str], kind: str, file: str) -> list[Problem]:
    """Exact header check with a hint for near misses (``Class`` for ``class``)."""
    expected = list(COLUMNS[kind])
    if list(columns) == expected:
        return []
    problems = []
    msg = f"header must be exactly {','.join(expected)}; found {','.join(map(str, columns))}"
    problems.append(Problem(file, msg, line=1))
    if len(columns) == 1:
        for sep, label in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if sep in str(columns[0]):
                problems.append(
                    Problem(
                        file,
                        f"the fields seem to be separated by {label}; the challenge "
                        "files are comma-separated CSV (save or export with ',')",
                        line=1,
                    )
                )
                return problems
    lower = {c.lower(): c for c in expected}
    for col in columns:
        if col not in expected and str(col).strip().lower() in lower:
            want = lower[str(col).strip().lower()]
            problems.append(Problem(file, f"should be spelled {want!r}", line=1, column=str(col)))
    lowered = {str(x).strip().lower() for x in columns}
    missing = [c for c in expected if c not in columns and c.lower() not in lowered]
    for col in missing:
        problems.append(Problem(file, "missing column", line=1, column=col))
    return problems


def _name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name inside images/ (None when it is)."""
    if "/" in name or "\\" in name or name in (".", "..") or (len(name) > 1 and name[1] == ":"):
        return (f"{name!r} is not a plain file name inside images/ "
                "(no folder part, absolute path or '..' is accepted)")
    return None


def stem_clashes(names: list[str]) -> list[tuple[int, int]]:
    """Positions ``(later, first)`` of distinct non-empty names whose stems are equal when case is
    ignored (``first``: the first position of the first such name)."""
    first_pos: dict[str, int] = {}
    for i, name in enumerate(names):
        if name:
            first_pos.setdefault(name, i)
    by_stem: dict[str, list[int]] = {}
    for name, i in first_pos.items():
        by_stem.setdefault(os.path.splitext(name)[0].lower(), []).append(i)
    return sorted((later, pos[0]) for pos in by_stem.values() if len(pos) > 1 for later in pos[1:])


def _bad_rows(mask: pd.Series) -> np.ndarray:
    return np.flatnonzero(mask.to_numpy())


def check_rows(raw: pd.DataFrame, kind: str, file: str) -> tuple[pd.DataFrame, list[Problem]]:
    """Type and content checks of every row (header already right). Returns typed table."""
    problems: list[Problem] = []
    out = pd.DataFrame(index=raw.index)
    names = raw["NAME"].str.strip()
    for i in _bad_rows(names == ""):
        problems.append(Problem(file, "empty image name", line=_line(raw, i), column="NAME"))
    for i, name in enumerate(names.to_numpy()):
        why = _name_problem(name) if name else None
        if why:
            problems.append(Problem(file, why, line=_line(raw, i), column="NAME"))
    if kind == "train":
        for later, first in stem_clashes(names.tolist()):
            a, b = names.iat[later], names.iat[first]
            problems.append(Problem(
                file, f"{a!r} and {b!r} (line {_line(raw, first)}) have the same stem when case is ignored: "
                      "their YOLO label files would be one file; rename one of them",
                line=_line(raw, later), column="NAME"))
    out["NAME"] = names

    if "trustii_id" in raw:
        ids = pd.to_numeric(raw["trustii_id"].str.strip(), errors="coerce")
        bad = ids.isna() | (ids != ids.round())
        for i in _bad_rows(bad):
            problems.append(Problem(file, f"not an integer: {raw['trustii_id'].iat[i]!r}", line=_line(raw, i),
                                    column="trustii_id"))
        ids = ids.fillna(-1).astype(np.int64)
        dup = ids.duplicated(keep="first") & ~bad
        if dup.any():
            first = {v: k for k, v in reversed(list(enumerate(ids.to_numpy())))}
            for i in _bad_rows(dup):
                problems.append(Problem(
                    file, f"trustii_id {ids.iat[i]} repeated (first on line {_line(raw, first[ids.iat[i]])})",
                    line=_line(raw, i), column="trustii_id"))
        out.insert(0, "trustii_id", ids)

    if "x1" in raw:
        coord_ok = pd.Series(True, index=raw.index)
        for col in COORDS:
            vals = pd.to_numeric(raw[col].str.strip(), errors="coerce")
            bad = ~np.isfinite(vals.to_numpy(dtype=np.float64, na_value=np.nan))
            for i in np.flatnonzero(bad):
                problems.append(Problem(file, f"not a finite number: {raw[col].iat[i]!r}", line=_line(raw, i),
                                        column=col))
            coord_ok &= ~bad
            out[col] = vals.astype(np.float64)
        for lo, hi in (("x1", "x2"), ("y1", "y2")):
            bad = coord_ok & (out[hi] <= out[lo])
            for i in _bad_rows(bad):
                problems.append(Problem(
                    file, f"{hi} ({out[hi].iat[i]:g}) must be greater than {lo} ({out[lo].iat[i]:g})",
                    line=_line(raw, i), column=hi))

    if "class" in raw:
        cls = raw["class"]
        valid = cls.isin(classes.CLASSES)
        for i in _bad_rows(~valid):
            hint = classes.suggest(cls.iat[i])
            extra = f"; did you mean {hint!r}?" if hint else f"; valid codes: {', '.join(classes.CLASSES)}"
            problems.append(Problem(file, f"unknown class {cls.iat[i]!r}{extra}", line=_line(raw, i),
                                    column="class"))
        out["class"] = cls

    dup_rows = raw.duplicated(keep="first")
    if dup_rows.any():
        level = "warning" if kind == "train" else "error"
        key = raw.apply(tuple, axis=1) if dup_rows.sum() < 10_000 else None
        first: dict = {}
        if key is not None:
            for i, k in enumerate(key):
                first.setdefault(k, i)
        for i in _bad_rows(dup_rows):
            where = f" (same as line {_line(raw, first[key.iat[i]])})" if key is not None else ""
            problems.append(Problem(file, f"duplicate row{where}", line=_line(raw, i), level=level))
    return out.reset_index(drop=True), problems


def read(path: Path, kind: str) -> pd.DataFrame:
    """Read and validate a challenge CSV of ``kind``; raise ``DataError`` on any error."""
    if kind not in COLUMNS:
        raise ValueError(f"unknown table kind {kind!r}; valid kinds: {', '.join(COLUMNS)}")
    table, problems = inspect(path, kind)
    errors = [p for p in problems if p.level == "error"]
    for p in problems:
        if p.level == "warning":
            log.warning("%s", p)
    if errors or table is None:
        raise DataError(problems)
    return table


def inspect(path: Path, kind: str) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Like ``read`` but returns ``(table or None, problems)`` instead of raising."""
    raw, problems = read_raw(path)
    if raw is None:
        return None, problems
    header_problems = check_header(list(raw.columns), kind, str(path))
    if header_problems:
        return None, header_problems
    if raw.empty:
        return None, problems or [Problem(str(path), "no data rows after the header")]
    table, row_problems = check_rows(raw, kind, str(path))
    return table, sorted(problems + row_problems, key=lambda p: (p.line or 0))


def read_train(path: Path) -> pd.DataFrame:
    return read(path, "train")


def read_test(path: Path) -> pd.DataFrame:
    return read(path, "test")

