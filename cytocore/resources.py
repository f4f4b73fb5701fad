"""What this process may really use: cores, memory and shared memory, as the job sees them.

A GPU node has 64 cores and 512 GiB, but a SLURM job or a container gets a share:
``os.cpu_count()`` and ``/proc/meminfo`` report the node, not the share. Every
step that sizes workers, threads or caches asks here instead:

- ``cpu_cores()``: the CPU affinity mask (``taskset``, SLURM's cpusets), the cgroup
  CPU quota (``cpu.max`` v2, ``cpu.cfs_quota_us`` v1) and ``SLURM_CPUS_PER_TASK``,
  the smallest of those that are set;
- ``memory_bytes()``: physical memory, the cgroup limit (``memory.max`` v2,
  ``memory.limit_in_bytes`` v1) and SLURM's ``SLURM_MEM_PER_NODE`` /
  ``SLURM_MEM_PER_CPU`` (MiB), the smallest;
- ``shm_bytes()``: the free space of ``/dev/shm`` (Docker's default is 64 MiB,
  where PyTorch DataLoader workers die with "Bus error");
- ``job_share(jobs)``: the cores and memory of one of ``jobs`` training jobs run at once;
- ``capped_workers(requested, ...)``: THE cap of every family's DataLoader workers: the job's
  share of cores (``CYTOKIT_JOBS`` jobs at once, set by ``train.parallel``; torchrun's ranks),
  then its share of /dev/shm (fewer workers and one warning naming ``--shm-size`` instead of
  workers killed by "Bus error");
- ``cache_budget(share)``: bytes a job's in-memory cache may hold (``share`` of its memory).

The files and variables are read through ``Limits(root=..., env=...)`` so tests can
simulate a cgroup or a SLURM job on any machine.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

GIB = 1024 ** 3
MIB = 1024 ** 2
NO_LIMIT = 1 << 60  # cgroup v1 reports "no limit" as a huge number (9223372036854771712)
JOBS_ENV = "CYTOKIT_JOBS"  # training jobs run at once, set by train.parallel for each job
SHM_USE = 0.8  # share of a job's /dev/shm its DataLoader workers may fill (the rest: torch, other users)


@dataclasses.dataclass(frozen=True)
class Share:
    """What one job may use: CPU cores and bytes of memory."""

    cores: int
    memory: int


@dataclasses.dataclass
class Limits:
    """Reads the limits from ``root`` (``/`` on a real machine) and ``env`` (``os.environ``)."""

    root: Path = Path("/")
    env: Mapping[str, str] | None = None
    affinity: int | None = None  # cores in the affinity mask; None = ask the OS

    def _env(self) -> Mapping[str, str]:
        return os.environ if self.env is None else self.env

    def _read(self, relative: str) -> str | None:
        try:
            return (self.root / relative).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None

    def _cgroup_paths(self, controller: str) -> list[str]:
        """Folders of this process's cgroup (v2 unified, or the v1 ``controller``), innermost first, and
        the mount root (a container sees its own cgroup there)."""
        out = []
        text = self._read("proc/self/cgroup") or ""
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, path = parts
            names = controllers.split(",") if controllers else []
            if not names:  # v2
                base = "sys/fs/cgroup"
            elif controller in names:
                base = f"sys/fs/cgroup/{controllers}"
            else:
                continue
            path = path.strip("/")
            while path:
                out.append(f"{base}/{path}")
                path = path.rpartition("/")[0]
            out.append(base)
        if not out:
            out = ["sys/fs/cgroup", f"sys/fs/cgroup/{controller}"]
        return out

    def cgroup_cores(self) -> float | None:
        """The CPU quota in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``)."""
        for folder in self._cgroup_paths("cpu,cpuacct") + self._cgroup_paths("cpu"):
            v2 = self._read(f"{folder}/cpu.max")
            if v2:
                quota, _, period = v2.partition(" ")
                if quota != "max" and period:
                    return int(quota) / int(period)
            quota = self._read(f"{folder}/cpu.cfs_quota_us")
            period = self._read(f"{folder}/cpu.cfs_period_us")
            if quota and period and int(quota) > 0:
                return int(quota) / int(period)
        return None

    def cgroup_memory(self) -> int | None:
        """The cgroup memory limit in bytes (v2 ``memory.max``, v1 ``memory.limit_in_bytes``)."""
        found = []
        for folder in self._cgroup_paths("memory"):
            for name in ("memory.max", "memory.limit_in_bytes"):
                value = self._read(f"{folder}/{name}")
                if value and value != "max" and value.isdigit() and int(value) < NO_LIMIT:
                    found.append(int(value))
        return min(found) if found else None

    def physical_memory(self) -> int:
        text = self._read("proc/meminfo") or ""
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 8 * GIB

    def slurm_memory(self) -> int | None:
        env = self._env()
        if env.get("SLURM_MEM_PER_NODE", "").isdigit():
            return int(env["SLURM_MEM_PER_NODE"]) * MIB
        per_cpu = env.get("SLURM_MEM_PER_CPU", "")
        if per_cpu.isdigit():
            cpus = env.get("SLURM_CPUS_PER_TASK") or env.get("SLURM_CPUS_ON_NODE") or "1"
            return int(per_cpu) * MIB * (int(cpus) if cpus.isdigit() else 1)
        return None

    def cpu_cores(self) -> int:
        """Cores this process may run on: the smallest of affinity, cgroup quota and SLURM's count."""
        if self.affinity is not None:
            counts = [self.affinity]
        else:
            try:
                counts = [len(os.sched_getaffinity(0))]
            except (AttributeError, OSError):
                counts = [os.cpu_count() or 1]
        quota = self.cgroup_cores()
        if quota:
            counts.append(max(1, math.floor(quota)))
        slurm = self._env().get("SLURM_CPUS_PER_TASK", "")
        if slurm.isdigit() and int(slurm) > 0:
            counts.append(int(slurm))
        return max(1, min(counts))

    def memory_bytes(self) -> int:
        """Memory this process may use: the smallest of physical memory, cgroup limit and SLURM's."""
        values = [self.physical_memory(), self.cgroup_memory(), self.slurm_memory()]
        return min(v for v in values if v)

    def memory_source(self) -> str:
        """Which limit ``memory_bytes`` comes from, for messages."""
        value = self.memory_bytes()
        if value == self.slurm_memory():
            return "SLURM job"
        if value == self.cgroup_memory():
            return "cgroup"
        return "physical memory"

    def shm_bytes(self) -> int | None:
        """Free bytes of /dev/shm (None where there is none, e.g. macOS)."""
        usage = self._shm_usage()
        return None if usage is None else usage.free

    def _shm_usage(self):
        try:
            return shutil.disk_usage(self.root / "dev" / "shm")
        except OSError:
            return None

    def shm_share(self, jobs: int = 1) -> int | None:
        """Bytes of /dev/shm for one of ``jobs`` jobs at once: its free space, at most size / ``jobs``
        (the jobs started one after the other would each see the whole free space)."""
        usage = self._shm_usage()
        if usage is None:
            return None
        return min(usage.free, usage.total // max(1, jobs))

    def job_count(self) -> int:
        """Training jobs at once as the orchestrator set it for its children (``CYTOKIT_JOBS``), else 1."""
        value = str(self._env().get(JOBS_ENV, "1")).strip()
        return int(value) if value.isdigit() and int(value) > 0 else 1

    def ranks(self) -> int:
        """Processes of this job on this node: torchrun's ``LOCAL_WORLD_SIZE`` (1 outside torchrun)."""
        value = str(self._env().get("LOCAL_WORLD_SIZE", "1")).strip()
        return int(value) if value.isdigit() and int(value) > 0 else 1


def default_limits() -> Limits:
    return Limits()


def cpu_cores(limits: Limits | None = None) -> int:
    return (limits or default_limits()).cpu_cores()


def memory_bytes(limits: Limits | None = None) -> int:
    return (limits or default_limits()).memory_bytes()


def shm_bytes(limits: Limits | None = None) -> int | None:
    return (limits or default_limits()).shm_bytes()


def job_share(jobs: int = 1, limits: Limits | None = None) -> Share:
    """The cores and memory of one of ``jobs`` jobs run at once on this process's share of the machine."""
    limits = limits or default_limits()
    jobs = max(1, int(jobs))
    return Share(cores=max(1, limits.cpu_cores() // jobs), memory=limits.memory_bytes() // jobs)


def job_count(limits: Limits | None = None) -> int:
    """Training jobs at once as the orchestrator set it for its children (``CYTOKIT_JOBS``), else 1."""
    return (limits or default_limits()).job_count()


def loader_shm_bytes(batch: int, imgsz: int, prefetch: int = 2, channels: int = 3, itemsize: int = 4) -> int:
    """/dev/shm one DataLoader worker fills: ``prefetch`` batches of ``batch`` x ``channels`` x
    ``imgsz``^2 values of ``itemsize`` bytes (torch hands each batch to the main process there)."""
    return int(prefetch) * int(batch) * int(channels) * int(imgsz) ** 2 * int(itemsize)


def cache_budget(share: float, limits: Limits | None = None) -> int:
    """Bytes an in-memory cache of one job may hold: ``share`` of the job's memory (the cgroup / SLURM
    limit, not the machine's RAM, divided by the ``CYTOKIT_JOBS`` jobs at once)."""
    limits = limits or default_limits()
    return int(share * job_share(limits.job_count(), limits).memory)


def capped_workers(requested: int, limits: Limits | None = None, *, multiple: int = 1,
                   shm_per_worker: int = 0, what: str = "DataLoader") -> int:
    """THE cap of DataLoader workers for one job (every family calls it).

    ``requested`` workers, at most the job's share of cores (``CYTOKIT_JOBS`` jobs, torchrun's ranks)
    less one for the main process, divided by ``multiple`` (how many times the trainer starts
    ``requested`` workers at once: 2 for ultralytics, whose validation loader doubles them) and at
    least 1 when the share has a core to spare. Then /dev/shm: when ``shm_per_worker`` bytes (what one
    unit of ``requested`` fills, all loaders together) times the workers exceed ``SHM_USE`` of the job's
    share of /dev/shm, fewer workers (0: the main process loads, no shared memory) and one warning that
    names ``--shm-size``. torch's ``file_system`` sharing strategy would not help: it too lives in /dev/shm.
    """
    limits = limits or default_limits()
    requested = max(0, int(requested))
    jobs, ranks = limits.job_count(), limits.ranks()
    cores = max(1, job_share(jobs, limits).cores // ranks)
    spare = cores - 1
    by_cores = max(1, spare // max(1, multiple)) if spare > 0 else 0
    workers = min(requested, by_cores)
    if workers < requested:
        log.info("%s workers: %d of the %d asked (this job's share: %d core(s), %d job(s) at once%s)", what,
                 workers, requested, cores, jobs, f", {ranks} ranks" if ranks > 1 else "")
    shm = limits.shm_share(jobs * ranks) if shm_per_worker > 0 and workers > 0 else None
    if shm is not None and workers * shm_per_worker > SHM_USE * shm:
        fit = min(workers, int(SHM_USE * shm // shm_per_worker))
        need = workers * shm_per_worker * jobs * ranks / SHM_USE
        log.warning("/dev/shm: %s for this job; %d %s workers need ~%s: using %d (give the container more, "
                    "e.g. docker run --shm-size=%dg, or set workers=%d)", fmt_bytes(shm), workers, what,
                    fmt_bytes(workers * shm_per_worker), fit, max(1, math.ceil(need / GIB)), fit)
        workers = fit
    return workers


def fmt_bytes(n: float) -> str:
    """``n`` bytes as GiB or MiB, for messages."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"
