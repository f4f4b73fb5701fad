"""Experiment tracking, opt-in and offline: ``tracker: none | csv | tensorboard | mlflow``.

Every family writes one row per epoch through ``train.runs.append_metrics`` (losses,
validation metrics, the challenge score); that is the one place a tracker is fed, so
every family is tracked the same way. The orchestrator adds the out-of-fold table at
the end of ``make all``. The choice travels to training jobs in ``CYTOKIT_TRACKER``
(the recipe's ``tracker:`` key, or ``TRACKER=`` on the make command line).

- ``none`` (default): nothing beyond the run folder's own metrics.csv and curves.png.
- ``csv``: ``<work>/tracking/<dataset id>/<model>_fold<k>/`` with params.json (the
  run's resolved config), metrics.csv (every epoch) and a CSV per logged table.
- ``tensorboard``: event files in ``<work>/tracking/tensorboard/<dataset id>/<run>``
  (``tensorboard --logdir work/tracking/tensorboard``).
- ``mlflow``: a local file store, ``<work>/tracking/mlruns`` (``mlflow ui
  --backend-store-uri work/tracking/mlruns``); no server, nothing leaves the machine.
  YOLO runs also switch on ultralytics' own TensorBoard / MLflow callbacks
  (``ultralytics_settings``), which log its losses and mAP beside the kit's rows.

A tracker that fails (a full disk, a broken install) logs one warning and is switched
off for the rest of the run: tracking never stops training.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from cytocore import paths
from cytocore.config import ConfigError

log = logging.getLogger(__name__)

TRACKERS = ("none", "csv", "tensorboard", "mlflow")
ENV = "CYTOKIT_TRACKER"


def selected(value: str | None = None) -> str:
    """The tracker asked for (``value``, else ``CYTOKIT_TRACKER``, else none); unknown names refused."""
    name = (value if value is not None else os.environ.get(ENV, "none")).strip().lower() or "none"
    if name not in TRACKERS:
        raise ConfigError(f"tracker {name!r} is not one of {', '.join(TRACKERS)}")
    return name


def tracking_dir() -> Path:
    return paths.work_dir() / "tracking"


def run_names(run_dir: Path) -> tuple[str, str]:
    """(experiment, run) of a run folder ``.../runs/<dataset id>/<model>/fold<k>``."""
    run_dir = Path(run_dir)
    return run_dir.parent.parent.name, f"{run_dir.parent.name}_{run_dir.name}"


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in row.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number) and key not in ("epoch", "time", "epoch_s"):
            out[str(key)] = number
    return out


class Tracker:
    """One tracked run: its config once, a row of numbers per step, tables at the end."""

    def __init__(self, experiment: str, run: str) -> None:
        self.experiment, self.run = experiment, run

    def params(self, values: dict[str, Any]) -> None:  # pragma: no cover - overridden
        pass

    def metrics(self, row: dict[str, Any], step: int) -> None:  # pragma: no cover - overridden
        pass

    def table(self, name: str, frame: Any) -> None:  # pragma: no cover - overridden
        pass

    def close(self) -> None:
        pass


class CsvTracker(Tracker):
    def __init__(self, experiment: str, run: str) -> None:
        super().__init__(experiment, run)
        self.folder = tracking_dir() / experiment / run

    def params(self, values: dict[str, Any]) -> None:
        from cytocore.io import atomic_write_text

        atomic_write_text(self.folder / "params.json", json.dumps(values, indent=1, default=str) + "\n")

    def metrics(self, row: dict[str, Any], step: int) -> None:
        import pandas as pd

        from cytocore.io import atomic_write_df

        path = self.folder / "metrics.csv"
        old = pd.read_csv(path) if path.exists() else pd.DataFrame()
        if len(old) and "step" in old:
            old = old[old["step"] != step]
        new = pd.DataFrame([{"step": step, **_numbers(row)}])
        atomic_write_df(pd.concat([old, new], ignore_index=True) if len(old) else new, path)

    def table(self, name: str, frame: Any) -> None:
        from cytocore.io import atomic_write_df

        atomic_write_df(frame, self.folder / f"{name}.csv")


class TensorBoardTracker(Tracker):
    def __init__(self, experiment: str, run: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        super().__init__(experiment, run)
        self.writer = SummaryWriter(str(tracking_dir() / "tensorboard" / experiment / run))

    def params(self, values: dict[str, Any]) -> None:
        lines = "\n".join(f"    {k}: {v}" for k, v in values.items())  # indented: markdown code block
        self.writer.add_text("config", lines)

    def metrics(self, row: dict[str, Any], step: int) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def table(self, name: str, frame: Any) -> None:
        text = frame.to_string(index=False) if hasattr(frame, "to_string") else str(frame)
        self.writer.add_text(name, "\n".join(f"    {line}" for line in text.splitlines()))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    def __init__(self, experiment: str, run: str) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the file store: no server, no database
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        super().__init__(experiment, run)
        self.client = MlflowClient(tracking_uri=(tracking_dir() / "mlruns").resolve().as_uri())
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        same = self.client.search_runs([exp_id], filter_string=f"tags.mlflow.runName = '{run}'",
                                       max_results=1)  # a resumed run continues its own record
        self.run_id = same[0].info.run_id if same else \
            self.client.create_run(exp_id, run_name=run).info.run_id

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.exceptions import MlflowException

        for key, value in values.items():
            try:
                self.client.log_param(self.run_id, key, str(value)[:500])
            except MlflowException:  # a resumed run logs its params again: the first value stays
                pass

    def metrics(self, row: dict[str, Any], step: int) -> None:
        for key, value in _numbers(row).items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def table(self, name: str, frame: Any) -> None:
        self.client.log_text(self.run_id, frame.to_csv(index=False), f"{name}.csv")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


KINDS = {"csv": CsvTracker, "tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}
_open: dict[tuple[str, str], Tracker | None] = {}


def tracker(experiment: str, run: str, name: str | None = None) -> Tracker | None:
    """The process's tracker of (experiment, run) under the selected kind; None for ``none`` or once
    it failed."""
    kind = selected(name)
    if kind == "none":
        return None
    key = (experiment, run)
    if key not in _open:
        try:
            _open[key] = KINDS[kind](experiment, run)
        except Exception as exc:  # tracking never stops a run
            log.warning("tracker %s is off for %s/%s: %s", kind, experiment, run, exc)
            _open[key] = None
    return _open[key]


def _call(key: tuple[str, str], method: str, *args: Any) -> None:
    found = _open.get(key)
    if found is None:
        return
    try:
        getattr(found, method)(*args)
    except Exception as exc:
        log.warning("tracker off for %s/%s after an error: %s", *key, exc)
        _open[key] = None


def epoch(run_dir: Path, row: dict[str, Any]) -> None:
    """Feed one epoch's row of ``run_dir`` (``train.runs.append_metrics`` calls this); the run's
    resolved config.yaml is logged with the first row."""
    experiment, run = run_names(run_dir)
    first = (experiment, run) not in _open
    if tracker(experiment, run) is None:
        return
    if first:
        from cytocore import config as kit_config

        saved = Path(run_dir) / paths.CONFIG
        _call((experiment, run), "params", kit_config.read_yaml(saved) if saved.is_file() else {})
    _call((experiment, run), "metrics", row, int(row.get("epoch", 0)))


def table(experiment: str, run: str, name: str, frame: Any, params: dict[str, Any] | None = None) -> None:
    """Log a table (the out-of-fold table of ``make all``) as run ``run`` of ``experiment``."""
    if tracker(experiment, run) is None:
        return
    if params:
        _call((experiment, run), "params", params)
    _call((experiment, run), "table", name, frame)


def close_all() -> None:
    for key in list(_open):
        _call(key, "close")
        _open.pop(key, None)


def ultralytics_settings(name: str | None = None) -> dict[str, bool]:
    """Ultralytics' own integrations to switch on for the selected tracker (its SETTINGS keys)."""
    kind = selected(name)
    return {"tensorboard": kind == "tensorboard", "mlflow": kind == "mlflow"}


def use_ultralytics(run_dir: Path, settings: Any = None) -> dict[str, bool]:
    """Switch ultralytics' own TensorBoard / MLflow callbacks to the selected tracker for the YOLO run in
    ``run_dir`` (its ``SETTINGS``, kept in the project-local YOLO_CONFIG_DIR): TensorBoard writes beside
    ultralytics' run files, MLflow into the kit's local store (``MLFLOW_TRACKING_URI``), experiment and
    run named as the kit's rows. Returns what was switched."""
    if settings is None:
        from ultralytics.utils import SETTINGS as settings
    wanted = ultralytics_settings()
    if any(settings.get(k) != v for k, v in wanted.items()):
        settings.update(wanted)
    if wanted["mlflow"]:
        experiment, run = run_names(run_dir)
        os.environ["MLFLOW_TRACKING_URI"] = (tracking_dir() / "mlruns").resolve().as_uri()
        os.environ["MLFLOW_EXPERIMENT_NAME"] = experiment
        os.environ["MLFLOW_RUN"] = f"{run}_ultralytics"
    return wanted
