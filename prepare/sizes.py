"""The image files of a data folder: presence, sizes from headers, truncation, repair.

``inspect_images(data, boxes, repair=...)`` checks every image named in the train
table and returns ``NAME,width,height,path,mtime_ns,bytes,truncated,repaired``
(``path`` is the file to use: the raw image, or its repaired copy). Sizes come
from the image headers (no decoding) and are cached per data folder in
``work/cache/<name>-<digest>/images.csv``, keyed by each file's mtime and size,
so a changed file is read again. Every problem is reported at once with the
train.csv line that names the image: missing files, unreadable headers, and
truncated JPEGs -- the last are an error unless ``repair`` is set, in which case
a re-encoded copy is written to ``work/cache/<key>/repaired/`` (the raw file is
never written) and used instead. Grayscale and RGBA images are accepted.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from cytokit import images, paths
from cytokit.io import DataError, Problem, atomic_write, atomic_write_df

log = logging.getLogger(__name__)

STAT_COLUMNS = ("NAME", "mtime_ns", "bytes")


def cache_root(data: Path) -> Path:
    """The cache folder of one data folder (its name plus a digest of its absolute path)."""
    data = Path(data).resolve()
    digest = hashlib.sha1(str(data).encode()).hexdigest()[:10]
    return paths.cache_dir() / f"{data.name}-{digest}"


def n_workers(workers: int) -> int:
    """Threads for image reading: ``workers`` when positive, else the CPU count (at most 8)."""
    return workers if workers > 0 else min(8, os.cpu_count() or 1)


def file_stats(images_dir: Path, names: list[str]) -> pd.DataFrame:
    """``NAME,path,exists,mtime_ns,bytes`` of each named file under ``images_dir``."""
    rows = []
    for name in names:
        path = Path(images_dir) / name
        try:
            st = path.stat()
            ok = path.is_file()
        except OSError:
            st, ok = None, False
        rows.append((name, path, ok, st.st_mtime_ns if ok else -1, st.st_size if ok else -1))
    return pd.DataFrame(rows, columns=["NAME", "path", "exists", "mtime_ns", "bytes"])


def cached(cache_file: Path, files: pd.DataFrame, compute: Callable[[list[Path]], pd.DataFrame],
           what: str = "values") -> pd.DataFrame:
    """Per-file values, computed only for files not in ``cache_file`` with the same mtime and size.

    ``files``: ``NAME,path,mtime_ns,bytes``; ``compute(paths)`` returns one row per path.
    Returns ``NAME`` plus the computed columns, in the order of ``files``.
    """
    cache_file = Path(cache_file)
    keys = files[list(STAT_COLUMNS)].reset_index(drop=True)
    old = None
    if cache_file.exists():
        try:
            old = pd.read_csv(cache_file, dtype={"NAME": str}, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            log.warning("%s: unreadable cache, rebuilding it", cache_file)
    if old is not None and set(STAT_COLUMNS) <= set(old.columns):
        merged = keys.merge(old.drop_duplicates("NAME"), on=list(STAT_COLUMNS), how="left", indicator=True)
        fresh = (merged.pop("_merge") == "both").to_numpy()
    else:
        merged, fresh = keys.copy(), pd.Series(False, index=keys.index).to_numpy()
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
        atomic_write_df(merged, cache_file)
    return merged.drop(columns=["mtime_ns", "bytes"])


def _header(path: Path) -> tuple[int, int, bool, str]:
    try:
        width, height = images.read_size(path)
        return width, height, images.is_truncated(path), ""
    except (ValueError, OSError) as exc:
        return -1, -1, False, str(exc).replace(f"{path}: ", "")


def _headers(workers: int) -> Callable[[list[Path]], pd.DataFrame]:
    def compute(paths_: list[Path]) -> pd.DataFrame:
        with ThreadPoolExecutor(max_workers=n_workers(workers)) as pool:
            rows = list(pool.map(_header, paths_))
        return pd.DataFrame(rows, columns=["width", "height", "truncated", "error"])

    return compute


def repair_image(src: Path, dst: Path) -> Path:
    """Re-encode a truncated image as a complete RGB JPEG at ``dst`` (``src`` is only read)."""
    from PIL import Image, ImageFile

    if dst.exists() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
        return dst
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with Image.open(src) as im:
            rgb = im.convert("RGB")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    with atomic_write(dst, suffix=".tmp.jpg") as tmp:
        rgb.save(tmp, format="JPEG", quality=95)
    return dst


def inspect_images(data: Path, boxes: pd.DataFrame, *, repair: bool = False, workers: int = 0,
                   csv_path: Path | None = None) -> pd.DataFrame:
    """Check and size every image named in ``boxes``; raise ``DataError`` listing every problem.

    Problems name ``csv_path`` (default ``<data>/train.csv``) and the first line that
    names the image. Returns one row per image, sorted by NAME.
    """
    files = paths.data_files(Path(data))
    csv_file = str(csv_path or files["train"])
    first_line = (boxes.reset_index(drop=True).reset_index().groupby("NAME", sort=True)["index"].min() + 2)
    stats = file_stats(files["images"], list(first_line.index))
    missing = stats.loc[~stats["exists"], ["NAME", "path"]]
    problems = sorted(
        (Problem(csv_file, f"image not found: {p}", line=int(first_line[n]), column="NAME")
         for n, p in missing.itertuples(index=False)), key=lambda p: p.line)
    if len(problems) > 1:
        held = sum(1 for _ in files["images"].iterdir()) if files["images"].is_dir() else 0
        problems.insert(0, Problem(str(files["images"]), f"{len(problems)} of {len(stats)} images named in "
                                   f"{csv_file} are missing; this folder holds {held} file(s)"))
    if problems:
        raise DataError(problems)
    root = cache_root(data)
    info = cached(root / "images.csv", stats, _headers(workers), what="image headers")
    table = stats.merge(info, on="NAME")
    unreadable = table.loc[table["error"].astype(str) != "", ["NAME", "path", "error"]]
    for name, path, error in unreadable.itertuples(index=False):
        problems.append(Problem(csv_file, f"image {path}: {error}", line=int(first_line[name]),
                                column="NAME"))
    table["truncated"] = table["truncated"].astype(str).str.lower() == "true"
    table["repaired"] = False
    for i in table.index[table["truncated"] & (table["error"].astype(str) == "")]:
        name, path = table.at[i, "NAME"], table.at[i, "path"]
        if not repair:
            problems.append(Problem(csv_file, f"image {path} is truncated (no JPEG end marker); "
                                    "rerun with --repair to use a re-encoded copy",
                                    line=int(first_line[name]), column="NAME"))
            continue
        try:
            table.at[i, "path"] = repair_image(Path(path), root / "repaired" / name)
            table.at[i, "repaired"] = True
            log.warning("%s is truncated; using the re-encoded copy %s", path, table.at[i, "path"])
        except OSError as exc:
            problems.append(Problem(csv_file, f"image {path} is truncated and cannot be repaired ({exc})",
                                    line=int(first_line[name]), column="NAME"))
    if problems:
        raise DataError(problems)
    table["width"] = table["width"].astype(int)
    table["height"] = table["height"].astype(int)
    cols = ["NAME", "width", "height", "path", "mtime_ns", "bytes", "truncated", "repaired"]
    return table[cols].sort_values("NAME").reset_index(drop=True)
