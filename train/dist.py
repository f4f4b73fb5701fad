"""Devices and distributed training helpers for the torchvision loop.

``device`` config values: ``""``/``"auto"`` (CUDA 0 when available, else CPU;
under torchrun each process's own GPU), ``"cpu"``, ``"0"``/``"cuda:1"`` (one
GPU), ``"0,1"`` (several GPUs: one process each under torchrun). Ultralytics
handles several GPUs itself (it launches its own DDP workers); the torchvision
loop runs one process per GPU under ``torchrun``::

    torchrun --nproc_per_node 2 -m train --model fasterrcnn --fold 0 --data DATA device=0,1

``init()`` joins the process group when ``WORLD_SIZE > 1`` (NCCL on GPUs, gloo
on CPU); samplers then shard the data per rank (``DistributedSampler``, or a
weighted equivalent for class-balanced sampling) and ``wrap`` puts the model in
``DistributedDataParallel``. Only rank 0 writes files.
"""
from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as torch_dist
from torch.utils.data import (
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from cytocore.config import ConfigError


def resolve_device(spec: str | int | None) -> str:
    """The torch device string for a config ``device`` value (this process's GPU under torchrun).

    Under torchrun (``WORLD_SIZE > 1``) each process takes its own GPU: ``""``,
    ``auto``, ``cuda`` and ``0`` mean ``cuda:$LOCAL_RANK``; a list of ids
    (``2,3``) must name one GPU per process of the node, and process
    ``LOCAL_RANK`` takes ``ids[LOCAL_RANK]``. Anything else is refused: two
    processes on one GPU make NCCL fail with "Duplicate GPU detected".
    """
    text = "" if spec is None else str(spec).strip().lower()
    if text == "cpu":
        return "cpu"
    ids = gpu_ids(text)
    default = text in ("", "auto", "cuda") or ids == [0]
    launched = int(os.environ.get("WORLD_SIZE", 1)) > 1
    local = int(os.environ.get("LOCAL_RANK", 0))
    if launched:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
        if not default and len(ids) != per_node:
            example = ",".join(map(str, range(per_node)))
            raise ConfigError(f"device={spec}: {per_node} processes per node under torchrun but {len(ids)} "
                              f"GPU id(s); give one id per process (e.g. device={example}) or leave device "
                              "empty")
    if text in ("", "auto"):
        if not torch.cuda.is_available():
            return "cpu"
    elif not torch.cuda.is_available():
        raise ConfigError(f"device={spec}: CUDA is not available on this machine; use device=cpu")
    index = (local if default else ids[local]) if launched else ids[0]
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"device={spec}: GPU {index} asked for (LOCAL_RANK {local}) but {count} visible")
    return f"cuda:{index}"


def single_device(spec: str | int | None, what: str) -> str:
    """``resolve_device`` for a job that runs on ONE device (no torchrun); several GPU ids are refused."""
    text = "" if spec is None else str(spec).strip().lower()
    if text not in ("", "auto", "cpu") and len(gpu_ids(text)) > 1:
        raise ConfigError(f"device={spec}: {what} trains on one GPU; give one id (e.g. device=0) or run "
                          "one fold per GPU")
    return resolve_device(spec)


def set_cpu_threads(threads: int = 0) -> int:
    """Set torch's CPU threads: ``threads``, else the job's share (``CYTOKIT_THREADS``, set by
    ``train.parallel``), else as ultralytics does, one less than the cores (1 to 8).

    Leaving a core free matters: on a busy machine, all-core OpenMP runs several times slower.
    """
    share = int(os.environ.get("CYTOKIT_THREADS") or 0)
    n = threads if threads > 0 else share if share > 0 else min(8, max(1, (os.cpu_count() or 1) - 1))
    torch.set_num_threads(n)
    return n


def gpu_ids(spec: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``; ``"cuda:1"`` -> ``[1]``; ``"cpu"`` -> ``[]``; ``"auto"``/``""`` -> ``[0]``."""
    text = str(spec).strip().lower().removeprefix("cuda:").removeprefix("cuda")
    if text == "cpu":
        return []
    if text in ("auto", ""):
        return [0]
    try:
        return [int(x) for x in text.split(",") if x.strip()] or [0]
    except ValueError:
        raise ConfigError(f"device={spec}: expected cpu, auto, a GPU index or a list like 0,1") from None


def worker_seed() -> int:
    """The seed of this DataLoader worker (torch's per-worker seed, new for every epoch's workers unless they
    persist), or of the main process. Augmentation pipelines that keep their own generator (albumentations
    2 seeds one at construction, so forked workers would share it) are reseeded with it."""
    return torch.initial_seed() % 2**32


def reseed_augment(transform, seeded: int | None) -> int | None:
    """Reseed ``transform`` (an albumentations ``Compose``) when this process's ``worker_seed`` changed
    since ``seeded``; returns the seed now in use. Called at the top of a dataset's ``__getitem__``."""
    if transform is None:
        return seeded
    seed = worker_seed()
    if seed != seeded:
        transform.set_random_seed(seed)
    return seed


def world_size() -> int:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank()
    return int(os.environ.get("RANK", 0))


def is_main() -> bool:
    """True in the process that writes files (rank 0, or the only process)."""
    return rank() == 0


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def init(device: str, init_method: str | None = None, world: int | None = None,
         rank_: int | None = None) -> bool:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``) or when
    ``init_method`` is given (tests use a file store). Returns True when distributed."""
    if is_distributed():
        return True
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    if world <= 1 and init_method is None:
        return False
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    kwargs = {"init_method": init_method, "world_size": world,
              "rank": int(os.environ.get("RANK", 0)) if rank_ is None else rank_}
    # Rank 0 alone scores the validation images each epoch; the others wait that long at a barrier.
    torch_dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2),
                                  **{k: v for k, v in kwargs.items() if v is not None})
    return True


def cleanup() -> None:
    if is_distributed():
        torch_dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def wrap(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """The model in ``DistributedDataParallel`` when distributed, else unchanged."""
    if not is_distributed():
        return model
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class WeightedDistributedSampler(Sampler[int]):
    """Weighted sampling with replacement, each rank taking its own slice of one shared draw."""

    def __init__(self, weights: Sequence[float], num_replicas: int, rank: int, seed: int = 0):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(len(self.weights) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.num_samples * self.num_replicas, True, generator=g)
        return iter(draw[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def make_sampler(dataset, shuffle: bool, weights: Sequence[float] | None = None, seed: int = 0) -> Sampler:
    """The sampler for ``dataset``: sharded per rank when distributed, weighted when ``weights``."""
    if is_distributed():
        if weights is not None:
            return WeightedDistributedSampler(weights, world_size(), rank(), seed)
        return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed)
    if weights is not None:
        g = torch.Generator().manual_seed(seed)
        return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=g)
    if shuffle:
        return RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return SequentialSampler(dataset)
