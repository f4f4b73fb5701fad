"""Progress of training jobs and of make all (train.progress), read from each run's metrics.csv."""
from __future__ import annotations

import pandas as pd
import pytest

from train import progress, runs

pytestmark = pytest.mark.unit


def write(run_dir, times):
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"epoch": range(1, len(times) + 1), "loss": 1.0, "time": times}).to_csv(
        run_dir / "metrics.csv", index=False)


def test_job_state_measures_seconds_per_epoch_and_eta(tmp_path):
    write(tmp_path / "a", [100.0, 140.0, 180.0, 230.0])  # 40, 40, 50 s per epoch: median 40
    state = progress.job_state("yolov8 fold 0", "yolov8", tmp_path / "a", epochs=10)
    assert (state.done, state.epoch_s, state.eta_s) == (4, 40.0, 6 * 40.0)
    assert progress.job_text(state) == "yolov8 fold 0: epoch 4/10, 40 s/epoch, ETA 4 min"


def test_a_job_without_rows_or_with_one_row_has_no_eta(tmp_path):
    assert progress.job_state("x", "cls", tmp_path / "none", 5).eta_s is None
    write(tmp_path / "one", [100.0])
    state = progress.job_state("x", "cls", tmp_path / "one", 5)
    assert (state.done, state.eta_s) == (1, None)
    assert progress.job_text(state) == "x: epoch 1/5"


def test_overall_eta_counts_queued_jobs_at_their_models_rate_over_the_slots():
    running = [progress.JobState("yolov8 fold 0", "yolov8", epochs=10, done=5, epoch_s=60.0),
               progress.JobState("cls fold 0", "cls", epochs=4, done=2, epoch_s=30.0)]
    queued = [progress.JobState("yolov8 fold 1", "yolov8", epochs=10),
              progress.JobState("unet fold 0", "unet", epochs=2)]  # unmeasured model: the median rate
    left = 5 * 60 + 2 * 30 + 10 * 60 + 2 * 45
    assert progress.overall(running, queued, slots=2) == pytest.approx(left / 2)
    line = progress.line(running, queued, finished=1, total=5, slots=2, elapsed_s=3700)
    assert line.startswith("[1/5 jobs done, 1 h 01 min elapsed, overall ETA 8 min]")
    assert "yolov8 fold 0: epoch 5/10, 60 s/epoch, ETA 5 min" in line


def test_nothing_measured_gives_an_unknown_eta():
    running = [progress.JobState("a", "yolov8", epochs=3)]
    assert progress.overall(running, [], 1) is None
    assert "overall ETA ?" in progress.line(running, [], 0, 1, 1, 5)


def test_append_metrics_stamps_the_wall_clock(tmp_path, monkeypatch):
    """Always, whatever the family's row holds: the classifier once wrote its epoch's duration as
    ``time`` (36, 41, 39 s...), and the heartbeat showed '2.7 s/epoch, ETA 1 min' for 30 s epochs."""
    import time

    clock = iter([1.8e9, 1.8e9 + 30, 1.8e9 + 61])
    monkeypatch.setattr(time, "time", lambda: next(clock))
    for epoch, seconds in ((1, 36.1), (2, 41.5), (3, 39.2)):
        runs.append_metrics(tmp_path, {"epoch": epoch, "loss": 0.5, "epoch_s": seconds, "time": seconds})
    table = runs.read_metrics(tmp_path)
    assert table["time"].tolist() == [1.8e9, 1.8e9 + 30, 1.8e9 + 61]
    state = progress.job_state("cls fold 0", "cls", tmp_path, epochs=30)
    assert (state.done, state.epoch_s) == (3, 30.5)


def test_the_heartbeat_of_make_all_reads_each_running_jobs_epochs(tmp_path):
    """One header (jobs done/total, elapsed, overall ETA) and one line per running job: epoch i/N with
    s/epoch and ETA from its metrics.csv, or the last line of its log before its first epoch."""
    from types import SimpleNamespace

    from train import parallel

    run = tmp_path / "runs" / "yolov8" / "fold0"
    run.mkdir(parents=True)
    pd.DataFrame({"epoch": [1, 2, 3], "time": [100.0, 140.0, 180.0]}).to_csv(run / "metrics.csv", index=False)
    (tmp_path / "cls.log").write_text("loading crops\n")
    det = parallel.Job("yolov8 fold 0", ["x"], tmp_path / "det.log", run_dir=run, epochs=10)
    cls = parallel.Job("cls fold 0", ["x"], tmp_path / "cls.log", run_dir=tmp_path / "none", epochs=5)
    queued = parallel.Job("yolov8 fold 1", ["x"], tmp_path / "q.log", run_dir=tmp_path / "q", epochs=10)
    lines = parallel.heartbeat_lines([SimpleNamespace(job=det), SimpleNamespace(job=cls)], [queued],
                                     finished=1, total=4, slots=2, elapsed_s=600)
    # left: (7 + 5 running + 10 queued epochs) x 40 s (the only rate measured), over 2 slots = 440 s
    assert lines[0] == "  [1/4 jobs done, 10 min elapsed, overall ETA 7 min]"
    assert lines[1] == "    yolov8 fold 0: epoch 3/10, 40 s/epoch, ETA 4 min"
    assert lines[2] == "    cls fold 0: loading crops"
    assert all(len(line) <= 120 for line in lines)


def test_every_and_batch_text_say_where_a_long_loop_is():
    from train import progress

    clock = iter([10.0, 31.0, 40.0, 62.0])
    every = progress.Every(30.0)
    every.clock, every.start, every.shown = lambda: next(clock), 0.0, 0.0
    assert [every.due() for _ in range(4)] == [False, True, False, True]  # t = 10, 31, 40, 62
    assert progress.batch_text(400, 1200, 200.0) == "batch 400/1200 (33 %), 0.50 s/batch, ETA 6 min"
    assert progress.batch_text(0, 0, 0.0, "image") == "image 0/1 (0 %), 0.00 s/image, ETA 0 s"
