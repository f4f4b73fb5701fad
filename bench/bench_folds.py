"""Speed of the folds core on the real train.csv (52,748 boxes), and its cleaning report.

Image sizes are supplied (the images are not in ../shared): 363 x 363 for every
image, the size of most real images, which also exercises the clipping. Duplicate
hashes are synthetic (random 64-bit, 150 planted near copies). Exports go to a
temporary folder; linking the images is timed apart from the label export.

    python -m bench folds
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

TARGET_S = 10.0


def _report_lines(title: str, report) -> list[str]:
    return [title, *("  " + line for line in report.table().splitlines())]


def run(shared: Path | None) -> list[str]:
    from cytocore import dataset, tables
    from prepare import clean, dedup, export, folds

    train = shared / "cytologia" / "train.csv" if shared else None
    if train is None or not train.exists():
        return ["skipped: ../shared/cytologia/train.csv is not available"]
    times: dict[str, tuple[float, float]] = {}

    def timed(name, func, *args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        out = func(*args, **kwargs)
        times[name] = (time.perf_counter() - start, time.process_time() - cpu)
        return out

    boxes = timed("validation (tables.read_train)", tables.read_train, train)
    names = np.array(sorted(boxes["NAME"].unique()))
    sizes = pd.DataFrame({"NAME": names, "width": 363, "height": 363})
    cleaned, report = timed("cleaning", clean.clean, boxes, sizes)

    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**63, len(names), dtype=np.int64).astype(np.uint64)
    pick = rng.choice(len(names), 300, replace=False)
    values[pick[150:]] = values[pick[:150]] ^ np.uint64(1)  # 150 near copies, 1 bit apart
    hashes = pd.Series([f"{int(v):016x}" for v in values], index=names)
    groups = timed("duplicate groups (distance 2)", dedup.group_duplicates, hashes, 2)
    table = timed(f"folds (k={dataset.DEFAULT_K})", folds.make_folds, cleaned, groups, dataset.DEFAULT_K,
                  dataset.DEFAULT_SEED)

    with tempfile.TemporaryDirectory(prefix="bench-folds-") as tmp:
        root = Path(tmp)
        timed("YOLO labels", export.write_labels, root / "yolo" / "labels", cleaned)
        images = sizes.merge(table, on="NAME")
        timed("fold lists + COCO json (5 folds)", export.write_folds, root, root, images,
              images[["NAME", "width", "height"]], cleaned, 5)
        sources = pd.Series([f"/nonexistent/images/{n}" for n in names], index=names)
        link_s = time.perf_counter()
        export.link_images(root / "yolo" / "images", sources)
        link_s = time.perf_counter() - link_s

    total = sum(wall for wall, _ in times.values())
    total_cpu = sum(cpu for _, cpu in times.values())
    lines = [f"{'step':<36}{'wall':>8}{'cpu':>8}  (cpu: CPU time of this process; wall grows when busy)"]
    lines += [f"{name:<36}{wall:7.2f}s{cpu:7.2f}s" for name, (wall, cpu) in times.items()]
    lines.append(f"{'total (target < 10 s)':<36}{total:7.2f}s{total_cpu:7.2f}s  "
                 f"({total / TARGET_S:.0%} of the target)")
    lines.append(f"{'image symlinks (apart)':<36}{link_s:7.2f}s          for {len(names)} images")
    lines += _report_lines("cleaning report, every image 363 x 363:", report)

    extent = boxes.groupby("NAME")[["x2", "y2"]].max()
    fitted = pd.DataFrame({"NAME": extent.index, "width": np.maximum(363, np.ceil(extent["x2"])).astype(int),
                           "height": np.maximum(363, np.ceil(extent["y2"])).astype(int)})
    _, report_fitted = clean.clean(boxes, fitted)
    lines += _report_lines("cleaning report, sizes max(363, box extent) (only negative coordinates clip):",
                           report_fitted)
    return lines
