"""Training jobs as parallel subprocesses: threads split on CPU, one GPU per job on GPU machines.

    python -m train --model yolov8 --fold all --jobs 2 [--resume] [k=v ...]   (make train FOLD=all JOBS=2)

``run_jobs(jobs, n)`` runs ``Job``s (one ``python -m train`` call each) ``n`` at
a time, each with its own log file; a job starts once the jobs it names in
``after`` have ended (whatever their outcome: a classifier whose detector failed
validates on ground-truth crops instead). A failing job is reported with its
log path and its last line, the others go on. ``make all`` (``pipeline.run``)
uses the same runner for every member x fold.

CPU threads: with ``n > 1`` each job gets ``threads`` (default ``cores // n``)
through ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and ``CYTOKIT_THREADS``, which
``apply_threads`` turns into ``torch.set_num_threads`` in the job. Ultralytics
would otherwise reset torch to its own count (cores - 1, so ONE thread on a
2-core machine) when it selects the device, and the torchvision loop to the same
(``train.dist.set_cpu_threads``). One job at a time (``n == 1``, ``threads``
0) keeps that count: on a 2-core machine one YOLOv8n job with 2 threads was
slower than with 1 (``python -m bench jobs``); the second core pays off as a
second job. A job with several threads waits passively between parallel
regions (``OMP_WAIT_POLICY=PASSIVE`` unless set): OpenMP's default spinning turns
any other load on the machine into lost time (one YOLOv8n fold with 2 threads on
a 2-core machine at load 13: 250 s wall and 82 s CPU spinning, 30 s and 10 s
passive, 29 s and 10 s with 1 thread).

GPUs: with ``n > 1`` and visible GPUs, job slot ``s`` sees only GPU
``gpus[s % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``), so ``JOBS=4`` on a 4-GPU box
trains four folds at once, one per GPU, and ``JOBS=8`` puts two jobs on each.
With ``n == 1`` the job sees every GPU (``device=0,1`` multi-GPU training works).

Stopping: each job starts in its own session (its own process group), so Ctrl-C or SIGTERM to the runner
(a scheduler's preemption) reaches the runner alone, and the runner then stops every running job's whole
group (the job, ultralytics' DDP workers, dataloader workers): SIGTERM, SIGKILL after ``STOP_GRACE_S``.
A job that ends leaves nothing running either. The stopped jobs resume on the next run.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cytocore.resources import JOBS_ENV

log = logging.getLogger("train")

THREADS_ENV = "CYTOKIT_THREADS"  # CPU threads of one job, set by run_jobs, read by apply_threads
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", THREADS_ENV)
POLL_S = 0.2  # how often the runner checks its jobs
HEARTBEAT_S = 45.0  # how often it prints jobs done/total, the overall ETA and each running job's epoch
STOP_GRACE_S = 30.0  # seconds a stopped job's process group has between SIGTERM and SIGKILL


@dataclasses.dataclass
class Job:
    """One subprocess: a name, its command line and its log file."""

    name: str  # e.g. "yolov8 fold 0" (unique among the jobs of one run)
    argv: list[str]  # the full command line
    log: Path  # stdout and stderr of the job (appended: a resumed job keeps its history)
    after: tuple[str, ...] = ()  # names of jobs that must end before this one starts
    run_dir: Path | None = None  # its run folder: the heartbeat reads epoch i/N and s/epoch there
    epochs: int = 0  # epochs it trains in all (0: unknown; the heartbeat shows its last log line)


@dataclasses.dataclass
class Outcome:
    """What became of one job."""

    name: str
    status: str  # ok | failed
    returncode: int | None
    seconds: float  # wall time of the job
    cpu_seconds: float  # user + system CPU time of the job (its children included)
    log: Path
    last_line: str = ""  # the log's last line (the one-line error of a failed job)


def cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_job(n_jobs: int, threads: int = 0, n_cores: int | None = None) -> int:
    """``threads`` when set; else with several jobs the cores split evenly over them (at least 1);
    else 0: one job at a time keeps the trainer's own choice (ultralytics: cores - 1, at most 8)."""
    if threads > 0:
        return threads
    return max(1, (n_cores or cores()) // n_jobs) if n_jobs > 1 else 0


def visible_gpus() -> list[str]:
    """GPU ids a job may be given: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def passive_wait() -> None:
    """Make OpenMP threads of this process wait passively (unless the user set a policy); call it before
    torch is imported. The orchestrator predicts in its own process with every core: spinning threads
    there made a YOLOv8n forward pass 15-20x slower at load 5 on 2 cores (27 s vs 1.8 s passive)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def job_env(threads: int, gpu: str | None = None, jobs: int = 1) -> dict[str, str]:
    """The environment of a job: this one, with its thread count (0: left as it is), (when
    given) its one GPU and the number of jobs at once (``CYTOKIT_JOBS``: its share of cores,
    memory and /dev/shm, ``cytocore.resources``)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", JOBS_ENV: str(max(1, jobs))}
    if threads > 0:
        env.update({var: str(threads) for var in THREAD_VARS})
    if threads > 1:  # unless the user chose a policy: see the module doc
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def apply_threads() -> int | None:
    """In a job: torch's CPU threads (and ultralytics' count) from ``CYTOKIT_THREADS``; None when unset."""
    n = int(os.environ.get(THREADS_ENV) or 0)
    if n <= 0:
        return None
    import torch

    torch.set_num_threads(n)
    try:
        import ultralytics.utils
        import ultralytics.utils.torch_utils
    except ImportError:
        log.info("CPU threads of this job: %d (%s)", n, THREADS_ENV)
        return n
    # select_device() calls torch.set_num_threads(NUM_THREADS) when training starts on CPU.
    ultralytics.utils.NUM_THREADS = ultralytics.utils.torch_utils.NUM_THREADS = n
    log.info("CPU threads of this job: %d (%s)", n, THREADS_ENV)
    return n


def last_line(path: Path, size: int = 4096) -> str:
    """The last non-empty line of a text file (progress bars' carriage returns split lines too)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - size))
            tail = fh.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [x.strip() for x in tail.replace("\r", "\n").split("\n") if x.strip()]
    return lines[-1] if lines else ""


class _Running:
    def __init__(self, job: Job, slot: int, env: dict[str, str]):
        self.job, self.slot, self.start = job, slot, time.perf_counter()
        job.log.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log, "a") as fh:  # the child writes through its own copy of the descriptor
            fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(job.argv)}\n")
            fh.flush()
            # its own session, so its process group holds everything it starts (ultralytics' DDP workers,
            # dataloader workers): ``stop`` signals the group, not only the direct child
            self.proc = subprocess.Popen(job.argv, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def poll(self) -> Outcome | None:
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return None
        code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = code  # reaped here (with its CPU time); Popen must not wait again
        if _group_alive(self.proc.pid):  # what it started and left running ends with it
            signal_group(self.proc.pid, signal.SIGTERM)
            log.warning("%s: ended and left processes running in its group; sent them SIGTERM", self.job.name)
        return Outcome(self.job.name, "ok" if code == 0 else "failed", code, time.perf_counter() - self.start,
                       usage.ru_utime + usage.ru_stime, self.job.log, last_line(self.job.log))

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM to the job's whole process group (its children and theirs: DDP workers, dataloader
        workers), then SIGKILL to what is left of the group after ``grace`` seconds."""
        if self.proc.returncode is None:
            signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # grandchildren that outlived the job (or ignored SIGTERM): the group ends with it
        if _group_alive(self.proc.pid):
            signal_group(self.proc.pid, signal.SIGTERM)
            deadline = time.perf_counter() + grace
            while _group_alive(self.proc.pid) and time.perf_counter() < deadline:
                time.sleep(0.05)
            signal_group(self.proc.pid, signal.SIGKILL)


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to process group ``pgid`` (a job started in its own session: its pid); False when
    the group has no process left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """True while process group ``pgid`` has a live member (zombies, which only wait for their parent or
    init to reap them, do not count); without /proc, while the group can be signalled."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return signal_group(pgid, 0)
    for stat in proc.glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(group) == pgid and state != "Z":
            return True
    return False


def run_jobs(jobs: list[Job], n: int = 1, threads: int = 0, gpus: list[str] | None = None,
             echo=print, heartbeat: float = HEARTBEAT_S) -> list[Outcome]:
    """Run ``jobs``, ``n`` at a time (dependencies first); one ``Outcome`` per job, in the jobs' order.

    ``threads``: CPU threads per job (0: cores // n; for ``n == 1`` the trainer's own). ``gpus``: GPU ids
    for the slots when ``n > 1`` (None: the visible ones; [] : none). ``echo`` prints
    one line when a job starts and when it ends, and every ``heartbeat`` seconds
    the last log line of each running job.
    """
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique: {names}")
    unknown = sorted({a for j in jobs for a in j.after} - set(names))
    if unknown:
        raise ValueError(f"jobs wait for unknown job(s): {', '.join(unknown)}")
    n = max(1, n)
    per_job = threads_per_job(n, threads)
    gpus = (visible_gpus() if gpus is None else list(gpus)) if n > 1 else []
    where = f"GPU(s) {','.join(gpus)}" if gpus else \
        f"{per_job} CPU thread(s) each" if per_job else "CPU threads as the trainer picks them"
    echo(f"{len(jobs)} training job(s), {n} at a time, {where}; logs in {jobs[0].log.parent}" if jobs
         else "no training job to run")
    pending, running, ended = list(jobs), {}, {}
    previous = _stop_on_sigterm()
    beat = started = time.perf_counter()
    try:
        while pending or running:
            free = [s for s in range(n) if s not in running]
            for job in [j for j in pending if all(a in ended for a in j.after)]:
                if not free:
                    break
                slot = free.pop(0)
                gpu = gpus[slot % len(gpus)] if gpus else None
                running[slot] = _Running(job, slot, job_env(per_job, gpu, min(n, len(jobs))))
                pending.remove(job)
                echo(f"  start {job.name}" + (f" on GPU {gpu}" if gpu else "") + f" (log {job.log})")
            if not running:
                raise RuntimeError(f"jobs wait for each other: {', '.join(j.name for j in pending)}")
            time.sleep(POLL_S)
            if time.perf_counter() - beat >= heartbeat:
                beat = time.perf_counter()
                for text in heartbeat_lines(list(running.values()), pending, len(ended), len(jobs), n,
                                            beat - started):
                    echo(text)
            for slot, r in list(running.items()):
                out = r.poll()
                if out is not None:
                    del running[slot]
                    ended[out.name] = out
                    echo(f"  {'done' if out.status == 'ok' else 'FAILED'} {out.name} in {out.seconds:.0f} s"
                         + ("" if out.status == "ok" else f" (exit {out.returncode}): {out.last_line} "
                                                          f"-- see {out.log}"))
    finally:
        for r in running.values():  # every group first, then each in turn gets its grace
            signal_group(r.proc.pid, signal.SIGTERM)
        for r in running.values():
            r.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return [ended[name] for name in names]


def _state(job: Job):
    from train import progress

    model = job.name.rpartition(" fold ")[0] or job.name
    if job.run_dir is None or job.epochs <= 0:
        return progress.JobState(job.name, model, max(1, job.epochs))
    return progress.job_state(job.name, model, job.run_dir, job.epochs)


def heartbeat_lines(running: list, pending: list[Job], finished: int, total: int, slots: int,
                    elapsed_s: float) -> list[str]:
    """``[3/10 jobs done, 42 min elapsed, overall ETA 2 h 10 min]`` then one line per running job: its
    epoch i/N, s/epoch and ETA from its metrics.csv, else (no epoch yet) the last line of its log."""
    from train import progress

    states = [_state(r.job) for r in running]
    head = (f"  [{finished}/{total} jobs done, {progress.duration(elapsed_s)} elapsed, overall ETA "
            f"{progress.duration(progress.overall(states, [_state(j) for j in pending], slots))}]")
    out = [head]
    for r, state in zip(running, states):
        text = progress.job_text(state) if state.done else f"{r.job.name}: {last_line(r.job.log)}"
        out.append(f"    {text}"[:120])
    return out


def _stop_on_sigterm():
    """Make SIGTERM (a scheduler's preemption, ``kill``) end the runner through its ``finally``, which
    stops the running jobs (they resume next time); the previous handler (None off the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def train_argv(model: str, fold: int, data: Path, k: int, seed: int, overrides: list[str] | tuple = (),
               resume: bool = True, force: bool = False, name: str = "") -> list[str]:
    """The ``python -m train`` command line of one member (``model``, named ``name`` when it differs)
    and fold."""
    flags = (["--resume"] if resume else []) + (["--force"] if force else [])
    named = ["--name", name] if name and name != model else []
    return [sys.executable, "-m", "train", "--model", model, *named, "--fold", str(fold), "--data", str(data),
            "--k", str(k), "--seed", str(seed), *flags, *[str(o) for o in overrides]]


def log_path(ds, name: str, fold: int) -> Path:
    """The log file of the member ``name`` fold ``fold`` of the prepared dataset ``ds``."""
    from cytocore import paths

    return paths.logs_dir(ds.id) / f"{name}_fold{fold}.log"


def format_outcomes(outcomes: list[Outcome]) -> str:
    """A plain table of the outcomes (the failures with their log path)."""
    lines = [f"  {'job':<24} {'status':<8} {'wall s':>8} {'CPU s':>8}  log"]
    for o in outcomes:
        lines.append(f"  {o.name:<24} {o.status:<8} {o.seconds:8.0f} {o.cpu_seconds:8.0f}  {o.log}")
    return "\n".join(lines)


def train_folds(model: str, fold: str, data: Path, k: int | None, seed: int | None, overrides: list[str],
                n: int, resume: bool = False, force: bool = False, name: str = "") -> int:
    """``python -m train --jobs N``: the folds of ``model`` (member ``name``, default the model) as
    parallel jobs; 1 when one failed."""
    from cytocore import dataset, members
    from train import registry
    from train.job import folds_of

    registry.check_name(model)
    name = members.member_name(name, model, "--name")
    ds = dataset.resolve(data, k, seed)
    argv = functools.partial(train_argv, model, data=ds.data, k=ds.k, seed=ds.seed, overrides=overrides,
                             resume=resume, force=force, name=name)
    jobs = [Job(f"{name} fold {f}", argv(fold=f), log_path(ds, name, f)) for f in folds_of(str(fold), ds.k)]
    start = time.perf_counter()
    outcomes = run_jobs(jobs, n)
    print(format_outcomes(outcomes))
    print(f"{len(jobs)} job(s) in {time.perf_counter() - start:.0f} s wall, "
          f"{sum(o.cpu_seconds for o in outcomes):.0f} s CPU")
    failed = [o for o in outcomes if o.status != "ok"]
    for o in failed:
        print(f"FAILED {o.name}: {o.last_line} -- see {o.log}", file=sys.stderr)
    return 1 if failed else 0
