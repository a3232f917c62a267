"""Small helpers for PyTorch DDP runs started by ``torchrun`` (one process per device).

Everything distributed in RSFM goes through ``torch.distributed`` (gloo on CPU, NCCL on GPU); nothing here is
home-made communication. A script that calls :func:`init_distributed` works unchanged as a plain
single-process run (no ``torchrun`` environment -> world size 1, no process group).

Typical use::

    ctx = init_distributed()            # reads RANK / WORLD_SIZE / LOCAL_RANK set by torchrun
    model = wrap_ddp(model.to(ctx.device), ctx)
    sampler = make_sampler(dataset, ctx, shuffle=True, seed=0)
    ...
    if ctx.is_main: save(...)          # rank 0 writes logs and checkpoints
    mean_loss = all_reduce_mean(loss.detach(), ctx)
    cleanup_distributed(ctx)
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

__all__ = [
    "DistContext",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "init_distributed",
    "make_sampler",
    "print0",
    "unwrap",
    "wrap_ddp",
]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run.

    Attributes:
        rank: global rank (0 .. world_size-1).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the device this process computes on.
        backend: ``"gloo"``, ``"nccl"`` or ``None`` for a single process without a process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is active (``torchrun`` with any number of processes)."""
        return self.backend is not None


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; it is set by torchrun, "
                         "start the run with 'torchrun --nproc_per_node=N ...' or unset it") from None


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Set up this process from the ``torchrun`` environment, or as a single process without it.

    Args:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``. With CUDA each process
            takes GPU ``LOCAL_RANK`` and the NCCL backend; on CPU the gloo backend.
        timeout_s: collective timeout in seconds (a stuck peer fails the run instead of hanging forever).

    Returns:
        The :class:`DistContext` of this process.

    Raises:
        ValueError: ``device`` is not one of the choices, or CUDA was asked for and is not available.
        RuntimeError: only some of RANK / WORLD_SIZE / LOCAL_RANK are set (a broken launcher environment).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA GPU is visible to PyTorch; use --device cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    present = [v for v in _TORCHRUN_VARS if v in os.environ]
    if not present:
        dev = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        return DistContext(device=dev)
    if len(present) != len(_TORCHRUN_VARS):
        missing = sorted(set(_TORCHRUN_VARS) - set(present))
        raise RuntimeError(f"torchrun environment is incomplete: {missing} not set; launch with torchrun")
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if use_cuda:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=_dt.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend)


def cleanup_distributed(ctx: DistContext) -> None:
    """Destroy the process group if this run created one (safe to call in single-process runs)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op without a process group)."""
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all ranks; returns a new tensor (the input is left untouched)."""
    out = tensor.detach().clone()
    if ctx.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``tensor`` over all ranks (for logging losses; gradients are averaged by DDP itself)."""
    return all_reduce_sum(tensor, ctx) / ctx.world_size


def broadcast_object(obj, ctx: DistContext, src: int = 0):
    """Send a picklable object from rank ``src`` to all ranks; returns it on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_ddp(model: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap ``model`` (already on ``ctx.device``) in DistributedDataParallel when distributed.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts identical, and
    averages gradients over ranks in ``backward()``.

    Args:
        find_unused_parameters: set when some parameters get no gradient in a step (e.g. a per-dataset
            output layer of a source without that label type), as the official MTP loop does.
    """
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (use it for ``state_dict`` so keys carry no ``module.``)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def make_sampler(dataset: Dataset, ctx: DistContext, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> Sampler:
    """A sampler that gives each rank its own share of ``dataset``.

    Distributed: :class:`~torch.utils.data.DistributedSampler` (call ``sampler.set_epoch(e)`` every epoch
    so shuffles differ). Single process: a seeded random or sequential sampler.
    """
    if ctx.distributed:
        return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle,
                                  seed=seed, drop_last=drop_last)
    if shuffle:
        gen = torch.Generator()
        gen.manual_seed(seed)
        return RandomSampler(dataset, generator=gen)
    return SequentialSampler(dataset)


def print0(ctx: DistContext, *args, **kwargs) -> None:
    """``print`` on rank 0 only (flushed, so logs of piped runs appear in order)."""
    if ctx.is_main:
        print(*args, **kwargs, flush=True)
