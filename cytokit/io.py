"""Safe file output and user-facing errors.

- ``atomic_write`` / ``atomic_write_text`` / ``atomic_write_df``: write to a
  temporary file in the target folder, then rename, so a crash never leaves a
  half-written output.
- ``Problem`` / ``DataError``: every problem found in an input file, with file,
  line and column, reported at once.
- ``cli``: runs a ``main()`` so that user errors print one line each and exit
  non-zero, without a traceback.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("cytokit")
MAX_SHOWN = 200  # problems printed by a DataError; all are kept in .problems


@contextlib.contextmanager
def atomic_write(path: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix + ".tmp",
        dir=path.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: Path, text: str) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_df(df, path: Path, **kwargs) -> Path:
    """Write a DataFrame as CSV or parquet (by suffix), atomically."""
    path = Path(path)
    with atomic_write(path, suffix=".tmp" + path.suffix) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False, **kwargs)
        else:
            df.to_csv(tmp, index=False, **kwargs)
    return path


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem in an input file. ``line`` is 1-based (the header is line 1)."""

    file: str
    message: str
    line: int | None = None
    column: str | None = None
    level: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        col = f" column {self.column!r}:" if self.column else ""
        return f"{where}: {self.level}:{col} {self.message}"


class DataError(Exception):
    """Input that the kit refuses; carries every problem found, one line each."""

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, (Problem, str)):
            problems = [problems]
        self.problems = [p if isinstance(p, Problem) else Problem("input", p) for p in problems]
        errors = sum(p.level == "error" for p in self.problems)
        lines = [str(p) for p in self.problems[:MAX_SHOWN]]
        if len(self.problems) > MAX_SHOWN:
            lines.append(f"... {len(self.problems) - MAX_SHOWN} more problem(s) not shown")
        lines.append(f"{errors} error(s), {len(self.problems) - errors} warning(s)")
        super().__init__("\n".join(lines))


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; user errors (DataError, ValueError subclasses marked as such,
    FileNotFoundError) print their message and return 1 instead of a traceback."""
    from cytokit.config import ConfigError

    try:
        return int(main(argv) or 0)
    except (DataError, ConfigError, FileNotFoundError, FileExistsError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def format_table(scores, float_cols: list[str] | None = None) -> str:
    """A plain-text table of a small DataFrame (floats with 6 decimals)."""
    import pandas as pd

    float_cols = float_cols or [c for c in scores.columns if pd.api.types.is_float_dtype(scores[c])]
    shown = scores.copy()
    for col in float_cols:
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.6f}")
    return shown.to_string(index=False)
