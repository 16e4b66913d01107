"""Multi-process training helpers: the engine runs unchanged under ``torchrun``.

Under ``torchrun --nproc-per-node N`` the environment carries ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``; :func:`init_distributed` then starts a process group (``nccl`` on CUDA,
``gloo`` on CPU) unless the caller already did. Without those variables everything is a
single process and the helpers here are no-ops.

Batch norm note: each rank normalizes with the statistics of its own shard.
``nn.SyncBatchNorm`` would fix that, but in torch 2.13 it only runs on GPU/XPU inputs (it
raises on CPU), so the engine does not convert models; BN models trained with N processes
match the 1-process run closely in accuracy, not bit for bit.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from torchslim.core.errors import TorchSlimError


@dataclass
class DistContext:
    """Where this process stands: rank, world size and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False      # True when this process's torchslim started the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise TorchSlimError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def env_rank() -> int:
    """``RANK`` from the environment (0 when unset): only rank 0 writes files and prints summaries."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        raise TorchSlimError(f"RANK must be an integer, got {os.environ['RANK']!r}") from None


def init_distributed(device: torch.device | str | None = None) -> DistContext:
    """Join (or start) the process group described by the environment; pick this rank's device.

    ``device=None`` means ``cuda:LOCAL_RANK`` when CUDA is available and more than one process
    runs, else the CPU.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        rank, world, owns = dist.get_rank(), dist.get_world_size(), False
    elif env_world_size() > 1:
        if not dist.is_available():
            raise TorchSlimError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        rank, world, owns = int(os.environ.get("RANK", "0")), env_world_size(), True
    else:
        rank, world, owns = 0, 1, False
    if device is None:
        use_cuda = world > 1 and torch.cuda.is_available()
        dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    if owns:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
        atexit.register(shutdown_distributed)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, owns_group=owns)


def shutdown_distributed() -> None:
    """Destroy the default process group (registered at exit when torchslim started it).

    The group stays up between :meth:`Trainer.fit` calls: re-creating it under ``torchrun``
    after destroying it can hang, so a script may fit several times in one launch. All ranks
    meet at a barrier first: a rank tearing gloo down while another still talks to it aborted
    the process at exit ("terminate called without an active exception") about one launch in six.
    """
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> float:
    """Mean of a scalar over all ranks, as a Python float."""
    t = value.detach().to(torch.float64).reshape(1)
    if ctx.is_distributed:
        t = t.to(_comm_device(ctx))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t / ctx.world_size
    return float(t.item())


def all_reduce_means(values: torch.Tensor, ctx: DistContext) -> list[float]:
    """Element-wise mean of a 1-D tensor over all ranks, as Python floats (one collective call)."""
    t = values.detach().to(torch.float64).reshape(-1)
    if ctx.is_distributed:
        t = t.to(_comm_device(ctx))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t / ctx.world_size
    return [float(x) for x in t.tolist()]


def broadcast_json(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Send a JSON-serializable value from rank ``src`` to all ranks (no pickling)."""
    if not ctx.is_distributed:
        return obj
    dev = _comm_device(ctx)
    payload = json.dumps(obj).encode() if ctx.rank == src else b""
    size = torch.tensor([len(payload)], dtype=torch.int64, device=dev)
    dist.broadcast(size, src=src)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=dev)
    if ctx.rank == src:
        buf.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    dist.broadcast(buf, src=src)
    return json.loads(buf.cpu().numpy().tobytes().decode())


def wrap_ddp(model: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` itself."""
    if not ctx.is_distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" and ctx.device.index is not None else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _comm_device(ctx: DistContext) -> torch.device:
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
