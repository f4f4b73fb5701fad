"""Resume that holds: process groups of training jobs, late kills of YOLO runs, recorded settings on resume,
the classifier's RNG streams, ``amp: false`` in validation, the rescoring cadence."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from train import parallel

FAKE_JOB = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(600)
"""


def _dead(pid: int) -> bool:
    """True when ``pid`` is gone or a zombie (a reparented grandchild waits for init to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def _wait(predicate, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.smoke
def test_stopping_the_runner_ends_each_job_and_its_grandchildren(tmp_path, monkeypatch):
    """Ctrl-C in the runner: every running job's process group gets the signal, the grandchild (an
    ultralytics DDP worker in real life) included; the job did not share the runner's process group."""
    script = tmp_path / "fake_job.py"
    script.write_text(FAKE_JOB)
    pid_file = tmp_path / "grandchild.pid"
    monkeypatch.setattr(parallel, "STOP_GRACE_S", 5.0, raising=False)
    seen: dict[str, int] = {}

    def echo(line: str) -> None:
        if line.strip().startswith("running") and pid_file.exists() and pid_file.read_text():
            seen["grandchild"] = int(pid_file.read_text())
            raise KeyboardInterrupt  # the user's Ctrl-C, delivered to the runner only

    job = parallel.Job("fake fold 0", [sys.executable, str(script), str(pid_file)], tmp_path / "fake.log")
    with pytest.raises(KeyboardInterrupt):
        parallel.run_jobs([job], 1, echo=echo, heartbeat=0.0)
    grandchild = seen["grandchild"]
    assert _wait(lambda: _dead(grandchild)), "the job's grandchild outlived the stopped job"


@pytest.mark.smoke
def test_a_job_runs_in_its_own_process_group_and_stop_signals_the_group(tmp_path):
    script = tmp_path / "fake_job.py"
    script.write_text(FAKE_JOB)
    pid_file = tmp_path / "grandchild.pid"
    job = parallel.Job("fake fold 1", [sys.executable, str(script), str(pid_file)], tmp_path / "fake.log")
    running = parallel._Running(job, 0, dict(os.environ))
    assert _wait(lambda: pid_file.exists() and pid_file.read_text() != "")
    grandchild = int(pid_file.read_text())
    assert os.getpgid(running.proc.pid) == running.proc.pid != os.getpgid(0)
    assert os.getpgid(grandchild) == running.proc.pid
    running.stop(grace=5.0)
    assert running.proc.returncode == -signal.SIGTERM
    assert _wait(lambda: _dead(grandchild))
