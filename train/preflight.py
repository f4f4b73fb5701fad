"""The pre-flight of ``make train``, and the training-level checks the pre-flight of ``make all``
(``pipeline.preflight``: the recipe, its ensemble section, test.csv) builds on: what would fail or
silently run worse hours later, checked in seconds before any run folder or training job.

- **weights**: a member that starts from a pretrained file (``train.weights.needs``) has it; a missing
  one names ``make weights RECIPE=...`` and ``pretrained=none`` (scratch on purpose);
- **device**: a member (or the ensemble) asking for CUDA where ``torch.cuda.is_available()`` is False,
  or ``device`` auto on a machine with an NVIDIA GPU that torch cannot use (no silent CPU training):
  a CPU build of torch, a driver older than the build's CUDA needs, a GPU architecture the build
  has no kernels for; each with its fix (the README's "GPU machines": the wheel to install);
- **disk**: free space of the work folder against an estimate of the run's outputs;
- **/dev/shm**: DataLoader workers x batches in flight against its free space (Docker's 64 MiB);
- **memory**: the jobs run at once, each with its caches, against what this process may use
  (``cytocore.resources.Limits``: cgroup and SLURM limits, not the node's RAM).

Every problem is one line; ``check_training`` raises ``PreflightError`` (a ``ConfigError``:
``cytocore.io.cli`` prints the lines and exits 1, no traceback) when there is any. ``CYTOKIT_PREFLIGHT=off``
skips it; a run that passed the pre-flight of ``make all`` sets ``CYTOKIT_PREFLIGHT=done`` for its
training jobs, which then skip their own. The estimates are rough on purpose (a margin over measured
sizes, see the constants): the pre-flight refuses what cannot fit, it does not tune.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Any

from cytocore import paths, resources
from cytocore.config import ConfigError
from cytocore.resources import GIB, Limits, fmt_bytes

ENV = "CYTOKIT_PREFLIGHT"  # off: skip the pre-flight; done: set for the jobs of a run that passed it
README_GPU = "README, 'GPU machines'"
ENSEMBLE = "ensemble (inference)"  # the device target of a recipe's ensemble section (pipeline.preflight)
# Minimum Linux driver of each CUDA major version (NVIDIA's CUDA release notes, "minor version
# compatibility"): a torch built for CUDA 13 needs driver >= 580.65.06.
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
OLDER_WHEEL = "https://download.pytorch.org/whl/cu126"  # CUDA 12.6 builds: drivers >= 525, sm_50 to sm_90
RUN_BYTES = GIB // 2  # disk per member x fold: best/last weights, plots, metrics, OOF and test tables
BASE_BYTES = GIB  # disk of the run besides: exports, label caches, ensemble predictions, report
JOB_BYTES = GIB  # RAM of one training process before caches (torch, the trainer, its model)
WORKER_BYTES = GIB // 4  # RAM of each DataLoader worker process
MAIN_BYTES = GIB  # RAM of the orchestrating process while the jobs train
PREFETCH = 2  # batches in flight per DataLoader worker (torch's prefetch_factor default)
CROP_BYTES = 3 * 200 * 200  # cached pixels of one crop (median box 80-190 px + margin and jitter, RGB)
IMAGE_BYTES = 3 * 360 * 363  # decoded pixels of one challenge image (docs/CHALLENGE.md: ~360 px)


class PreflightError(ConfigError):
    """Every problem of the pre-flight, one line each, and a last line saying nothing was started."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join([*self.problems, f"pre-flight: {len(self.problems)} problem(s); nothing "
                                    "was started (fix them and run again)"]))


@dataclasses.dataclass
class Member:
    """One model of the run as its training jobs will see it."""

    model: str  # registry name
    cfg: Any  # its resolved config (configs/<family>.yaml <- overrides)
    folds: int  # its training jobs (folds)
    overrides: list[str] = dataclasses.field(default_factory=list)
    name: str = ""  # the member's name (cytocore.members); "" = the model

    def __post_init__(self) -> None:
        from cytocore import members

        self.name = members.member_name(self.name, self.model)


@dataclasses.dataclass
class DataFacts:
    """What the resource estimates need to know of the data (0: unknown, e.g. synthetic data to make)."""

    images: int = 0  # train images
    boxes: int = 0  # train boxes


def enabled() -> bool:
    """False when ``CYTOKIT_PREFLIGHT`` is ``off`` (skip) or ``done`` (a job of a run that passed it)."""
    return os.environ.get(ENV, "").strip().lower() not in ("off", "done", "0", "false")


# ---- pretrained weights ----

def weights_problems(members: list[Member], recipe_path: Path | None = None, auto: bool = True) -> list[str]:
    """A line per member whose pretrained file is missing (``auto``: also the catalogue files that
    ``pretrained: auto`` would silently do without)."""
    from train.weights import needs

    recipe = f" RECIPE={recipe_path}" if recipe_path else ""
    problems = []
    for m in members:
        need = needs.member_need(m.model, m.overrides)
        if need is None or need.file.is_file():
            continue
        if need.entry is None:
            problems.append(f"{m.name}: pretrained={need.file}: file not found (a local file; "
                            "pretrained=auto takes the catalogue's, pretrained=none trains from scratch)")
        elif auto:
            problems.append(f"{m.name}: starts from {need.entry.name} ({need.entry.about}) but "
                            f"{need.file} is missing: run `make weights{recipe}`, or add pretrained=none to "
                            "its overrides to train from scratch on purpose")
    return problems


# ---- the device ----

def _kind(spec: object) -> str:
    text = "" if spec is None else str(spec).strip().lower()
    if text in ("", "auto"):
        return "auto"
    if text == "cpu" or text.startswith("mps"):
        return "cpu"
    return "cuda"


def nvidia_driver(root: Path = Path("/")) -> str | None:
    """The NVIDIA kernel driver's version (``/proc/driver/nvidia/version``), or None."""
    try:
        text = (root / "proc" / "driver" / "nvidia" / "version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module.*?\s(\d{3,}\.\d+(?:\.\d+)?)\s", text + " ")
    return found.group(1) if found else None


def nvidia_visible(root: Path = Path("/")) -> bool:
    """True when this machine shows an NVIDIA GPU driver: ``/proc/driver/nvidia``, ``/dev/nvidia0`` or
    ``nvidia-smi`` on the PATH (the latter on the real root only)."""
    if (root / "proc" / "driver" / "nvidia").exists() or (root / "dev" / "nvidia0").exists():
        return True
    return root == Path("/") and shutil.which("nvidia-smi") is not None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def _wheel_fix(torch_version: str) -> str:
    base = torch_version.partition("+")[0]
    return (f"see the {README_GPU}: update the NVIDIA driver, or install a torch {base} wheel built for an "
            f"older CUDA (pip install torch=={base} --index-url {OLDER_WHEEL}, with its torchvision)")


def _why_no_cuda(torch: Any, root: Path) -> str:
    """Why ``torch.cuda.is_available()`` is False, in words, with the fix."""
    build = getattr(torch.version, "cuda", None)
    if not build:
        return (f"this torch {torch.__version__} is a CPU build; install the CUDA build of requirements.txt "
                f"({README_GPU})")
    driver = nvidia_driver(root)
    if driver is None and not nvidia_visible(root):
        return "no NVIDIA GPU or driver is visible here (/proc/driver/nvidia, nvidia-smi)"
    needed = MIN_DRIVER.get(_version(build)[0])
    if driver and needed and _version(driver) < _version(needed):
        return (f"the NVIDIA driver {driver} is older than torch {torch.__version__}'s CUDA {build} needs "
                f"(>= {needed}); {_wheel_fix(torch.__version__)}")
    where = f"driver {driver}" if driver else "an NVIDIA device"
    return (f"torch {torch.__version__} (CUDA {build}) cannot use the GPU ({where} present; "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
            f"{_wheel_fix(torch.__version__)}")


def device_problems(targets: list[tuple[str, object]], root: Path = Path("/")) -> list[str]:
    """``targets``: (who, device setting) pairs. A line when CUDA is asked for and unusable, when
    ``auto`` would fall back to the CPU next to an NVIDIA GPU, when a GPU's architecture has no
    kernels in this torch build, or when a GPU index is not visible."""
    wanted = [(who, spec, _kind(spec)) for who, spec in targets]
    if all(kind == "cpu" for _, _, kind in wanted):
        return []
    import torch

    cuda = [who for who, _, kind in wanted if kind == "cuda"]
    auto = [who for who, _, kind in wanted if kind == "auto"]
    if not torch.cuda.is_available():
        problems = []
        if cuda:
            verb = "asks" if len(cuda) == 1 else "ask"
            where = "device: cpu in the recipe's ensemble section" if ENSEMBLE in cuda else "device=cpu"
            problems.append(f"device: {', '.join(cuda)} {verb} for CUDA, which is not available: "
                            f"{_why_no_cuda(torch, root)} (or {where})")
        if auto and (nvidia_visible(root) or nvidia_driver(root)):
            problems.append(f"device: {', '.join(auto)} (device auto) would train on the CPU although this "
                            f"machine has an NVIDIA GPU: {_why_no_cuda(torch, root)}; or device=cpu to use "
                            "the CPU on purpose")
        return problems
    problems = []
    built = set(torch.cuda.get_arch_list())
    count = torch.cuda.device_count()
    for i in range(count):
        major, minor = torch.cuda.get_device_capability(i)
        arch = f"sm_{major}{minor}"
        ptx = [int(a[8:]) for a in built if a.startswith("compute_") and a[8:].isdigit()]
        if arch not in built and not any(p <= major * 10 + minor for p in ptx):
            kernels = ", ".join(sorted(built)) or "no GPU"
            problems.append(f"device: GPU {i} ({torch.cuda.get_device_name(i)}, {arch}) is not supported by "
                            f"torch {torch.__version__} (kernels for {kernels}); "
                            f"{_wheel_fix(torch.__version__)}")
    for who, spec, kind in wanted:
        if kind != "cuda":
            continue
        from train.dist import gpu_ids

        try:
            missing = [i for i in gpu_ids(str(spec)) if i >= count]
        except ConfigError as exc:
            problems.append(f"{who}: {one_line(exc)}")
            continue
        if missing:
            problems.append(f"{who}: device={spec}: GPU {missing[0]} asked for but {count} visible "
                            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})")
    return problems


# ---- disk, /dev/shm, memory ----

def _free_disk(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def disk_problems(members: list[Member], work: Path | None = None) -> list[str]:
    """A line when the work folder's disk has less free space than the run's outputs need."""
    work = work or paths.work_dir()
    runs = sum(m.folds for m in members)
    need = BASE_BYTES + runs * RUN_BYTES
    free = _free_disk(work)
    if free >= need:
        return []
    return [f"disk: {work} has {fmt_bytes(free)} free; this run needs about {fmt_bytes(need)} ({runs} "
            f"member fold(s) x {fmt_bytes(RUN_BYTES)} + {fmt_bytes(BASE_BYTES)}): free space, or set "
            "CYTOKIT_WORK to a bigger disk"]


def _family(model: str) -> str:
    """The model's family (``yolo``, ``cls``...), "" for a model outside ``train/<family>/``."""
    from train import registry

    module = registry.MODELS.get(model, "").partition(":")[0].split(".")
    return module[1] if len(module) > 2 and module[0] == "train" else ""


def _pixel_bytes(m: Member) -> int:
    """Bytes of one image of one batch as its DataLoader passes it (ultralytics: uint8; others: float32)."""
    imgsz = int(getattr(m.cfg, "imgsz", 640) or 640)
    per_value = 1 if _family(m.model) == "yolo" else 4
    return 3 * imgsz * imgsz * per_value


def _workers(m: Member, share: resources.Share) -> int:
    return max(0, min(int(getattr(m.cfg, "workers", 0) or 0), share.cores - 1 if share.cores > 1 else 0))


def shm_problems(members: list[Member], jobs: int, limits: Limits) -> list[str]:
    """A line when the DataLoader batches in flight (workers x prefetch x batch, jobs at once) do not
    fit the free space of /dev/shm."""
    free = limits.shm_bytes()
    if free is None or not members:
        return []
    at_once = max(1, min(jobs, sum(m.folds for m in members)))
    share = resources.job_share(at_once, limits)
    per_job = {m.name: _workers(m, share) * PREFETCH * int(getattr(m.cfg, "batch", 1) or 1) * _pixel_bytes(m)
               for m in members}
    need = max(per_job.values()) * at_once
    if need <= free:
        return []
    model = max(per_job, key=per_job.get)
    member = next(m for m in members if m.name == model)
    return [f"/dev/shm: {fmt_bytes(free)} free, but {at_once} job(s) of {model} "
            f"(workers={_workers(member, share)}, batch={member.cfg.batch}, imgsz={member.cfg.imgsz}) pass "
            f"about {fmt_bytes(need)} through it: DataLoader workers would die with 'Bus error'; give the "
            "container more (docker run --shm-size=8g) or lower workers / batch / JOBS"]


def cache_bytes(m: Member, facts: DataFacts) -> int:
    """RAM the member's training cache may take (0 without a cache or without data facts)."""
    cache = getattr(m.cfg, "cache", False)
    family = _family(m.model)
    if family == "yolo" and str(cache).lower() in ("true", "ram"):
        imgsz = int(m.cfg.imgsz)
        return facts.images * 3 * imgsz * imgsz
    if family == "cls" and cache is True:
        full = getattr(m.cfg, "mode", "crop") == "full"
        need = facts.images * IMAGE_BYTES if full else facts.boxes * CROP_BYTES
        try:
            from train.cls.data import cache_budget

            cap = cache_budget()
        except (ImportError, AttributeError, TypeError):
            cap = need
        return min(need, cap)
    return 0


def memory_problems(members: list[Member], jobs: int, facts: DataFacts, limits: Limits) -> list[str]:
    """A line when the jobs run at once, with their caches, need more RAM than this process may use."""
    if not members:
        return []
    at_once = max(1, min(jobs, sum(m.folds for m in members)))
    share = resources.job_share(at_once, limits)
    per_job = sorted(((JOB_BYTES + _workers(m, share) * WORKER_BYTES + cache_bytes(m, facts), m.name)
                      for m in members for _ in range(m.folds)), reverse=True)[:at_once]
    need = MAIN_BYTES + sum(b for b, _ in per_job)
    have = limits.memory_bytes()
    if need <= have:
        return []
    caches = [f"{model} cache {fmt_bytes(cache_bytes(m, facts))}" for _, model in per_job[:1]
              for m in members if m.name == model and cache_bytes(m, facts)]
    return [f"memory: {at_once} training job(s) at once need about {fmt_bytes(need)} "
            f"({'; '.join(caches) or 'no caches'}), but this process may use {fmt_bytes(have)} "
            f"({limits.memory_source()}): lower JOBS, or cache=false in the member's overrides"]


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (a problem of the pre-flight is one line)."""
    return " ".join(str(exc).split())


# ---- make train ----

def check_training(model: str, overrides: list[str], folds: int, jobs: int, limits: Limits | None = None,
                   root: Path = Path("/")) -> None:
    """The pre-flight of ``make train``: the config, a given pretrained file, the device, disk, /dev/shm
    and memory for ``folds`` jobs of ``model``, ``jobs`` at once (``pretrained: auto`` keeps its meaning
    there: the file if present, else scratch with a warning). Skipped as ``enabled`` says."""
    if not enabled():
        return
    from train import registry

    limits = limits or Limits()
    cfg = registry.load_config(model, overrides)  # a bad key: its one line, as training would say it
    members = [Member(model, cfg, max(1, folds), list(overrides))]
    problems = weights_problems(members, auto=False)
    problems += device_problems([(model, getattr(cfg, "device", ""))], root)
    problems += disk_problems(members)
    problems += shm_problems(members, jobs, limits)
    problems += memory_problems(members, jobs, DataFacts(), limits)
    if problems:
        raise PreflightError(problems)
