"""The ensemble at inference: every member with TTA, fusion, the classifier.

``run(cfg, data)`` is ``make infer`` (``python -m infer``); ``fuse_test`` fuses its test tables
for the submission, which ``submit.make`` writes (``make submission``). For each member (model x fold of
the config; weights ``work/runs/<dataset id>/<model>/fold<k>/best.pt`` unless set) it writes,
in the prediction contract with every TTA view in the ``view`` column:

- ``work/preds/<model>/fold<k>/test.parquet``    -- the test images of DATA/test.csv
- ``work/preds/<model>/fold<k>/oof_tta.parquet`` -- the fold's validation images (``predict_oof``)

A table is reused while its inputs are unchanged (``infer.cache``). The
member-folds to predict share one pass over the images: each image is decoded
once for all of them, and each one's rows are written to its table as they come
(``predict_shared``). ``fuse_test`` resolves ``fusion: auto`` on
the out-of-fold tables, fuses the test tables over views, folds and models
chunk of images by chunk of images, one member-fold's table read at a time
(``fuse_files``: the main process never holds every table at once; the chunks are fused in
``fuse_workers`` processes, ``fuse_chunks``), blends in
the classifier (every trained fold of its members; one line and the detectors'
classes when none is trained) and writes ``work/preds/ensemble/test.parquet``.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from cytocore import io, paths, predictions, resources, tables
from cytocore.images import load_rgb
from infer import cache, fuse, predict, tta
from infer.config import EnsembleConfig, bind

log = logging.getLogger("infer")
FUSE_CHUNK = 500  # test images fused at a time (every member-fold's rows of them in memory together)


@dataclasses.dataclass
class Result:
    """What one ``python -m infer`` run produced."""

    test_files: list[Path]  # each member-fold's test table (work/preds/<dataset>/<model>/fold<k>/...)
    views: list[str]  # the TTA views the run asked for (a reused table may hold more)
    fusion: str | None = None
    fused: pd.DataFrame | None = None
    detector_class: Any = None  # the fused rows' classes before the classifier's blend (pseudo-labels)
    submission: Path | None = None
    score: object | None = None  # cytocore.metric.ScoreResult when test_labels.csv exists
    seconds_per_image: float = float("nan")  # member prediction time per test image (all members, views)

    @property
    def test_preds(self) -> pd.DataFrame:
        """Every member-fold's test table in one frame (loads them all: the submission streams instead)."""
        frames = [t for t in (predictions.read(f) for f in self.test_files) if len(t)]
        frames = [t[t["view"].isin(self.views)] for t in frames]
        return pd.concat(frames, ignore_index=True) if frames else predictions.empty()


@dataclasses.dataclass
class Job:
    """One member-fold's table to make: where, what it depends on, how to load its predictor."""

    model: str
    fold: int
    path: Path
    meta: dict
    load: Callable[[], Any]
    predictor: Any = None


def predict_shared(jobs: list[Job], names: list[str], images_dir: Path, views: list, cfg: EnsembleConfig,
                   progress: bool = True, what: str = "test") -> None:
    """Predict the images ``names`` with every job's member at once: each image is decoded ONCE for all
    of them (``cfg.batch`` images at a time, each member's views of that chunk in one predictor call), and
    each member's rows go straight to its table file (``infer.cache.StreamedTable``), so no member's
    table is held in memory while the others predict."""
    from tqdm.auto import tqdm

    from cytocore.rows import chunked, predict_table

    if not jobs:
        return
    for job in jobs:
        if job.predictor is None:
            job.predictor = job.load()
    outs = [cache.StreamedTable(job.path, job.meta) for job in jobs]
    bar = tqdm(names, desc=f"{len(jobs)} member-fold(s) {what}", unit="img", disable=not progress,
               mininterval=2)
    try:
        for chunk in chunked(bar, max(1, cfg.batch)):
            decoded = [(n, load_rgb(Path(images_dir) / n)) for n in chunk]
            for job, out in zip(jobs, outs):
                out.add(predict_table(job.predictor, decoded, views, job.model, job.fold, cfg.conf,
                                      cfg.max_det, cfg.batch))
    except BaseException:
        for out in outs:
            out.abort()
        raise
    for out in outs:
        out.close()


def predict_members(cfg: EnsembleConfig, data: Path, force: bool = False, progress: bool = True) -> Result:
    """Predict (or reuse) every member's test and out-of-fold tables (see ``predict_shared``); returns
    where the test tables are (``Result.test_files``), not the tables."""
    cfg, ds = bind(cfg, data)
    files = paths.data_files(data)
    test = tables.read(files["test"], "test")
    names = pd.unique(test["NAME"]).tolist()
    views = tta.get_views(cfg.tta)
    test_jobs, oof_jobs, out_files = [], {}, []
    for m in cfg.member_list():
        for fold in m.folds:
            weights = m.weights_path(ds, fold)
            holder: dict = {}

            def load(model=m, fold=fold, weights=weights, holder=holder):
                if "p" not in holder:  # one predictor for the member-fold's test and out-of-fold images
                    holder["p"] = predict.load_member(model.model, fold, weights, cfg.device, model.overrides,
                                                      cfg.backend, model.name)
                return holder["p"]

            out = ds.preds_dir(m.name, fold)
            backend = predict.member_backend(m.model, weights, cfg.device, m.overrides, cfg.backend) \
                if weights.exists() else None
            meta = cache.member_meta(weights, cfg.tta, cfg.conf, cfg.max_det, names, files["images"], backend)
            out_files.append(out / predictions.TEST_FILE)
            if force or not cache.is_fresh(out / predictions.TEST_FILE, meta):
                test_jobs.append(Job(m.name, fold, out / predictions.TEST_FILE, meta, load))
            else:
                log.info("%s is up to date; reusing it", paths.shown(out / predictions.TEST_FILE))
            if cfg.predict_oof:
                fd = ds.fold(fold)
                val = fd.val_images["NAME"].tolist()
                meta = cache.member_meta(weights, cfg.tta, cfg.conf, cfg.max_det, val, fd.images_dir, backend)
                if force or not cache.is_fresh(out / predictions.OOF_TTA_FILE, meta):
                    oof_jobs.setdefault(fold, (val, fd.images_dir, []))[2].append(
                        Job(m.name, fold, out / predictions.OOF_TTA_FILE, meta, load))
    start = time.perf_counter()
    predict_shared(test_jobs, names, files["images"], views, cfg, progress, "test")
    spent = time.perf_counter() - start if test_jobs else 0.0
    for fold, (val, images_dir, jobs) in oof_jobs.items():
        predict_shared(jobs, val, images_dir, views, cfg, progress, f"fold{fold} oof")
    per_image = spent / len(names) if spent and names else float("nan")
    return Result(test_files=out_files, views=list(cfg.tta), seconds_per_image=per_image)


def fuse_files(files: list[Path], views: list[str], params: fuse.FuseParams, chunk: int = FUSE_CHUNK,
               progress: bool = True, batch_rows: int = 1 << 18, workers: int = 1) -> pd.DataFrame:
    """Fuse member test tables image-chunk by image-chunk, never holding them all: each file is read in
    row batches and split by chunks of ``chunk`` images into a temporary folder (one member-fold at a
    time), then each chunk is fused with every member's rows of its images. Per-image fusion with the
    slot weights of the whole (``fuse.group``'s ``slots``): the same table as ``fuse.fuse`` of them all.

    ``workers`` > 1 fuses the chunks in that many processes (``fuse_chunks``), 0 in one per CPU core
    (``cytocore.resources.cpu_cores``), either capped by the number of chunks; 1 fuses in this process.
    The table is the same, row for row, whatever the number."""
    import tempfile

    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    view_set = set(views)
    index: dict[str, int] = {}
    slots: set[str] = set()
    parts: dict[int, list[Path]] = {}
    paths.cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fuse-", dir=paths.cache_dir()) as tmp:
        for i, f in enumerate(files):
            for k, batch in enumerate(pq.ParquetFile(f).iter_batches(batch_size=batch_rows)):
                df = batch.to_pandas()
                if view_set:
                    df = df[df["view"].isin(view_set)]
                if not len(df):
                    continue
                for n in pd.unique(df["NAME"]):
                    if n not in index:
                        index[n] = len(index)
                slots |= set(df["model"].astype(str) + "|" + df["fold"].astype(str) + "|"
                             + df["view"].astype(str))
                bucket = df["NAME"].map(index).to_numpy() // chunk
                for b, part in df.groupby(bucket, sort=False):
                    path = Path(tmp) / f"b{b:06d}_m{i:04d}_{k:05d}.parquet"
                    part.to_parquet(path, index=False)
                    parts.setdefault(int(b), []).append(path)
                del df
        chunks = [parts[b] for b in sorted(parts)]
        workers = min(workers or resources.cpu_cores(), len(chunks))
        desc = f"fuse ({params.mode}" + (f", {workers} processes)" if workers > 1 else ")")
        with tqdm(total=len(chunks), desc=desc, disable=not progress, mininterval=2) as bar:
            fused = fuse_chunks(chunks, params, sorted(slots), workers, bar.update)
    fused = [t for t in fused if len(t)]
    return pd.concat(fused, ignore_index=True) if fused else predictions.empty(with_probs=True)


def fuse_chunks(chunks: list[list[Path]], params: fuse.FuseParams, slots: list[str], workers: int = 1,
                done: Callable[[], Any] = lambda: None) -> list[pd.DataFrame]:
    """Each chunk's fused table (``fuse.fuse_parts`` of its parquet parts), in chunk order. With
    ``workers`` > 1 in a pool of that many "spawn" processes (as ``prepare.synth`` and the benches: no
    fork of a parent whose torch threads may run), each reading its own chunk's parts; at most
    ``workers`` chunks are in flight, so memory stays about ``workers`` chunks. ``done()`` is called as
    each chunk finishes (the progress bar). A chunk whose fusion raises raises the same exception here,
    once the chunks already running have ended. Spawned workers import the main module again: a script
    run by path that calls this needs the ``if __name__ == "__main__":`` guard (``python -m`` entry
    points of the kit are light to import and run nothing at import)."""
    if workers <= 1:
        out = []
        for parts in chunks:
            out.append(fuse.fuse_parts(parts, params, slots))
            done()
        return out
    import concurrent.futures as cf
    import itertools
    import multiprocessing

    results: dict[int, pd.DataFrame] = {}
    todo = iter(enumerate(chunks))
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=fuse.worker_init) as pool:
        try:
            pending = {pool.submit(fuse.fuse_parts, parts, params, slots): i
                       for i, parts in itertools.islice(todo, workers)}
            while pending:
                finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    results[pending.pop(future)] = future.result()
                    done()
                    for i, parts in itertools.islice(todo, 1):
                        pending[pool.submit(fuse.fuse_parts, parts, params, slots)] = i
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return [results[i] for i in range(len(chunks))]


def resolve_fusion(cfg: EnsembleConfig, data: Path) -> str:
    """``cfg.fusion``, or for ``auto`` the mode with the better out-of-fold score of a submission made
    with the config's settings, classifier included (wbf without OOF tables)."""
    if cfg.fusion != "auto":
        return cfg.fusion
    from infer import oof_eval

    try:
        oof = oof_eval.load_oof(cfg, data, cfg.tune_grid().max_images, cfg.tune_grid().seed)
    except (FileNotFoundError, ValueError) as exc:
        log.warning("fusion auto: no out-of-fold predictions to choose with (%s); using wbf", exc)
        return "wbf"
    bound, ds = bind(cfg, data)
    classifier = oof_eval.classifier_for(bound, ds, quiet=True)
    ev = oof_eval.Evaluator(oof, classifier, cfg.skip_box_thr, cfg.max_det)
    settings = oof_eval.config_settings(bound, sorted(set(oof.preds["view"])), classifier is not None,
                                        oof_eval.crop_members(classifier))
    scores = {s.fuse.mode: ev.result(s).total for s in settings}
    best = max(scores, key=lambda mode: scores[mode])
    print("fusion auto, out-of-fold scores: " + ", ".join(f"{k} {v:.6f}" for k, v in scores.items())
          + f" -> {best}")
    return best


def classify(cfg: EnsembleConfig, fused: pd.DataFrame, images_dir: Path, n_cells: dict, ds) -> pd.DataFrame:
    """The classifier: blend every trained fold of the classifier members into the fused table, the
    crop members mixed by their ``weight`` shares as tuning scored them (``infer.blend.member_mean``).
    With none trained, one line says how to train them (or switch the classifier off) and the
    detectors' classes stay. ``ds``: the prepared dataset (``cytocore.dataset.Dataset``) whose runs
    hold them."""
    section = cfg.classifier_section()
    if section is None:
        return fused
    from infer import blend, oof_eval
    from infer.config import classifier_weights

    found, missing = classifier_weights(section, ds)
    if not found:
        log.warning(oof_eval.missing_message(section, ds, missing))
        return fused
    if missing:
        log.warning("classifier: %d of %d fold(s) not trained (first: %s); using the %d found",
                    len(missing), len(missing) + len(found), missing[0], len(found))
    # a template without {fold} names one file for every fold: classify with it once per member
    pairs = list(dict.fromkeys((name, path) for name, _, path in found))
    return blend.apply_classifier(fused, images_dir, [(w, None) for _, w in pairs], section.weight,
                                  device=cfg.device, tta=section.tta, n_cells=n_cells,
                                  full_weight=section.full_weight, backend=cfg.backend,
                                  names=[name for name, _ in pairs], shares=section.shares())


def fuse_test(cfg: EnsembleConfig, data: Path, result: Result, progress: bool = True) -> Result:
    """Fuse the members' test tables (``fusion: auto`` resolved out-of-fold), blend in the classifier and
    write ``work/preds/ensemble/all/test.parquet``: ``result.fused`` and ``result.fusion`` are set. The
    submission CSV made from it is ``submit.make``'s (``make submission``)."""
    cfg, ds = bind(cfg, data)
    files = paths.data_files(data)
    test = tables.read(files["test"], "test")
    n_cells = test.groupby("NAME").size().to_dict()
    result.fusion = resolve_fusion(cfg, data)
    fused = fuse_files(result.test_files, result.views, cfg.fuse_params(result.fusion), progress=progress,
                       workers=cfg.fuse_workers)
    detector_class = fused["class"].to_numpy(dtype=object)
    fused = classify(cfg, fused, files["images"], n_cells, ds)  # the same rows in the same order
    predictions.write(fused, ds.preds_dir("ensemble", "all") / predictions.TEST_FILE)
    result.fused, result.detector_class = fused, detector_class
    return result


def run(cfg: EnsembleConfig, data: Path, force: bool = False, progress: bool = True) -> Result:
    """Predict every member's test and out-of-fold tables (``make infer``)."""
    if not cfg.members:
        raise io.DataError("the ensemble config lists no members")
    result = predict_members(cfg, data, force, progress)
    if result.seconds_per_image == result.seconds_per_image:
        print(f"member predictions: {1000 * result.seconds_per_image:.0f} ms per test image "
              f"({len(cfg.tta)} view(s), all members)")
    return result
