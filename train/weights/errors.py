"""The one error of a weights file the kit cannot use (missing, empty, corrupt, of another model).

A ``ConfigError`` (a ``ValueError``), so ``cytocore.io.cli`` prints it as one line and exits 1.
"""
from __future__ import annotations

from pathlib import Path

from cytocore.config import ConfigError


class WeightsError(ConfigError):
    """``<file>: <what is wrong>`` on one line."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{path}: {self.problem}")


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an exception's message, else its type name (never raises)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text[:limit] + ("..." if len(text) > limit else "")
