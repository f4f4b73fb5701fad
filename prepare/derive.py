"""A data folder derived from another one: a new train.csv, everything else linked, the source untouched.

``write_folder(src, dst, train, records)`` writes ``dst/train.csv`` (``NAME,x1,y1,x2,y2,class``),
links ``dst/images`` to ``src/images`` (one symlink: no image is copied or modified), links
``test.csv`` and ``test_labels.csv`` where ``src`` has them, and writes each of ``records``
(file name -> DataFrame or dict) beside them: what was changed and why. Every file is written
atomically; ``dst`` may not be ``src`` nor hold a different data folder's links.

With ``aliases`` (new NAME -> a NAME of ``src/images``), ``dst/images`` is a folder of links instead:
one per file of ``src/images`` and one per alias, so one image can be two training images with
different boxes (the per-fold pseudo labels of ``infer.pseudo``). Still no image is copied.

The noise injector (``prepare.noise``) and the out-of-fold label cleaning
(``infer.label_audit``) both write their data this way.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

from cytocore import io, paths
from cytocore.tables import COORDS

TRAIN_COLUMNS = ["NAME", *COORDS, "class"]  # train.csv's header, in order
LINKED = ("images", "test", "test_labels")  # data_files keys linked from the source folder


def write_folder(src: Path, dst: Path, train: pd.DataFrame, records: dict[str, object] | None = None,
                 aliases: dict[str, str] | None = None) -> Path:
    """Write the derived folder ``dst`` from ``src`` with ``train`` as its train.csv; returns ``dst``."""
    src, dst = Path(src).resolve(), Path(dst).absolute()
    if dst.resolve() == src:
        raise ValueError(f"{dst}: a derived data folder cannot replace its source")
    missing = [c for c in TRAIN_COLUMNS if c not in train.columns]
    if missing:
        raise ValueError(f"derived train table lacks column(s) {', '.join(missing)}")
    have, want = paths.data_files(src), paths.data_files(dst)
    if not have["images"].is_dir():
        raise FileNotFoundError(f"{have['images']}: the source data folder has no images/")
    dst.mkdir(parents=True, exist_ok=True)
    for key in LINKED:
        source, link = have[key].resolve(), want[key]
        if not have[key].exists():
            continue
        if key == "images" and aliases:
            link_images(source, link, aliases)
            continue
        if link.is_symlink() and link.resolve() == source:
            continue
        if link.exists() or link.is_symlink():
            raise FileExistsError(f"{link} exists and is not a link to {source}; choose another folder")
        link.symlink_to(source, target_is_directory=source.is_dir())
    for name, value in (records or {}).items():
        if isinstance(value, pd.DataFrame):
            io.atomic_write_df(value, dst / name)
        else:
            io.atomic_write_text(dst / name, json.dumps(value, indent=1, default=str) + "\n")
    io.atomic_write_df(train[TRAIN_COLUMNS], want["train"])  # last: a folder with train.csv is complete
    return dst


def link_images(source: Path, folder: Path, aliases: dict[str, str]) -> None:
    """``folder`` as a folder of links: one to each file of ``source`` and each alias (new name -> a file
    name of ``source``) to its file. Built beside ``folder`` and renamed into place; a folder made for
    the same aliases is kept, any other thing at ``folder`` is an error."""
    for alias, name in aliases.items():
        if Path(alias).name != alias or Path(name).name != name:
            raise ValueError(f"image alias {alias!r} -> {name!r}: both must be plain file names")
        if not (source / name).is_file():
            raise FileNotFoundError(f"{source / name}: image alias {alias!r} names no image")
    if folder.is_dir() and not folder.is_symlink():
        if all((folder / a).is_symlink() and (folder / a).resolve() == (source / n).resolve()
               for a, n in aliases.items()):
            return
        raise FileExistsError(f"{folder} exists with other images; choose another folder")
    if folder.exists() or folder.is_symlink():
        raise FileExistsError(f"{folder} exists and is not a folder of links to {source}; "
                              "choose another folder")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with os.scandir(source) as entries:
            for entry in entries:
                os.symlink(source / entry.name, tmp / entry.name)
        for alias, name in aliases.items():
            if (tmp / alias).is_symlink():
                raise ValueError(f"image alias {alias!r} is already an image of {source}")
            os.symlink(source / name, tmp / alias)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
