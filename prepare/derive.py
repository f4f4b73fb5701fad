"""A data folder derived from another one: a new train.csv, everything else linked, the source untouched.

``write_folder(src, dst, train, records)`` writes ``dst/train.csv`` (``NAME,x1,y1,x2,y2,class``),
links ``dst/images`` to ``src/images`` (one symlink: no image is copied or modified), links
``test.csv`` and ``test_labels.csv`` where ``src`` has them, and writes each of ``records``
(file name -> DataFrame or dict) beside them: what was changed and why. Every file is written
atomically; ``dst`` may not be ``src`` nor hold a different data folder's links.

The noise injector (``prepare.noise``) and the out-of-fold label cleaning
(``infer.label_audit``) both write their data this way.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cytocore import io, paths
from cytocore.tables import COORDS

TRAIN_COLUMNS = ["NAME", *COORDS, "class"]  # train.csv's header, in order
LINKED = ("images", "test", "test_labels")  # data_files keys linked from the source folder


def write_folder(src: Path, dst: Path, train: pd.DataFrame, records: dict[str, object] | None = None) -> Path:
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
