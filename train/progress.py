"""Progress you can follow: each job's epoch i/N, s/epoch and ETA, and the whole run's.

Every family appends one row per epoch to its run folder's ``metrics.csv``
(``train.runs.append_metrics``), stamped with the wall clock (``time``). That is
all this module reads, so it works for every family, for a job started by ``make
train`` or by ``make all``, and for a resumed job (its earlier epochs count).

- ``job_state(run_dir, epochs)``: epochs done, seconds per epoch (median of the
  measured epochs), the job's ETA.
- ``overall(states, queued, slots)``: jobs done/total and the run's ETA: the running
  jobs' remaining time plus the queued jobs' (estimated from measured jobs of the same
  model, else from any measured epoch), spread over the job slots.
- ``line(...)``: the one line ``make all`` prints every heartbeat.
"""
from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pandas as pd

from cytocore import paths

TIME = "time"  # the wall-clock column append_metrics stamps on every row


@dataclasses.dataclass
class JobState:
    """What is known of one training job from its run folder."""

    name: str  # "yolov8 fold 0"
    model: str
    epochs: int  # epochs the job trains in all
    done: int = 0  # epochs finished
    epoch_s: float | None = None  # median seconds per epoch measured (None: fewer than two rows)

    @property
    def eta_s(self) -> float | None:
        return None if self.epoch_s is None else max(0, self.epochs - self.done) * self.epoch_s


def job_state(name: str, model: str, run_dir: Path, epochs: int) -> JobState:
    """The state of a job from ``run_dir/metrics.csv`` (none yet: 0 epochs done, no rate)."""
    path = Path(run_dir) / paths.METRICS
    state = JobState(name, model, max(1, int(epochs)))
    if not path.is_file():
        return state
    try:
        table = pd.read_csv(path, usecols=lambda c: c in ("epoch", TIME))
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return state
    if "epoch" in table and len(table):
        state.done = int(table["epoch"].max())
    if TIME in table:
        times = table.sort_values("epoch")[TIME].dropna().to_numpy()
        steps = [b - a for a, b in zip(times[:-1], times[1:]) if b > a]
        if steps:
            state.epoch_s = float(statistics.median(steps))
    return state


def overall(running: list[JobState], queued: list[JobState], slots: int) -> float | None:
    """Seconds left for the whole run (None when nothing was measured yet)."""
    rates = [s.epoch_s for s in running if s.epoch_s is not None]
    if not rates:
        return None
    by_model: dict[str, float] = {}
    for s in running:
        if s.epoch_s is not None:
            by_model.setdefault(s.model, s.epoch_s)
    fallback = statistics.median(rates)
    left = sum(s.eta_s if s.eta_s is not None else (s.epochs - s.done) * by_model.get(s.model, fallback)
               for s in running)
    left += sum(s.epochs * by_model.get(s.model, fallback) for s in queued)
    return left / max(1, min(slots, len(running) + len(queued)))


class Every:
    """``due()`` is True at most once every ``seconds`` (a job's progress lines in its log)."""

    def __init__(self, seconds: float = 30.0):
        import time

        self.seconds, self.clock = seconds, time.monotonic
        self.start = self.shown = self.clock()

    def due(self) -> bool:
        now = self.clock()
        if now - self.shown < self.seconds:
            return False
        self.shown = now
        return True

    def elapsed(self) -> float:
        return self.clock() - self.start


def batch_text(done: int, total: int, elapsed_s: float, what: str = "batch") -> str:
    """``batch 400/1210 (33 %), 0.41 s/batch, ETA 5 min``: where a loop is and when it ends."""
    total = max(total, done, 1)
    per = elapsed_s / max(done, 1)
    return (f"{what} {done}/{total} ({100 * done // total} %), {per:.2f} s/{what}, "
            f"ETA {duration(per * (total - done))}")


def duration(seconds: float | None) -> str:
    """``1 h 05 min``, ``12 min``, ``40 s``, or ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


def job_text(state: JobState) -> str:
    """``yolov8 fold 3: epoch 12/60, 41 s/epoch, ETA 33 min``."""
    seconds = f"{state.epoch_s:.1f}" if state.epoch_s and state.epoch_s < 10 else f"{state.epoch_s or 0:.0f}"
    rate = f", {seconds} s/epoch, ETA {duration(state.eta_s)}" if state.epoch_s else ""
    return f"{state.name}: epoch {state.done}/{state.epochs}{rate}"


def line(running: list[JobState], queued: list[JobState], finished: int, total: int, slots: int,
         elapsed_s: float) -> str:
    """The heartbeat of ``make all``: jobs done/total, each running job, the overall ETA."""
    parts = [f"[{finished}/{total} jobs done, {duration(elapsed_s)} elapsed, overall ETA "
             f"{duration(overall(running, queued, slots))}]"]
    parts += [job_text(s) for s in running]
    return "; ".join(parts)
