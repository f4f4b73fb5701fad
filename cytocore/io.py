"""Safe file output and user-facing errors.

- ``atomic_write`` / ``atomic_write_text`` / ``atomic_write_df``: write to a
  temporary file in the target folder, then rename, so a crash never leaves a
  half-written output.
- ``Problem`` / ``DataError``: every problem found in an input file, with file,
  line and column, reported at once.
- ``cli``: runs a ``main()`` so that user errors print one line each and exit
  non-zero, without a traceback; so do the OS errors of reading and writing
  files (read-only folder, disk full, permission denied), naming the path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
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

    On an exception the temporary file is removed and ``path`` is untouched; an
    ``OSError`` of the temporary file (disk full, read-only folder) names ``path``.
    The file gets the permissions a plain ``open`` would give it (0666 less the
    umask), not mkstemp's private 0600: teammates on a cluster read submissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix + ".tmp",
            dir=path.parent,
        )
    except OSError as exc:
        raise _naming(exc, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # a writer may have replaced the file: set the mode on what is there
            tmp_path.chmod(0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno and exc.filename in (None, str(tmp_path)):
            raise _naming(exc, path) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _read_umask() -> int:
    """The process umask, read once at import (reading it means setting it: not thread-safe later)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _naming(exc: OSError, path: Path) -> OSError:
    """The same OS error, about ``path`` (not the temporary file beside it)."""
    return type(exc)(exc.errno, exc.strerror, str(path))


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


class ConfigError(ValueError):
    """A config file or override the kit cannot use; the message says which key and why
    (``cytocore.config`` re-exports it: the error types live here so that ``cli`` needs no config)."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def os_error_line(exc: OSError) -> str | None:
    """One line for an OS error of a file (read-only, disk full, permission denied, ...) naming its
    path; None for an OS error that names no file and is not about space (a bug, not the user's)."""
    where = exc.filename
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{where or _work()}: no space left on the device (nothing half-written is kept); "
                "free some space and run again")
    if where is None or not exc.errno:
        return None
    if exc.errno == errno.EROFS:
        return f"{where}: read-only file system{_hint(where)}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{where}: permission denied{_hint(where)}"
    return f"{where}: {exc.strerror or exc}"


def _work() -> Path:
    from cytocore import paths

    return paths.work_dir()


def _hint(where: str | bytes) -> str:
    """How to move the outputs, when ``where`` is one of them."""
    try:
        Path(os.fsdecode(where)).resolve().relative_to(_work())
    except ValueError:
        return ""
    return f" (outputs go under {_work()}; set CYTOKIT_WORK to a writable folder)"


def cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; user errors (DataError, ConfigError, FileNotFoundError, FileExistsError)
    and the OS errors of files (``os_error_line``) print one line and return 1 instead of a traceback.
    Standard output is line-buffered first: redirected to a file (``nohup``, a SLURM job's output, ``| tee``)
    each line is there when printed, not kilobytes later."""
    line_buffered()
    try:
        return int(main(argv) or 0)
    except (DataError, ConfigError, FileExistsError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"{exc.filename}: file not found" if exc.errno and exc.filename else str(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        line = os_error_line(exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def line_buffered() -> None:
    """Flush standard output at each newline even when it is not a terminal (Python buffers it in blocks
    then); a stream that cannot be reconfigured is left alone."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(line_buffering=True)
        except (ValueError, OSError):  # a closed or detached stream
            pass


WIDTH = 120  # the widest line the kit prints in a terminal table


def format_table(scores, float_cols: list[str] | None = None, decimals: int = 4, width: int = WIDTH) -> str:
    """A plain-text table of a small DataFrame: floats with ``decimals`` decimals (4: the precision a
    score is quoted at everywhere in the kit), wrapped into blocks of columns at most ``width`` wide."""
    import pandas as pd

    float_cols = float_cols or [c for c in scores.columns if pd.api.types.is_float_dtype(scores[c])]
    shown = scores.copy()
    for col in float_cols:
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.{decimals}f}")
    return shown.to_string(index=False, line_width=width)
