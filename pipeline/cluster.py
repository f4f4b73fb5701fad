"""``make all LAUNCHER=slurm``: the recipe's member x fold training jobs handed to SLURM through submitit.

    make all LAUNCHER=slurm PARTITION=gpu TIME=24:00:00 MEM=64 GPUS=1 CPUS=8 [ACCOUNT=...]

``pipeline.run.train_step`` builds the jobs (``pipeline.run.plan``: the same
``python -m train`` command lines, run folders and ``train.parallel.log_path``
logs as the local runner) and, when ``CYTOKIT_LAUNCHER`` (make's ``LAUNCHER``) is
``slurm`` or ``submitit-local``, gives them to ``run_jobs`` here instead of
``train.parallel.run_jobs``. Each job is one submitit submission
(``submitit.SlurmExecutor``): one GPU, ``--requeue``-style resubmission on a
time-out or a preemption (submitit's ``Checkpointable``: the job comes back as
``python -m train --resume``), and a classifier fold waits for its detector fold
through ``--dependency=afterany:<job id>`` (as locally: whatever the detector's
outcome). The job appends its output to the same log file as a local run, so
``work/logs/<dataset id>/<name>_fold<k>.log`` (the member's name) holds every attempt, local or
not; submitit's own files (pickles, the sbatch script, its stdout) are in
``work/logs/<dataset id>/submitit/``, with ``jobs.json``: the SLURM id of each job, so
that a ``make all`` run again while they train waits for them instead of submitting them twice.

``run_jobs`` then waits for every job (one line as each ends) and returns the
same ``train.parallel.Outcome`` list as the local runner, so ``make all`` goes on
with inference, tuning and the submission in the process that submitted them,
and a later ``make all`` skips the finished runs. Interrupted while waiting, it
leaves the submitted jobs running and prints their ids (``scancel`` stops them).
The repository and the work folder must be on a filesystem the nodes share.

Settings (``ClusterSettings``): the environment, set by make's variables
(``LAUNCHER``, ``PARTITION``, ``TIME``, ``MEM``, ``GPUS``, ``CPUS``, ``ACCOUNT``
-> ``CYTOKIT_LAUNCHER``, ``CYTOKIT_CLUSTER_<NAME>``), on top of a ``cluster:``
mapping of the recipe when it has one. ``submitit-local`` runs the same
submissions as local processes (``submitit.LocalExecutor``: every job at once,
a dependent job submitted when its dependencies have ended): the tests use it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cytocore import config as kit_config
from cytocore import io, paths
from cytocore.config import ConfigError

LAUNCHER_ENV = "CYTOKIT_LAUNCHER"
LAUNCHERS = ("local", "slurm", "submitit-local")  # local: train.parallel on this machine (JOBS= at once)
ENV_PREFIX = "CYTOKIT_CLUSTER_"  # CYTOKIT_CLUSTER_PARTITION=gpu ... (make all PARTITION=gpu)
HEARTBEAT_S = 600.0  # how often it prints the last log line of each job still running
POLL_S = 30.0  # how often the waiting orchestrator asks SLURM about its jobs
RECORD = "jobs.json"  # in submitit's folder: the SLURM id of each job submitted (to re-attach, never twice)
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
          "REQUEUE_HOLD", "REQUEUE_FED")  # SLURM states of a job that will still train


@dataclasses.dataclass
class ClusterSettings:
    """Where and how the training jobs run (``make all LAUNCHER=slurm PARTITION=... TIME=...``)."""

    launcher: str = "local"  # local (train.parallel, JOBS= at once) | slurm | submitit-local (tests)
    partition: str = ""  # SLURM partition; "" = the cluster's default
    time: str = "24:00:00"  # wall-time limit of ONE job: minutes, H:MM:SS or D-HH:MM:SS (requeued after)
    mem: str = ""  # memory of one job in GB ("64" or "64G"); "" = the partition's default
    gpus: int = 1  # GPUs of one job (one fold per GPU; more only for device=0,1 in the overrides)
    cpus: int = 8  # CPU cores of one job (dataloader workers + the trainer)
    account: str = ""  # SLURM account; "" = the user's default
    requeue: int = 3  # times a timed-out or preempted job is resubmitted (it resumes from last.pt)
    extra: dict = dataclasses.field(default_factory=dict)  # further sbatch options, e.g. {constraint: a100}

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"LAUNCHER={self.launcher!r}: valid launchers are {', '.join(LAUNCHERS)}")
        if self.gpus < 0 or self.cpus < 1 or self.requeue < 0:
            raise ConfigError(f"cluster: gpus >= 0, cpus >= 1 and requeue >= 0 are required "
                              f"(gpus={self.gpus}, cpus={self.cpus}, requeue={self.requeue})")
        self.minutes()
        self.mem_gb()

    def minutes(self) -> int:
        """``time`` in whole minutes, read as SLURM reads ``--time`` (minutes, M:SS, H:MM:SS, D-H,
        D-H:MM, D-H:MM:SS; seconds round up)."""
        text = str(self.time).strip()
        m = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text)
        if not m:
            raise ConfigError(f"cluster: TIME={text!r}: give minutes, H:MM:SS or D-HH:MM:SS")
        parts = [int(p) for p in m.group(2).split(":")]
        if m.group(1) is not None:  # days-hours[:minutes[:seconds]]
            parts += [0] * (3 - len(parts))
            h, mins, sec = parts
            total = int(m.group(1)) * 1440 + h * 60 + mins + (sec > 0)
        elif len(parts) == 3:
            total = parts[0] * 60 + parts[1] + (parts[2] > 0)
        elif len(parts) == 2:  # minutes:seconds
            total = parts[0] + (parts[1] > 0)
        else:
            total = parts[0]
        if total < 1:
            raise ConfigError(f"cluster: TIME={text!r} is under a minute")
        return total

    def mem_gb(self) -> int | None:
        """``mem`` in GB, None when unset."""
        text = str(self.mem).strip().upper().removesuffix("B").removesuffix("G")
        if not text:
            return None
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"cluster: MEM={self.mem!r}: give whole GB, e.g. 64 or 64G")
        return int(text)


def settings(section: Mapping[str, Any] | None = None,
             env: Mapping[str, str] | None = None) -> ClusterSettings:
    """The recipe's ``cluster:`` mapping (when it has one) <- the environment (``CYTOKIT_LAUNCHER``,
    ``CYTOKIT_CLUSTER_<FIELD>``: what make's LAUNCHER, PARTITION, TIME, ... set)."""
    env = os.environ if env is None else env
    values = dict(section or {})
    if env.get(LAUNCHER_ENV):
        values["launcher"] = env[LAUNCHER_ENV]
    for f in dataclasses.fields(ClusterSettings):
        given = env.get(ENV_PREFIX + f.name.upper())
        if not given or f.name in ("launcher", "extra"):
            continue
        if f.type == "int" and not given.isdigit():
            raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}={given!r}: a whole number is required")
        values[f.name] = int(given) if f.type == "int" else given
    return kit_config.from_dict(ClusterSettings, values, "cluster")


def resumed_argv(argv: list[str]) -> list[str]:
    """A ``python -m train`` command line that continues its run: ``--resume``, never ``--force`` (a
    requeued retrain must not wipe what its first attempt trained)."""
    out = [a for a in argv if a != "--force"]
    if "--resume" not in out:
        i = out.index("train") + 1 if "train" in out else len(out)
        out.insert(i, "--resume")
    return out


class TrainCommand:
    """The function a submitit job runs: one ``python -m train`` command line, its output appended to
    the run's log (``train.parallel.log_path``), an error when it fails. Requeued after a time-out or a
    preemption as ``--resume`` (submitit's ``Checkpointable`` protocol)."""

    def __call__(self, argv: list[str], log: str) -> dict:
        from train import parallel

        path = Path(log)
        path.parent.mkdir(parents=True, exist_ok=True)
        where = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or "?"
        start, cpu = time.perf_counter(), _children_cpu()
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK") or 0)
        with open(path, "a") as fh:
            fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} job {where} on {os.uname().nodename}: "
                     f"{shlex.join(argv)}\n")
            fh.flush()
            code = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=paths.ROOT, env=parallel.job_env(threads)).returncode
        if code != 0:
            raise RuntimeError(f"exit {code}: {parallel.last_line(path)} -- see {path}")
        return {"returncode": code, "seconds": time.perf_counter() - start,
                "cpu_seconds": _children_cpu() - cpu}

    def checkpoint(self, argv: list[str], log: str) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(TrainCommand(), resumed_argv(argv), log)


def _children_cpu() -> float:
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def job_name(job: Any) -> str:
    """A SLURM job name of a ``train.parallel.Job`` of a member ("yolov8 fold 0" -> "cytokit-yolov8-f0",
    "yolov8m_640 fold 1" -> "cytokit-yolov8m_640-f1")."""
    model, _, fold = job.name.rpartition(" fold ")
    return f"cytokit-{model or job.name}-f{fold}".replace(" ", "_")


def slurm_parameters(s: ClusterSettings, job: Any, after_ids: list[str] = ()) -> dict[str, Any]:
    """``submitit.SlurmExecutor.update_parameters`` keywords of one job; ``after_ids``: the SLURM ids
    of the jobs it waits for (``--dependency=afterany:...``)."""
    extra = {str(k): v for k, v in (s.extra or {}).items()}
    if after_ids:
        extra["dependency"] = "afterany:" + ":".join(str(i) for i in after_ids)
    params: dict[str, Any] = {
        "job_name": job_name(job), "time": s.minutes(), "nodes": 1, "ntasks_per_node": 1,
        "cpus_per_task": s.cpus, "stderr_to_stdout": True, "setup": [f"cd {shlex.quote(str(paths.ROOT))}"],
    }
    if s.gpus:
        params["gpus_per_node"] = s.gpus
    if s.partition:
        params["partition"] = s.partition
    if s.account:
        params["account"] = s.account
    if s.mem_gb():
        params["mem"] = f"{s.mem_gb()}G"
    if extra:
        params["additional_parameters"] = extra
    return params


def local_parameters(s: ClusterSettings, job: Any) -> dict[str, Any]:
    """``submitit.LocalExecutor.update_parameters`` keywords of one job (no dependencies: see
    ``run_jobs``)."""
    return {"timeout_min": s.minutes(), "gpus_per_node": 0, "stderr_to_stdout": True,
            "setup": [f"cd {shlex.quote(str(paths.ROOT))}"]}


def executor(s: ClusterSettings, folder: Path) -> Any:
    """The submitit executor of ``s.launcher`` writing its files in ``folder``."""
    import submitit

    if s.launcher == "submitit-local":
        return submitit.LocalExecutor(folder, max_num_timeout=s.requeue)
    try:
        return submitit.SlurmExecutor(folder, max_num_timeout=s.requeue)
    except RuntimeError as exc:
        raise ConfigError(f"LAUNCHER=slurm: {exc} (run make all LAUNCHER=slurm where sbatch works, or "
                          "leave LAUNCHER unset for local jobs)") from None


def submission_order(jobs: list[Any]) -> list[Any]:
    """The jobs with every job after the ones it names in ``after`` (the plan's order where it can)."""
    names = {j.name for j in jobs}
    unknown = sorted({a for j in jobs for a in j.after} - names)
    if unknown:
        raise ValueError(f"jobs wait for unknown job(s): {', '.join(unknown)}")
    done: list[Any] = []
    left = list(jobs)
    while left:
        ready = [j for j in left if all(a in {d.name for d in done} for a in j.after)]
        if not ready:
            raise ValueError(f"jobs wait for each other: {', '.join(j.name for j in left)}")
        done.append(ready[0])
        left.remove(ready[0])
    return done


def run_jobs(jobs: list[Any], s: ClusterSettings, folder: Path, echo: Callable[[str], None] = print,
             poll_s: float = POLL_S, heartbeat: float = HEARTBEAT_S) -> list[Any]:
    """Submit ``jobs`` (``train.parallel.Job``) with submitit and wait for them; one
    ``train.parallel.Outcome`` per job, in the jobs' order (``train.parallel.run_jobs``' contract).
    A job an earlier ``make all`` submitted with the same command line that SLURM still runs or holds
    (``jobs.json``) is waited for, not submitted again. Every ``heartbeat`` seconds one line per job
    still running: the last line of its log."""
    from train import parallel

    if not jobs:
        echo("no training job to run")
        return []
    order = submission_order(jobs)
    ex = executor(s, folder)
    echo(f"{len(jobs)} training job(s) through submitit ({s.launcher}); logs in {jobs[0].log.parent}, "
         f"submitit's files in {folder}")
    waiting = _Waiting(echo)
    record = Path(folder) / RECORD
    before = _read_record(record) if s.launcher == "slurm" else {}
    try:
        for job in order:
            old = before.get(job.name)  # same name: same run folder, which two jobs must never share
            alive = active_job(folder, old["id"]) if old and old.get("id") else None
            if alive is not None:  # a make all before this one submitted it and it still trains
                waiting.add(job, alive, again=True)
                if _flagless(old.get("argv") or []) != _flagless(job.argv[1:]):
                    echo(f"    its command line differs from the recipe's now: {shlex.join(old['argv'])}; "
                         "the next make all retrains it if its settings differ")
                continue
            if s.launcher == "slurm":
                ex.update_parameters(**slurm_parameters(s, job, [waiting.ids[a] for a in job.after]))
            else:  # the local executor has no dependencies: a dependent job is submitted after its own
                for a in job.after:
                    waiting.collect(a)
                ex.update_parameters(**local_parameters(s, job))
            waiting.add(job, ex.submit(TrainCommand(), [str(a) for a in job.argv], str(job.log)))
            if s.launcher == "slurm":
                before[job.name] = {"id": waiting.ids[job.name], "argv": [str(a) for a in job.argv[1:]]}
                io.atomic_write_text(record, json.dumps(before, indent=1) + "\n")
        beat = time.perf_counter()
        while waiting.running():
            for name in waiting.running():
                if waiting.jobs[name][1].done():
                    waiting.collect(name)
            if waiting.running():
                time.sleep(poll_s)
            if time.perf_counter() - beat >= heartbeat:
                beat = time.perf_counter()
                for name in waiting.running():
                    job, sj, _ = waiting.jobs[name]
                    last = parallel.last_line(job.log) or "no output yet"
                    echo(f"  waiting for {name} (job {sj.job_id}): {last}")
    except BaseException:
        ids = [waiting.ids[n] for n in waiting.running()]
        if ids and s.launcher == "slurm":
            echo(f"stopped waiting; {len(ids)} submitted job(s) go on: {' '.join(ids)} "
                 f"(scancel {' '.join(ids)} stops them; make all again waits for them)")
        raise
    return [waiting.outcomes[j.name] for j in jobs]


class _Waiting:
    """The submitted jobs, their submit times and the outcomes of those that ended."""

    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo
        self.jobs: dict[str, tuple[Any, Any, float]] = {}  # name -> (parallel.Job, submitit job, submitted)
        self.ids: dict[str, str] = {}
        self.outcomes: dict[str, Any] = {}

    def add(self, job: Any, sj: Any, again: bool = False) -> None:
        self.jobs[job.name] = (job, sj, time.perf_counter())
        self.ids[job.name] = str(sj.job_id)
        if again:
            self.echo(f"  {job.name}: job {sj.job_id} (submitted by an earlier make all) still runs; waiting "
                      f"for it, not submitting it again (log {job.log})")
            return
        wait = f" after {', '.join(job.after)}" if job.after else ""
        self.echo(f"  submitted {job.name} as job {sj.job_id}{wait} (log {job.log})")

    def running(self) -> list[str]:
        return [n for n in self.jobs if n not in self.outcomes]

    def collect(self, name: str) -> None:
        """Wait for the job ``name`` and record its ``train.parallel.Outcome`` (once)."""
        from train import parallel

        if name in self.outcomes:
            return
        job, sj, submitted = self.jobs[name]
        try:
            result = sj.result()
            out = parallel.Outcome(name, "ok", result["returncode"], result["seconds"],
                                   result["cpu_seconds"], job.log, parallel.last_line(job.log))
            self.echo(f"  done {name} (job {sj.job_id}) in {out.seconds:.0f} s")
        except Exception as exc:  # a failed job is an outcome; the others go on
            text = str(exc).strip().splitlines()
            line = parallel.last_line(job.log) or (text[-1] if text else type(exc).__name__)
            out = parallel.Outcome(name, "failed", None, time.perf_counter() - submitted, 0.0, job.log, line)
            self.echo(f"  FAILED {name} (job {sj.job_id}): {line} -- see {job.log}")
        self.outcomes[name] = out


def _flagless(argv: list[str]) -> list[str]:
    return [str(a) for a in argv if a not in ("--resume", "--force")]


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def active_job(folder: Path, job_id: str) -> Any | None:
    """The submitit handle of SLURM job ``job_id`` when SLURM still runs or holds it, else None."""
    import submitit

    sj = submitit.SlurmJob(folder=folder, job_id=str(job_id))
    try:
        state = str(sj.get_info(mode="force").get("State") or "").split()[0] if sj else ""
    except Exception:  # sacct missing or failing: treat it as gone (it is submitted again)
        return None
    return sj if state in ACTIVE else None


def launcher(recipe: Any = None, env: Mapping[str, str] | None = None) -> ClusterSettings:
    """The settings of this run: the recipe's ``cluster`` mapping (when the recipe has one) <- env."""
    return settings(getattr(recipe, "cluster", None), env)


def folder_of(ds: Any) -> Path:
    """submitit's files of the dataset ``ds``: ``work/logs/<dataset id>/submitit/``."""
    return paths.logs_dir(ds.id) / "submitit"

