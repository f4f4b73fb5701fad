"""Downloading catalogue files with the standard library: resume, progress bar, checks, atomic rename.

``fetch(entry)`` brings ``weights/<file>`` into place: a file already there is checked and kept;
otherwise the URL is read into ``weights/.<file>.part`` -- continued with an HTTP ``Range`` request
when a part is left from an interrupted run -- then checked (complete length, the pinned size and
hash where published, a successful load with the entry's loader) and renamed onto ``<file>``. A
copy that fails a check is removed; an interrupted one is kept for the next run. A network that
cannot be reached raises ``Offline``; everything else wrong raises ``WeightsError``.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from train.weights.catalog import Entry
from train.weights.errors import WeightsError, first_line

log = logging.getLogger("train.weights")
CHUNK = 1 << 20  # bytes read per step
USER_AGENT = "cytokit-weights/1 (python urllib)"


class Offline(Exception):
    """The URL's host cannot be reached (no network, DNS failure, refused or timed-out connection)."""


def part_path(path: Path) -> Path:
    """Where an unfinished download of ``path`` is kept: ``.<name>.part`` beside it."""
    return path.with_name(f".{path.name}.part")


def digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file (read in chunks)."""
    h = hashlib.new(algorithm)
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, entry: Entry) -> str:
    """Check ``path`` against the entry's pinned size and hashes, then load it; a description of it."""
    from train.weights.check import check_file

    size = path.stat().st_size
    if entry.size and size != entry.size:
        raise WeightsError(path, f"{size} bytes, expected {entry.size} ({entry.url})")
    for algorithm, pinned in (("sha256", entry.sha256), ("md5", entry.md5)):
        if pinned:
            got = digest(path, algorithm)
            if not got.startswith(pinned.lower()):
                raise WeightsError(path, f"{algorithm} {got[:16]}... does not match the published "
                                         f"{pinned} ({entry.url})")
    return check_file(path, entry.loader, entry.name)


def _open(url: str, offset: int, timeout: float):
    """The HTTP response for ``url`` from byte ``offset`` on (None: the part is already complete)."""
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left past the part's end
            return None
        raise WeightsError(url, f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise Offline(first_line(exc.reason) if isinstance(exc.reason, BaseException) else str(exc.reason)) \
            from None
    except (TimeoutError, ConnectionError) as exc:
        raise Offline(first_line(exc)) from None


def _total(response, offset: int) -> tuple[int, int | None]:
    """(offset the body starts at, full size or None) from the response's status and headers."""
    if response.status == 206:
        found = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if not found or int(found.group(1)) != offset:
            raise WeightsError(response.url, f"bad Content-Range {response.headers.get('Content-Range')!r} "
                                             f"for a resume at byte {offset}")
        return offset, None if found.group(2) == "*" else int(found.group(2))
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def download(url: str, part: Path, timeout: float = 30.0, progress: bool = True) -> int:
    """Read ``url`` into ``part``, continuing an existing part; returns the bytes it now holds.

    A connection lost midway raises ``WeightsError`` and keeps the part for the next call.
    """
    from tqdm import tqdm

    part.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset, timeout)
    if response is None:
        return offset
    with response:
        start, total = _total(response, offset)
        if start == 0 and offset:
            log.info("%s: the server ignored the resume request; starting over", url)
        bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=part.name.removeprefix(".").removesuffix(".part"), disable=None if progress else True,
                   file=sys.stderr, leave=False)
        done = start
        with part.open("r+b" if start else "wb") as f, bar:
            f.seek(start)
            f.truncate()
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    done += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                raise WeightsError(url, f"connection lost after {done} bytes ({first_line(exc)}); run again "
                                        f"to resume from {part}") from None
    if total is not None and done != total:
        raise WeightsError(url, f"incomplete: {done} of {total} bytes; run again to resume from {part}")
    return done


def fetch(entry: Entry, url: str | None = None, timeout: float = 30.0, progress: bool = True) -> str:
    """Bring ``entry``'s file into ``weights/``; a one-line description of what was done."""
    path = entry.path
    if path.exists():
        try:
            return f"{path}: present ({verify(path, entry)})"
        except WeightsError as exc:
            raise WeightsError(path, f"present but refused: {exc.problem}; delete it and run make weights "
                                     "again") from None
    part = part_path(path)
    size = download(url or entry.url, part, timeout, progress)
    try:
        described = verify(part, entry)
    except WeightsError as exc:
        part.unlink(missing_ok=True)
        raise WeightsError(path, f"download refused and removed: {exc.problem}") from None
    os.replace(part, path)
    return f"{path}: downloaded {size / 1e6:.1f} MB ({described})"
