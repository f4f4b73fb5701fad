"""One ``make all`` at a time per work folder and data folder.

``held(data)`` takes an exclusive ``fcntl.flock`` on ``cytocore.paths.lock_file(data)`` (under
``work/locks/``) for the whole run and writes the holder into it (PID, command, start time, host). A
second run on the same data and work folder stops at once with one line naming that holder
(``LockHeld``, a ``ConfigError``: exit status 1, no traceback). The kernel releases the lock when the
holding process ends, whether it finished, failed or was killed, so a stale file never blocks a run.
The lock belongs to an open file description: the training jobs started meanwhile do not inherit it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from cytocore import paths
from cytocore.config import ConfigError


class LockHeld(ConfigError):
    """Another process runs on this data and work folder; the message names it."""


def holder_line() -> str:
    """What this process writes into the lock: PID, command line, start time and host."""
    command = " ".join(shlex.join(getattr(sys, "orig_argv", None) or sys.argv).split())
    return (f"PID {os.getpid()} ({command}) since {time.strftime('%Y-%m-%d %H:%M:%S')} "
            f"on {os.uname().nodename}")


def _holder(fd: int) -> str:
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else "a process that has not written its name yet"


@contextlib.contextmanager
def held(data: Path) -> Iterator[Path]:
    """Hold the lock of ``data`` in this work folder for the ``with`` block; ``LockHeld`` at once when
    another process holds it."""
    path = paths.lock_file(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"{Path(data).resolve()}: another run is working on this data folder in "
                           f"{paths.work_dir()}: {_holder(fd)}; wait for it to end or stop it (lock: "
                           f"{path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (holder_line() + "\n").encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock (a crash or a kill releases it too)
