"""The orchestrator of ``make all`` and ``make demo``: the whole recipe, step by step, timed.

    python -m pipeline --recipe configs/recipe.yaml --data DATA [--jobs N] [key=value ...]

Steps: synthetic data (only with a ``synth`` section and no DATA/train.csv),
folds (``prepare.folds``), training of every member x fold as subprocesses
(``train.parallel``: finished runs skipped, unfinished ones resumed, a failing
one reported with its log and the others going on; a classifier after the
detector it validates on), inference with TTA on the test and out-of-fold
images (``infer.ensemble``), tuning out-of-fold (``infer.tune``), the
submission with the tuned config and its validation, the test-label scores of
each member vs the ensemble when DATA has test_labels.csv, and the report page
(``make report``). Everything it writes besides runs, predictions and the
submission is in ``work/logs/<dataset id>/``: one log per training job, the
resolved recipe, the ensemble and tuned configs, and ``report.json`` (steps,
times, scores, failures). Any failed member makes the exit status 1, but the
submission is still made from the members that trained.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cytocore import config as kit_config
from cytocore import io, members, paths, tables
from pipeline.recipe import RecipeConfig, TrainMember, ensemble_values, val_detector

log = logging.getLogger("pipeline")


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (0 when it ended or cannot be read)."""
    import os

    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (each of its threads' ``children`` list in /proc)."""
    kids = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(k) for k in (task / "children").read_text().split()]
    except (OSError, ValueError):
        pass  # ended meanwhile, or a kernel without CONFIG_PROC_CHILDREN: none seen
    return kids


def tree_rss(pid: int | None = None) -> tuple[int, int, int]:
    """Resident memory (bytes) of process ``pid`` (this one), of its largest descendant and of all its
    descendants together (forked workers share pages: the sum overstates). Linux /proc; 0s without."""
    import os

    pid = pid or os.getpid()
    todo, desc = _children(pid), []
    while todo:
        p = todo.pop()
        desc.append(_rss(p))
        todo.extend(_children(p))
    return _rss(pid), max(desc, default=0), sum(desc)


class RssSampler:
    """Peak resident memory of this process and of its descendants while running: a daemon thread reads
    /proc every ``interval`` s; ``getrusage``'s lifetime peaks count too where they rose meanwhile (a
    spike between two samples, a child that ended). ``stop()`` returns MiB: ``main_mb``, ``child_mb``
    (the largest descendant) and ``tree_mb`` (this process + its descendants at once)."""

    def __init__(self, interval: float = 0.5) -> None:
        import threading

        self.interval, self.peak = interval, [0, 0, 0]
        self._done = threading.Event()
        self._rusage = self._maxrss()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()

    @staticmethod
    def _maxrss() -> tuple[int, int]:
        import resource
        import sys

        unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit,
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit)

    def sample(self) -> None:
        own, child, total = tree_rss()
        self.peak = [max(self.peak[0], own), max(self.peak[1], child), max(self.peak[2], own + total)]

    def _run(self) -> None:
        while True:
            self.sample()
            if self._done.wait(self.interval):
                return

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        self.sample()
        (own0, kids0), (own1, kids1) = self._rusage, self._maxrss()
        main = max(self.peak[0], own1 if own1 > own0 else 0)
        child = max(self.peak[1], kids1 if kids1 > kids0 else 0)
        mib = 1024 * 1024
        return {"main_mb": round(main / mib, 1), "child_mb": round(child / mib, 1),
                "tree_mb": round(max(self.peak[2], main) / mib, 1)}


class Steps:
    """Runs named steps, printing and recording the wall and CPU time of each (a CPU time near
    cores x wall means the step used the machine; far below, it waited for others on a shared one) and
    the peak resident memory of this process and of its largest child process (:class:`RssSampler`)."""

    def __init__(self, echo: Callable[[str], None] = print) -> None:
        self.times: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.rss: dict[str, dict[str, float]] = {}
        self.start = time.perf_counter()
        self.echo = echo

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        self.echo(f"\n== {name} ==")
        start, cpu, sampler = time.perf_counter(), cpu_seconds(), RssSampler()
        try:
            return fn()
        finally:
            self.times[name] = round(time.perf_counter() - start, 2)
            self.cpu[name] = round(cpu_seconds() - cpu, 2)
            self.rss[name] = rss = sampler.stop()
            self.echo(f"== {name}: {self.times[name]:.1f} s (CPU {self.cpu[name]:.1f} s; peak RSS "
                      f"{rss['main_mb'] / 1024:.2f} GiB, largest child {rss['child_mb'] / 1024:.2f} GiB)")

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def finished(ds: Any, name: str, fold: int) -> bool:
    """True when the member ``name`` fold ``fold`` is trained and has its out-of-fold predictions."""
    from cytocore import predictions
    from train import runs

    return runs.is_done(ds.run_dir(name, fold)) and (ds.preds_dir(name, fold)
                                                     / predictions.OOF_FILE).exists()


def job_name(m: TrainMember, fold: int) -> str:
    """The training job of a member's fold: ``<name> fold <k>`` (its logs, the cluster's job name)."""
    return f"{m.name} fold {fold}"


def changed_settings(ds: Any, m: TrainMember, fold: int) -> list[str]:
    """``key old -> new`` for each setting of a run (finished or not) that differs from what the recipe
    asks now (defaults of configs/<family>.yaml <- the member's overrides), runtime keys
    (``train.runs.RUNTIME_KEYS``) aside; [] when they agree or the run has no config.yaml."""
    from train import registry, runs

    run_dir = ds.run_dir(m.name, fold)
    if not (run_dir / runs.CONFIG).is_file():
        return []
    try:
        wanted = registry.load_config(m.model, m.overrides)
    except kit_config.ConfigError:  # a bad override is the job's to report, with its log (pre-flight off)
        return []
    return runs.recorded_differences(wanted, run_dir)


def _epochs(m: TrainMember) -> int:
    """The epochs a member trains (0 when its overrides do not load: its job reports why)."""
    from train import registry

    try:
        return int(getattr(registry.load_config(m.model, m.overrides), "epochs", 0) or 0)
    except kit_config.ConfigError:
        return 0


def plan(recipe: RecipeConfig, ds: Any, echo: Callable[[str], None] = print) -> tuple[list, list[str]]:
    """The training jobs still to run (``train.parallel.Job``) and the names of the finished ones. A
    run whose settings differ from the recipe's, finished or interrupted (resuming would go on with the
    old settings: ultralytics reads them from last.pt), or a finished run trained on other folds than the
    dataset's (``make folds FORCE=1`` made new ones: its out-of-fold score would leak), is trained again;
    one line says why."""
    from train import parallel

    jobs, skipped = [], []

    def add(m: TrainMember, fold: int, after: tuple[str, ...] = ()) -> None:
        name = job_name(m, fold)
        from train import runs

        done, changed = finished(ds, m.name, fold), changed_settings(ds, m, fold)
        stale = runs.other_folds(ds.run_dir(m.name, fold), ds.root) if done else None
        if done and not changed and not stale:
            skipped.append(name)
            return
        force = bool(changed or stale)
        if stale:
            echo(f"  retrain {name}: {stale}")
        elif changed:
            echo(f"  retrain {name}: its settings differ from the recipe's ({'; '.join(changed)})"
                 + ("" if done else "; it was interrupted, and resuming would keep its old settings"))
        run_dir = ds.run_dir(m.name, fold)  # an unfinished run continues; a new one starts without a warning
        resume = not force and run_dir.exists() and any(run_dir.iterdir())
        argv = parallel.train_argv(m.model, fold, ds.data, ds.k, ds.seed, m.overrides, resume=resume,
                                   force=force, name=m.name)
        jobs.append(parallel.Job(name, argv, parallel.log_path(ds, m.name, fold), after, run_dir,
                                 _epochs(m)))

    for m in recipe.detector_list():
        for f in m.folds:
            add(m, f)
    for c in recipe.classifier_list():
        det = val_detector(c)  # a detector member of the recipe (pipeline.recipe refuses another), or none
        if not det and c.model != "cls_full":  # a full-image classifier validates on whole images
            log.warning("%s validates on no detector (val_detector empty): ground-truth crops", c.name)
        for f in c.folds:  # validation crops come from the detector's OOF boxes of the same fold
            add(c, f, tuple(j.name for j in jobs if j.name == f"{det} fold {f}"))
    return jobs, skipped


def train_step(recipe: RecipeConfig, ds: Any, echo: Callable[[str], None] = print) -> list[dict]:
    """Run the training jobs; one record per member x fold: name, model, fold, status, times, log. They
    run here (``train.parallel``) or, with ``LAUNCHER=slurm``, through submitit (``pipeline.cluster``)."""
    from pipeline import cluster
    from train import parallel

    where = cluster.launcher(recipe)
    jobs, skipped = plan(recipe, ds, echo)
    every = {job_name(m, f): (m, f) for m in [*recipe.detector_list(), *recipe.classifier_list()]
             for f in m.folds}
    for name in skipped:
        m, fold = every[name]
        echo(f"  skip {name}: finished (done.json); `make train {members.train_vars(m.name, m.model)} "
             f"FOLD={fold} FORCE=1` redoes it")
    outcomes = {}
    if jobs:
        ran = parallel.run_jobs(jobs, recipe.jobs, recipe.threads, echo=echo) if where.launcher == "local" \
            else cluster.run_jobs(jobs, where, cluster.folder_of(ds), echo)
        outcomes = {o.name: o for o in ran}
    records = []
    for m in recipe.detector_list() + recipe.classifier_list():
        for f in m.folds:
            name = job_name(m, f)
            o = outcomes.get(name)
            rec = {"name": name, "member": m.name, "model": m.model, "fold": f,
                   "status": o.status if o else "skipped",
                   "log": str(o.log if o else parallel.log_path(ds, m.name, f))}
            if o:
                rec.update(returncode=o.returncode, seconds=round(o.seconds, 1),
                           cpu_seconds=round(o.cpu_seconds, 1), last_line=o.last_line)
            if rec["status"] == "ok" and not finished(ds, m.name, f):
                rec.update(status="failed", last_line="the job ended without done.json and its OOF table")
            records.append(rec)
    return records


def trained_folds(members: list[TrainMember], records: list[dict]) -> dict[str, list[int]]:
    """Each member's folds that are trained (skipped as finished, or trained now), by member name."""
    good = {(r["member"], r["fold"]) for r in records if r["status"] in ("ok", "skipped")}
    return {m.name: [f for f in m.folds if (m.name, f) in good] for m in members}


def report_page(ds: Any, config: Path, submission: Path) -> str:
    """The report page of ``make report`` for this run: its tuned ensemble, its submission."""
    from pipeline import report

    return str(report.build_report(ds.data, ds.k, ds.seed, config=config, submission=submission))


def run(recipe: RecipeConfig, data: Path, out_dir: Path | None = None,
        echo: Callable[[str], None] = print, recipe_path: Path | None = None) -> dict:
    """The whole recipe on ``data``; returns the report (also written to work/logs/<id>/report.json).
    First the lock of ``data`` in this work folder (``pipeline.lock``) and the pre-flight
    (``pipeline.preflight``): a problem stops the run before any fold or run folder."""
    from pipeline import lock, preflight

    data = Path(data).resolve()
    with lock.held(data), preflight.checked(recipe, data, recipe_path, echo):
        return _run(recipe, data, out_dir, echo)


def _run(recipe: RecipeConfig, data: Path, out_dir: Path | None, echo: Callable[[str], None]) -> dict:
    from cytocore import dataset

    _use_tracker(recipe)
    steps = Steps(echo)
    report: dict[str, Any] = {"data": str(data), "status": "running", "steps": steps.times,
                              "steps_cpu": steps.cpu, "steps_rss": steps.rss, "failures": []}
    report_path = None
    try:
        if recipe.synth_settings() and not (data / "train.csv").exists():
            steps("synthetic data", lambda: make_synthetic(recipe, data))
        steps("folds", lambda: _folds(recipe, data))
        ds = dataset.resolve(data, recipe.k, recipe.seed)
        logs = paths.logs_dir(ds.id)
        report_path = paths.run_report(ds.id)
        report.update(dataset=ds.id, recipe=str(kit_config.save(recipe, logs / "recipe.yaml")))
        records = steps("train", lambda: train_step(recipe, ds, echo))
        report["train"] = records
        report["failures"] = [r for r in records if r["status"] == "failed"]
        _after_training(recipe, data, ds, records, steps, report, out_dir, echo)
        if recipe.round_two() and (report.get("clean") or report.get("pseudo")):
            steps("round two (" + ", ".join(_round_two_parts(recipe)) + ")",
                  lambda: _round_two(recipe, ds, report, out_dir, echo))
        report["status"] = "failed" if report["failures"] else "ok"
    except BaseException as exc:
        report.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "error",
                      error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        report.update(total_s=round(steps.total, 1), total_cpu_s=round(cpu_seconds(), 1),
                      finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        if report_path is not None:
            io.atomic_write_text(report_path, json.dumps(report, indent=1, default=str) + "\n")
            report["report"] = str(report_path)
    _summary(report, echo)
    return report


def _after_training(recipe: RecipeConfig, data: Path, ds: Any, records: list[dict], steps: Steps,
                    report: dict, out_dir: Path | None, echo: Callable[[str], None]) -> None:
    """Inference, tuning, submission, validation, test-label scores and the report page."""
    from infer import ensemble, oof_table, tune
    from infer.config import EnsembleConfig
    from pipeline import scores
    from submit import make
    from submit.validate import validate_submission

    detectors = trained_folds(recipe.detector_list(), records)
    classifiers = trained_folds(recipe.classifier_list(), records)
    trained = {**detectors, **classifiers}
    left_out = {m.name: [f for f in m.folds if f not in trained[m.name]]
                for m in recipe.detector_list() + recipe.classifier_list()}
    report["left_out"] = {m: folds for m, folds in left_out.items() if folds}
    if not any(detectors.values()):
        raise io.DataError("no detector finished training; nothing to predict with (see the failures above)")
    logs = paths.logs_dir(ds.id)
    ens = kit_config.from_dict(EnsembleConfig, ensemble_values(recipe, ds, detectors, classifiers),
                               "recipe ensemble")
    report["ensemble"] = str(kit_config.save(ens, logs / "ensemble.yaml"))
    steps("infer (members x TTA views, test + out-of-fold)", lambda: ensemble.run(ens, data))
    if recipe.tune:
        tuned, _ = steps("tune out-of-fold", lambda: tune.run(ens, data, logs / "tuned.yaml"))
        ens = kit_config.load(EnsembleConfig, tuned)
        saved = oof_table.load(oof_table.path_for(tuned))  # the table tuning computed and saved
        table = saved[0] if saved else None
        report.update(tuned=str(tuned), oof_table=saved[1]["path"] if saved else None,
                      oof=[] if table is None else table.astype(object).where(table.notna(), None)
                      .to_dict(orient="records"), oof_check=scores.oof_check(table))
        if table is not None:
            _track_oof(ds, table, tuned)
    cal = None
    if report.get("tuned"):  # the confidence of make predict and of the submission's picture (fitted once)
        from infer import calibrate

        cal = steps("calibration (out-of-fold)", lambda: calibrate.ensure(
            ens, ds, Path(report["tuned"]), logs / calibrate.FILE))
    result = steps("submission", lambda: make.run(ens, data, out_dir=out_dir, calibration=cal))
    pseudo = recipe.pseudo_settings()
    if pseudo is not None:
        if cal is None:  # no tuning: the recipe's own ensemble is calibrated out-of-fold
            from infer import calibrate

            cal = steps("calibration (out-of-fold)", lambda: calibrate.ensure(
                ens, ds, Path(report["ensemble"]), logs / calibrate.FILE))
        report["pseudo"] = steps("pseudo-labels (sure test images)",
                                 lambda: _pseudo(pseudo, ens, ds, data, result, cal, echo))
    report.update(submission=str(result.submission), fusion=result.fusion)
    files = paths.data_files(data)
    problems = steps("validate",
                     lambda: validate_submission(result.submission, files["test"], files["images"]))
    errors = [p for p in problems if p.level == "error"]
    echo(f"validator: {len(errors)} error(s), {len(problems) - len(errors)} warning(s)")
    if errors:
        raise io.DataError(errors)
    if result.score is not None:
        r = result.score
        report.update(score=r.total, giou_term=r.giou_term, f1_term=r.f1_term)
        report["test"] = steps("test labels: each member vs the ensemble",
                               lambda: scores.test_table(ens, data, result.fusion, r))
    config = Path(report.get("tuned") or report["ensemble"])
    clean = recipe.clean_settings()
    if clean is not None:
        report["clean"] = steps("label audit (out-of-fold)", lambda: _audit(clean, ds, config, echo))
    report["report_page"] = steps("report page", lambda: report_page(ds, config, result.submission))


def _audit(clean: Any, ds: Any, config: Path, echo: Callable[[str], None]) -> dict:
    """The out-of-fold label audit of the run's ensemble ``config`` (``infer.label_audit``), in its logs."""
    from infer import label_audit
    from infer.config import EnsembleConfig

    audit_path = paths.logs_dir(ds.id) / label_audit.AUDIT_FILE
    table, used = label_audit.run_audit(kit_config.load(EnsembleConfig, config), ds, clean, audit_path)
    echo(f"{label_audit.summary(table)} (confident: fused score >= {used.box_conf:.4f}): "
         f"{paths.shown(audit_path)}")
    return {"audit": str(audit_path), "suspects": table["kind"].value_counts().to_dict(),
            "box_conf": used.box_conf}


def _pseudo(cfg: Any, ens: Any, ds: Any, data: Path, result: Any, cal: Any,
            echo: Callable[[str], None]) -> dict:
    """Round one's sure test images (``infer.pseudo.choose``: each fold's own, or the ensemble's, capped
    at the recipe's share) written to the run's logs (``pseudo_labels.csv``); returns the counts and
    where they are."""
    from infer import pseudo

    test = tables.read(paths.data_files(data)["test"], "test")
    n_cells = test.groupby("NAME").size().to_dict()
    rows, counts = pseudo.choose(cfg, ens, data, ds, result, cal, n_cells)
    path = io.atomic_write_df(rows, paths.logs_dir(ds.id) / pseudo.LABELS_FILE)
    echo(f"{pseudo.describe(counts, rows, cfg)}: {paths.shown(path)}")
    return {**counts, "labels": str(path), "source": cfg.labels, "used_images": int(rows["NAME"].nunique()),
            "used_boxes": len(rows)}


def _round_two_parts(recipe: RecipeConfig) -> list[str]:
    clean = recipe.clean_settings()
    parts = ["the cleaned labels"] if clean is not None and clean.policy else []
    return parts + (["pseudo-labels"] if recipe.pseudo_settings() is not None else [])


def _round_two(recipe: RecipeConfig, ds: Any, report: dict, out_dir: Path | None,
               echo: Callable[[str], None]) -> None:
    """Round two: the audit's policy applied (``clean``) and/or round one's sure test images added
    (``pseudo``) as a NEW data folder (the raw data untouched, the changes recorded beside it), and the
    same recipe on it, each train image in its round-one fold (pseudo images in every fold's training
    list, no validation list). What round two scored goes into ``report["clean"]`` / ``report["pseudo"]``;
    with pseudo-labels, also its out-of-fold score vs round one's on the same images and truth."""
    import dataclasses

    import pandas as pd

    from infer import label_audit, pseudo

    clean, cfg = recipe.clean_settings(), recipe.pseudo_settings()
    cleaning = clean is not None and bool(clean.policy) and bool(report.get("clean"))
    if cfg is not None and not report["pseudo"]["used_images"]:
        echo("pseudo-labels: no test image is sure at this confidence"
             + ("; round two cleans labels only" if cleaning else "; no round two"))
        if not cleaning:
            return
        cfg = None
    boxes, records, info = pd.read_csv(ds.root / "boxes.csv", dtype={"NAME": str}), {}, {}
    fold_file = Path(ds.meta["fold_file"])
    if cleaning:
        table = pd.read_csv(report["clean"]["audit"], dtype={"NAME": str})
        used = dataclasses.replace(clean, box_conf=report["clean"]["box_conf"])  # auto resolved by the audit
        if cfg is None:
            folder, info = label_audit.write_cleaned(ds, table, used)
        else:
            boxes, records = label_audit.cleaned_boxes(ds, table, used)
            info = records[label_audit.SUMMARY_FILE]
        echo(f"cleaned labels ({', '.join(f'{k} {v}' for k, v in info['changed'].items())})")
    if cfg is not None:
        rows = pd.read_csv(report["pseudo"]["labels"], dtype={"NAME": str})
        counts = {k: report["pseudo"][k] for k in ("test_images", "kept_images", "kept_boxes", "left_out",
                                                   "per_fold", "source") if k in report["pseudo"]}
        folder, _ = pseudo.write_round_two(ds, boxes, rows, cfg, counts, records,
                                           extra=records.get(label_audit.SUMMARY_FILE))
        fold_file = folder / pseudo.FOLDS_FILE
    echo(f"round two's data: {folder}")
    second = dataclasses.replace(recipe, clean={}, pseudo={}, folds=[*recipe.folds, f"assign={fold_file}"])
    what = " and ".join(p for p in _round_two_parts(recipe) if cfg is not None or p != "pseudo-labels")
    echo(f"\n==== round two: the same recipe on {what}, the same folds ====")
    two = run(second, folder, out_dir, echo)
    summary = {k: two.get(k) for k in ("status", "score", "giou_term", "f1_term", "report", "submission",
                                       "oof_check", "tuned", "report_page")}
    report["failures"] += two["failures"]  # a round-two job that failed fails the run too
    if info:
        report["clean"].update(data=str(folder), changed=info["changed"], round_two=summary)
    if cfg is not None:
        report["pseudo"].update(data=str(folder), round_two=summary)
        if report.get("tuned") and two.get("tuned"):
            report["pseudo"]["oof"] = _compare_rounds(report, two, ds, folder, echo)
    from pipeline.report import rounds

    record = {"what": what, "data": str(folder), "round_two": summary, "changed": info.get("changed"),
              "round_one": {k: report.get(k) for k in ("score", "report_page", "tuned")},
              "pseudo": report.get("pseudo") if cfg is not None else None,
              "oof": (report.get("pseudo") or {}).get("oof") if cfg is not None else None}
    text = json.dumps(record, indent=1, default=str) + "\n"
    io.atomic_write_text(paths.logs_dir(ds.id) / rounds.FILE, text)
    if report.get("report_page") and report.get("submission"):  # round one's page with both rounds
        config = Path(report.get("tuned") or report["ensemble"])
        report["report_page"] = report_page(ds, config, Path(report["submission"]))


def _compare_rounds(report: dict, two: dict, ds: Any, folder: Path, echo: Callable[[str], None]) -> dict:
    """Round two's tuned out-of-fold score vs round one's, on round one's images and truth."""
    from cytocore import dataset
    from infer import pseudo
    from infer.config import EnsembleConfig

    one = (kit_config.load(EnsembleConfig, Path(report["tuned"])), ds)
    second = (kit_config.load(EnsembleConfig, Path(two["tuned"])), dataset.resolve(folder, ds.k, ds.seed))
    out = pseudo.compare_rounds(one, second)
    echo(f"out-of-fold, round two minus round one on the same {out['images']} images: {out['text']} "
         f"({out['round_two']:.4f} vs {out['round_one']:.4f}; paired bootstrap 95 % interval)")
    return {k: v for k, v in out.items() if k != "text"}


def _use_tracker(recipe: RecipeConfig) -> None:
    """The recipe's tracker for this process and every training job it starts (``CYTOKIT_TRACKER``);
    one already in the environment (``make all TRACKER=...``) wins."""
    from train import tracking

    os.environ.setdefault(tracking.ENV, tracking.selected(recipe.tracker))


def _track_oof(ds: Any, table: Any, tuned: Path) -> None:
    """The out-of-fold table and the tuned settings as the run ``make_all`` of the dataset's experiment."""
    from train import tracking

    tracking.table(ds.id, "make_all", "oof", table, kit_config.read_yaml(tuned))
    tracking.close_all()


def make_synthetic(recipe: RecipeConfig, data: Path) -> None:
    """The recipe's synthetic data (its ``synth`` section, drawn with its seed) in ``data``."""
    from prepare.synth import make

    settings, seed = recipe.synth_settings(), recipe.seed
    code = make.main(["--out", str(data), "--images", str(settings.images), "--seed", str(seed),
                      "--test-fraction", str(settings.test_fraction), "--workers", str(settings.workers)])
    if code:
        raise RuntimeError(f"prepare.synth failed with exit status {code}")


def _folds(recipe: RecipeConfig, data: Path) -> None:
    from prepare import folds

    folds.run(data, recipe.folds_config())


def per_class_table(rows: list[dict]):
    """One line per class (in order of first appearance), one column per row of the test table: each
    row's F1 for that class (blank where a row has no such label). Narrow whatever the 23 classes."""
    import pandas as pd

    f1 = pd.DataFrame([r.get("per_class_f1") or {} for r in rows], index=[r["member"] for r in rows]).T
    return f1.rename_axis("class").reset_index()


def _summary(report: dict, echo: Callable[[str], None]) -> None:
    """The end of the run: times, the out-of-fold and test tables, the failures, where things are."""
    import pandas as pd

    from cytocore.io import format_table

    echo(f"\n  {'== times ==':<48} {'wall':>9} {'CPU':>9} {'peak RSS':>9} {'child':>9}")
    for name, sec in report["steps"].items():
        rss = report.get("steps_rss", {}).get(name, {})
        mem = f" {rss['main_mb'] / 1024:5.2f} GiB {rss['child_mb'] / 1024:5.2f} GiB" if rss else ""
        echo(f"  {name:<48} {sec:7.1f} s {report['steps_cpu'].get(name, 0):7.1f} s{mem}")
    echo(f"  {'total':<48} {report['total_s']:7.1f} s {report['total_cpu_s']:7.1f} s")
    if report.get("oof"):
        from infer import oof_table

        echo("\nout-of-fold challenge score of each member (with and without TTA and the classifier) and of "
             "the ensemble")
        echo("  (diff [lo, hi]: minus the tuned ensemble's, paired bootstrap 95 % interval over images):")
        echo(oof_table.text(pd.DataFrame(report["oof"], columns=list(oof_table.COLUMNS))))
        c = report["oof_check"]
        if c:
            echo(f"ensemble {c['ensemble']:.4f} vs best single member {c['best_member']} {c['best']:.4f} "
                 f"out-of-fold: {c['ensemble'] - c['best']:+.4f}"
                 + ("" if c["ensemble"] >= c["best"] else "  <- the ensemble is BELOW its best member"))
    if report.get("test"):
        echo("\ntest labels: each member alone (detector classes), with the classifier, and the ensemble:")
        table = pd.DataFrame(report["test"])
        echo(format_table(table.drop(columns="per_class_f1", errors="ignore")))
        if "per_class_f1" in table:
            echo("\nper-class F1 on the test labels (the F1 term is their mean), one column per row above:")
            per_class = per_class_table(report["test"])
            names = list(per_class.columns[1:])
            for i, name in enumerate(names, 1):
                echo(f"  [{i}] {name}")
            echo(format_table(per_class.set_axis(["class", *(f"[{i}]" for i in range(1, len(names) + 1))],
                                                 axis=1)))
    if report["failures"]:
        echo(f"\n{len(report['failures'])} training job(s) FAILED:")
        for r in report["failures"]:
            echo(f"  {r['name']}: exit {r.get('returncode')}: {r.get('last_line', '')}\n    log: {r['log']}")
    if report.get("left_out"):
        echo("left out of the ensemble: " + ", ".join(f"{m} fold(s) {', '.join(map(str, f))}"
                                                      for m, f in report["left_out"].items()))
    if report.get("submission"):
        echo(f"\nsubmission: {report['submission']}")
    if "score" in report:
        echo(f"test score: {report['score']:.4f} (GIoU term {report['giou_term']:.4f}, "
             f"F1 term {report['f1_term']:.4f}) in {report['total_s'] / 60:.1f} min")
    if report.get("clean"):
        c = report["clean"]
        echo(f"label audit: suspects by kind {c['suspects']} in {c['audit']}")
        two = c.get("round_two")
        if two and two.get("score") is not None and "score" in report:
            echo(f"round two on the cleaned labels ({c['changed']}): test score {two['score']:.4f} "
                 f"(GIoU term {two['giou_term']:.4f}, F1 term {two['f1_term']:.4f}) vs round one "
                 f"{report['score']:.4f}")
    if report.get("pseudo"):
        p = report["pseudo"]
        two, oof = p.get("round_two"), p.get("oof")
        echo(f"pseudo-labels: {p['used_images']} test images ({p['used_boxes']} boxes) in {p['labels']}")
        if two and two.get("score") is not None and "score" in report:
            echo(f"round two with pseudo-labels: test score {two['score']:.4f} vs round one "
                 f"{report['score']:.4f}")
        if oof:
            echo(f"round two with pseudo-labels: out-of-fold {oof['round_two']:.4f} vs round one "
                 f"{oof['round_one']:.4f}: {oof['diff']:+.4f} [{oof['lo']:+.4f}, {oof['hi']:+.4f}]")
    if report.get("report"):
        echo(f"run report: {report['report']}")
        if report.get("report_page"):
            echo(f"report page: {report['report_page']}")
