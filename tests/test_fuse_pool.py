"""The submission's fusion in a process pool (``infer.ensemble.fuse_files`` with ``workers``): the same
table as in one process, bit for bit; a chunk's error comes back as itself; at most ``workers`` chunks
in flight, results in chunk order; ``fuse_workers`` of the ensemble config."""
from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytocore import classes, predictions
from cytocore.config import ConfigError
from infer import ensemble, fuse
from infer.config import EnsembleConfig
from infer.fuse import FuseParams

VIEWS = ("identity", "hflip", "vflip")


def write_members(folder: Path, images: int = 23, members: int = 2, folds: int = 2, seed: int = 5,
                  bad_image: int | None = None) -> list[Path]:
    """One test table per member-fold: ``members`` models x ``folds`` folds, three views, 0-6 boxes per
    image (some member-folds find nothing on some images), the 23 probabilities on model m0's rows.
    ``bad_image``: that image's first box of the first table is inverted (x2 < x1)."""
    rng = np.random.default_rng(seed)
    files = []
    for m in range(members):
        for fold in range(folds):
            rows = []
            for i in range(images):
                for view in VIEWS:
                    n = int(rng.integers(0, 7))
                    xy = rng.uniform(0, 150, (n, 2))
                    wh = rng.uniform(10, 40, (n, 2))
                    probs = rng.dirichlet(np.ones(classes.NUM_CLASSES), n) if m == 0 else None
                    labels = probs.argmax(1) if probs is not None else rng.integers(0, 4, n)
                    scores = rng.uniform(0.01, 1, n)
                    rows.append(predictions.make(f"img{i:03d}.png", np.c_[xy, xy + wh], scores, labels, 200,
                                                 180, f"m{m}", fold, view, probs=probs))
            table = pd.concat(rows, ignore_index=True)
            if bad_image is not None and not files:
                at = table.index[table["NAME"] == f"img{bad_image:03d}.png"][0]
                table.loc[at, "x2"] = table.loc[at, "x1"] - 5.0
            path = folder / f"m{m}" / f"fold{fold}" / predictions.TEST_FILE
            path.parent.mkdir(parents=True)
            table.to_parquet(path, index=False)  # unvalidated: the bad box must reach the fusion
            files.append(path)
    return files


def params(mode: str = "wbf") -> FuseParams:
    return FuseParams(mode=mode, iou_thr=0.55, skip_box_thr=0.001, conf_type="avg", max_det=5,
                      weights={"m0": 2.0, "m1": 1.0}, views=VIEWS)


@pytest.mark.smoke
@pytest.mark.parametrize("mode", ["wbf", "agnostic"])
def test_the_pool_fuses_the_same_table_as_one_process_bit_for_bit(tmp_path, mode):
    files = write_members(tmp_path)
    one = ensemble.fuse_files(files, list(VIEWS), params(mode), chunk=4, progress=False, batch_rows=50,
                              workers=1)
    pool = ensemble.fuse_files(files, list(VIEWS), params(mode), chunk=4, progress=False, batch_rows=50,
                               workers=2)
    assert one["NAME"].nunique() == 23 and len(one) > 100  # 6 chunks of 4 images, every image kept
    pd.testing.assert_frame_equal(pool, one, check_exact=True)


@pytest.mark.smoke
def test_a_chunks_error_in_a_worker_is_raised_as_itself(tmp_path):
    files = write_members(tmp_path, bad_image=13)  # in the fourth of six chunks
    with pytest.raises(ValueError) as here:
        ensemble.fuse_files(files, list(VIEWS), params(), chunk=4, progress=False, workers=1)
    with pytest.raises(ValueError) as there:
        ensemble.fuse_files(files, list(VIEWS), params(), chunk=4, progress=False, workers=2)
    assert str(there.value) == str(here.value) and "x2 < x1" in str(there.value)


@pytest.mark.smoke
def test_a_fusion_worker_imports_no_torch():
    """A worker unpickles ``fuse.fuse_parts`` and ``fuse.worker_init``: it imports their module only."""
    code = "import sys, infer.fuse; sys.exit('torch' in sys.modules or 'cv2' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


class _ThreadPool(cf.ThreadPoolExecutor):
    """``ProcessPoolExecutor``'s stand-in in this process: it records the chunks in flight at each
    submission (submitted, result not yet taken)."""

    submitted: list[int] = []
    most: list[int] = []

    def __init__(self, workers, mp_context=None, initializer=None):
        assert mp_context.get_start_method() == "spawn" and initializer is fuse.worker_init
        super().__init__(workers)
        self.futures = []

    def submit(self, fn, *args):
        self.most.append(sum(not f.done() for f in self.futures) + 1)
        future = super().submit(fn, *args)
        self.futures.append(future)
        self.submitted.append(args[0][0])
        return future


@pytest.mark.unit
def test_at_most_workers_chunks_in_flight_and_results_in_chunk_order(monkeypatch):
    chunks = [[f"chunk{i}"] for i in range(7)]
    lock, finished = threading.Lock(), []

    def slow_first(parts, p, slots):
        time.sleep(0.3 if parts[0] == "chunk0" else 0.02)  # chunk 0 ends after the others
        with lock:
            finished.append(parts[0])
        return pd.DataFrame({"chunk": [parts[0]]})

    monkeypatch.setattr(fuse, "fuse_parts", slow_first)
    monkeypatch.setattr(cf, "ProcessPoolExecutor", _ThreadPool)
    _ThreadPool.submitted, _ThreadPool.most = [], []
    ticks = []
    out = ensemble.fuse_chunks(chunks, params(), ["m0|0|identity"], workers=3, done=lambda: ticks.append(1))
    assert [t["chunk"][0] for t in out] == [c[0] for c in chunks]
    assert finished[-1] == "chunk0" and len(ticks) == 7
    assert max(_ThreadPool.most) <= 3 and len(_ThreadPool.submitted) == 7


@pytest.mark.unit
@pytest.mark.parametrize("workers, cores, used", [(0, 8, 6), (0, 2, 2), (1, 8, 1), (4, 1, 4), (9, 1, 6)])
def test_workers_0_is_one_per_core_and_never_more_than_the_chunks(tmp_path, monkeypatch, workers, cores,
                                                                  used):
    files = write_members(tmp_path, members=1, folds=1)
    seen = []
    monkeypatch.setattr(ensemble.resources, "cpu_cores", lambda: cores)
    monkeypatch.setattr(ensemble, "fuse_chunks", lambda chunks, p, slots, n, done: seen.append(n) or [])
    ensemble.fuse_files(files, list(VIEWS), params(), chunk=4, progress=False, workers=workers)
    assert seen == [used]


@pytest.mark.unit
def test_fuse_workers_is_a_config_key_and_negative_is_refused():
    assert EnsembleConfig(iou_thr=0.55).fuse_workers == 0
    assert EnsembleConfig(iou_thr=0.55, fuse_workers=3).fuse_workers == 3
    with pytest.raises(ConfigError, match="fuse_workers must be >= 0"):
        EnsembleConfig(iou_thr=0.55, fuse_workers=-1)
