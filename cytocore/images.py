"""Image access: sizes from headers, truncation checks, decoding to RGB, per-file facts cached.

- ``read_size`` / ``load_rgb``: one image; every failure (missing file, not an
  image, a header claiming more pixels than Pillow accepts) is an ``ImageError``
  whose one-line message names the file. Grayscale and RGBA images become
  3-channel RGB; a truncated JPEG is decoded as far as it goes, with a warning
  (the rest is gray), so one cut-off test image does not stop a submission.
- ``file_facts(images_dir, names)``: size, mtime, ctime, header size,
  truncation and a sha1 of the content of each file, cached per image folder in
  ``paths.image_cache(images_dir)/files.csv`` and recomputed for a file whose
  size, mtime or ctime changed. ``content_digest`` turns them into one key for
  caches that depend on the images themselves (prediction tables, exports).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError

from cytocore import paths
from cytocore.io import DataError, Problem, atomic_write_df

log = logging.getLogger(__name__)
JPEG_EOI = b"\xff\xd9"
STAT_COLUMNS = ("NAME", "bytes", "mtime_ns", "ctime_ns")  # what keys a cached per-file value
FACTS_FILE = "files.csv"
_truncated_lock = threading.Lock()
_warned: set[str] = set()


class ImageError(DataError, ValueError):
    """An image the kit cannot use; the message is one line naming the file."""

    def __init__(self, path: Path | str, message: str):
        self.problems = [Problem(str(path), message)]
        Exception.__init__(self, f"{path}: {message}")


def _bomb(exc: Exception) -> str:
    found = [int(n) for n in re.findall(r"\d+", str(exc))]
    if len(found) >= 2:
        return (f"its header claims {found[0]:,} pixels, more than the {found[1]:,} Pillow accepts "
                "(a corrupt or hostile file)")
    return f"its header claims too many pixels ({exc})"


def read_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header, without decoding the pixels.

    Raises ``ImageError`` (a ``ValueError``) naming the path when the file is missing or not a
    readable image.
    """
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except FileNotFoundError:
        raise ImageError(path, "image not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"not a usable image: {_bomb(exc)}") from None
    except ImportError:
        # once ultralytics is imported, PIL's open tries the (absent) pi-heif plugin on files it
        # cannot identify
        raise ImageError(path, "not a readable image (cannot identify image file)") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(path, f"not a readable image ({exc})") from None


def is_truncated(path: Path) -> bool:
    """True when a JPEG lacks its end-of-image marker (a cut-off download).

    Trailing padding after the marker (some cameras add zeros) is tolerated.
    Non-JPEG files return False.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(2) != b"\xff\xd8":
            return False
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 1024))
        tail = fh.read().rstrip(b"\x00")
    return not tail.endswith(JPEG_EOI)


def _decode(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image as an ``(H, W, 3)`` uint8 RGB array (gray/RGBA converted).

    Raises ``ImageError`` naming the path for a missing file, a file that is not an
    image and a header claiming too many pixels. A truncated image is decoded as far
    as the data goes (the rest gray) with one warning per file.
    """
    try:
        rgb = _decode(path)
    except FileNotFoundError:
        raise ImageError(path, "image not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"cannot decode image: {_bomb(exc)}") from None
    except ImportError:  # see read_size
        raise ImageError(path, "cannot decode image (cannot identify image file)") from None
    except UnidentifiedImageError as exc:
        raise ImageError(path, f"cannot decode image ({exc})") from None
    except OSError as exc:
        if "truncated" not in str(exc):
            raise ImageError(path, f"cannot decode image ({exc})") from None
        with _truncated_lock:
            previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
            try:
                rgb = _decode(path)
            except OSError as again:
                raise ImageError(path, f"cannot decode image ({again})") from None
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
        if str(path) not in _warned:
            _warned.add(str(path))
            log.warning("%s: image file is truncated; decoded as far as it goes (the rest is gray)", path)
    return np.asarray(rgb)


def n_workers(workers: int) -> int:
    """Threads for image reading: ``workers`` when positive, else the CPU count (at most 8)."""
    return workers if workers > 0 else min(8, os.cpu_count() or 1)


def file_stats(images_dir: Path, names: Sequence[str]) -> pd.DataFrame:
    """``NAME,path,exists,bytes,mtime_ns,ctime_ns`` of each named file under ``images_dir`` (one
    ``stat`` call per file; ``path`` as a string)."""
    base = os.fspath(images_dir)
    rows = []
    for name in names:
        path = os.path.join(base, name)
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            rows.append((name, path, True, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        else:
            rows.append((name, path, False, -1, -1, -1))
    return pd.DataFrame(rows, columns=["NAME", "path", "exists", "bytes", "mtime_ns", "ctime_ns"])


def cached(cache_file: Path, files: pd.DataFrame, compute: Callable[[list[Path]], pd.DataFrame],
           what: str = "values") -> pd.DataFrame:
    """Per-file values, computed only for files not in ``cache_file`` with the same size, mtime and ctime.

    ``files``: ``NAME,path,bytes,mtime_ns,ctime_ns``; ``compute(paths)`` returns one row per
    path. Returns ``NAME`` plus the computed columns, in the order of ``files``. Rows of
    other files already in the cache are kept in it.
    """
    cache_file = Path(cache_file)
    keys = files[list(STAT_COLUMNS)].reset_index(drop=True)
    old = None
    if cache_file.exists():
        try:
            old = pd.read_csv(cache_file, dtype={"NAME": str}, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            log.warning("%s: unreadable cache, rebuilding it", cache_file)
    if old is not None and not set(STAT_COLUMNS) <= set(old.columns):
        old = None
    if old is not None:
        merged = keys.merge(old.drop_duplicates("NAME"), on=list(STAT_COLUMNS), how="left", indicator=True)
        fresh = (merged.pop("_merge") == "both").to_numpy()
    else:
        merged, fresh = keys.copy(), np.zeros(len(keys), dtype=bool)
    stale = ~fresh
    if stale.any():
        log.info("reading %s of %d image(s) (%d cached)", what, stale.sum(), fresh.sum())
        new = compute([Path(p) for p in files["path"].to_numpy()[stale]])
        new.index = merged.index[stale]
        for col in new.columns:
            if col not in merged or not fresh.any():
                merged[col] = new[col]
            else:
                merged[col] = merged[col].astype(object)
                merged.loc[stale, col] = new[col]
                merged[col] = merged[col].infer_objects()
        kept = old[~old["NAME"].isin(merged["NAME"])] if old is not None else None
        table = pd.concat([kept, merged], ignore_index=True) if kept is not None and len(kept) else merged
        atomic_write_df(table, cache_file)
    return merged.drop(columns=[c for c in STAT_COLUMNS if c != "NAME"])


def _facts(path: Path) -> tuple[int, int, bool, str, str]:
    """Header size, truncation, error and content sha1 of one file."""
    try:
        digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        return -1, -1, False, f"cannot read the file ({exc.strerror or exc})", ""
    try:
        width, height = read_size(path)
        return width, height, is_truncated(path), "", digest
    except (ValueError, OSError) as exc:
        return -1, -1, False, str(exc).replace(f"{path}: ", ""), digest


def file_facts(images_dir: Path, names: Sequence[str], workers: int = 0,
               stats: pd.DataFrame | None = None) -> pd.DataFrame:
    """``NAME,path,exists,bytes,mtime_ns,width,height,truncated,error,sha1`` of the named files.

    Missing files get ``exists`` False and no facts; ``stats`` (``file_stats`` of the same
    names) saves stating them again. Cached in ``paths.image_cache(images_dir)/files.csv``.
    """
    stats = file_stats(images_dir, names) if stats is None else stats
    present = stats[stats["exists"]]
    columns = ["width", "height", "truncated", "error", "sha1"]

    def compute(paths_: list[Path]) -> pd.DataFrame:
        with ThreadPoolExecutor(max_workers=n_workers(workers)) as pool:
            rows = list(pool.map(_facts, paths_))
        return pd.DataFrame(rows, columns=columns)

    if len(present):
        facts = cached(paths.image_cache(images_dir) / FACTS_FILE, present, compute, what="image facts")
    else:
        facts = pd.DataFrame(columns=["NAME", *columns])
    out = stats.merge(facts, on="NAME", how="left")
    out["truncated"] = out["truncated"].astype(str).str.lower() == "true"
    out["error"] = out["error"].fillna("").astype(str)
    out["sha1"] = out["sha1"].fillna("").astype(str)
    return out


def content_digest(images_dir: Path, names: Sequence[str]) -> str:
    """A sha256 of the named images' contents (names included): the key of anything computed from them.

    Raises ``FileNotFoundError`` (one line, the first few names) when images are missing.
    """
    names = sorted({str(n) for n in names})
    facts = file_facts(images_dir, names)
    missing = facts.loc[~facts["exists"], "NAME"].tolist()
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"{images_dir}: {len(missing)} of {len(names)} image(s) not found: {shown}")
    lines = "".join(f"{n}\t{s}\n" for n, s in zip(facts["NAME"], facts["sha1"]))
    return hashlib.sha256(lines.encode()).hexdigest()
