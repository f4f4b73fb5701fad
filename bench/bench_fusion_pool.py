"""The submission's fusion in one process vs a process pool (``infer.ensemble.fuse_files`` with
``workers`` 1 and ``fuse_workers: 0``, one per CPU core), side by side on the same tables.

The tables are ``bench_memory``'s dense synthetic ones (``IMAGES`` test images x 20 boxes x 3 TTA views x
``MEMBERS`` member-folds, the 23 p_ columns), fused by chunks of ``CHUNK`` images; the two fused tables
must be equal. ``BENCH_FUSION_POOL_IMAGES`` / ``_MEMBERS`` / ``_CHUNK`` set the size (default
1600 x 4 by 200: about 20 s in one process on 2 cores; the real case is 20,751 x 15 by 500, 7.5 min).
The pool's time includes starting its processes ("spawn": each imports pandas and ``infer.fuse``).
"""
from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

IMAGES = int(os.environ.get("BENCH_FUSION_POOL_IMAGES", 1600))
MEMBERS = int(os.environ.get("BENCH_FUSION_POOL_MEMBERS", 4))
CHUNK = int(os.environ.get("BENCH_FUSION_POOL_CHUNK", 200))


def run(shared: Path | None) -> list[str]:
    from bench.bench_memory import BOXES, VIEWS, _params, write_tables
    from cytocore import resources
    from infer.ensemble import fuse_files

    cores = resources.cpu_cores()
    chunks = -(-IMAGES // CHUNK)
    workers = min(cores, chunks)
    with tempfile.TemporaryDirectory(prefix="bench-fusion-pool-") as tmp:
        files = write_tables(Path(tmp), IMAGES, MEMBERS)
        rows = IMAGES * BOXES * len(VIEWS) * MEMBERS
        times, cpu, tables = [], [], []
        for n in (1, 0):
            start, cpu0 = time.perf_counter(), _cpu()
            tables.append(fuse_files(files, list(VIEWS), _params(), chunk=CHUNK, progress=False, workers=n))
            times.append(time.perf_counter() - start)
            cpu.append(_cpu() - cpu0)
    try:
        pd.testing.assert_frame_equal(tables[1], tables[0], check_exact=True)
        same = True
    except AssertionError:
        same = False
    return [
        f"{IMAGES} images x {BOXES} boxes x {len(VIEWS)} views x {MEMBERS} member-folds = {rows} rows, "
        f"{chunks} chunks of {CHUNK} images; {cores} CPU core(s) (cytocore.resources.cpu_cores)",
        f"one process: {times[0]:.1f} s wall ({cpu[0]:.1f} s CPU); pool of {workers} (fuse_workers: 0): "
        f"{times[1]:.1f} s wall ({cpu[1]:.1f} s CPU, its processes' too)",
        f"wall ratio one process / pool: {times[0] / times[1]:.2f}x; fused tables identical: {same}; "
        f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} core(s)",
    ]


def _cpu() -> float:
    """CPU seconds of this process and its ended children (the pool's workers, once it shut down)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
