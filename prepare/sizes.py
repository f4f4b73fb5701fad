"""The image files of a data folder: presence, sizes from headers, truncation, repair.

``inspect_images(data, boxes, repair=...)`` checks every image named in the train
table and returns ``NAME,width,height,path,bytes,mtime_ns,ctime_ns,sha1,truncated,repaired``
(``path`` is the file to use: the raw image, or its repaired copy; ``sha1`` the
raw file's content hash). The facts come from ``cytocore.images.file_facts``:
sizes from the image headers (no decoding) and content hashes, cached per image
folder and recomputed for a file whose size, mtime or ctime changed. Every
problem is reported at once with the train.csv line that names the image:
missing files, unreadable headers, and truncated JPEGs -- the last are an error
unless ``repair`` is set, in which case a re-encoded copy is written to
``<image cache>/repaired/<sha1>/<NAME>`` (keyed by the raw file's content; the
raw file is never written) and used instead. Grayscale and RGBA images are accepted.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cytocore import images, paths
from cytocore.images import file_stats
from cytocore.io import DataError, Problem, atomic_write

log = logging.getLogger(__name__)


def cache_root(data: Path) -> Path:
    """The cache folder of the images of one data folder (``paths.image_cache`` of ``<data>/images``)."""
    return paths.image_cache(paths.data_files(data)["images"])


def repair_image(src: Path, dst: Path) -> Path:
    """Re-encode a truncated image as a complete RGB JPEG at ``dst`` (``src`` is only read)."""
    from PIL import Image

    if dst.exists():
        return dst
    rgb = Image.fromarray(images.load_rgb(src))
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
    table = images.file_facts(files["images"], list(first_line.index), workers, stats=stats)
    unreadable = table.loc[table["error"] != "", ["NAME", "path", "error"]]
    for name, path, error in unreadable.itertuples(index=False):
        problems.append(Problem(csv_file, f"image {path}: {error}", line=int(first_line[name]),
                                column="NAME"))
    table["repaired"] = False
    root = cache_root(data)
    for i in table.index[table["truncated"] & (table["error"] == "")]:
        name, path = table.at[i, "NAME"], table.at[i, "path"]
        if not repair:
            problems.append(Problem(csv_file, f"image {path} is truncated (no JPEG end marker); "
                                    "rerun with --repair to use a re-encoded copy",
                                    line=int(first_line[name]), column="NAME"))
            continue
        try:
            table.at[i, "path"] = str(
                repair_image(Path(path), root / "repaired" / table.at[i, "sha1"] / name)
            )
            table.at[i, "repaired"] = True
            log.warning("%s is truncated; using the re-encoded copy %s", path, table.at[i, "path"])
        except (OSError, ValueError) as exc:
            problems.append(Problem(csv_file, f"image {path} is truncated and cannot be repaired ({exc})",
                                    line=int(first_line[name]), column="NAME"))
    if problems:
        raise DataError(problems)
    table["width"] = table["width"].astype(int)
    table["height"] = table["height"].astype(int)
    cols = [
        "NAME",
        "width",
        "height",
        "path",
        "bytes",
        "mtime_ns",
        "ctime_ns",
        "sha1",
        "truncated",
        "repaired",
    ]
    return table[cols].sort_values("NAME").reset_index(drop=True)
