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
- ``job_share(jobs)``: the cores and memory of one of ``jobs`` training jobs run at once.

The files and variables are read through ``Limits(root=..., env=...)`` so tests can
simulate a cgroup or a SLURM job on any machine.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

GIB = 1024 ** 3
MIB = 1024 ** 2
NO_LIMIT = 1 << 60  # cgroup v1 reports "no limit" as a huge number (9223372036854771712)


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
        shm = self.root / "dev" / "shm"
        try:
            return shutil.disk_usage(shm).free
        except OSError:
            return None


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


def job_count() -> int:
    """Training jobs at once as the orchestrator set it for its children (``CYTOKIT_JOBS``), else 1."""
    value = os.environ.get("CYTOKIT_JOBS", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def capped_workers(requested: int, limits: Limits | None = None) -> int:
    """DataLoader workers for one job: ``requested``, at most the job's share of cores less one for the
    main process (ultralytics doubles workers for validation; each worker is a process)."""
    share = job_share(job_count(), limits)
    return max(0, min(int(requested), share.cores - 1 if share.cores > 1 else 0))


def fmt_bytes(n: float) -> str:
    """``n`` bytes as GiB or MiB, for messages."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"
