"""Multi-GPU / multi-node training under `torchrun` (DistributedDataParallel).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a no-op for one process,
so the same fit() runs on a laptop and on a cluster. Metrics are summed over processes so every rank sees
the same numbers (early stopping and Optuna pruning then decide the same thing everywhere); rank 0 alone
logs and writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def env_context() -> DistContext:
    """The process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""
    return DistContext(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def is_main_process() -> bool:
    return env_context().is_main


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[DistContext]:
    """Join the torchrun job for the duration of a fit (NCCL on CUDA, gloo otherwise), then leave it."""
    ctx = env_context()
    owned = False
    if ctx.is_distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owned = True
    try:
        yield ctx
    finally:
        if owned:
            dist.destroy_process_group()


def local_device(device: torch.device, ctx: DistContext) -> torch.device:
    """One GPU per process: rank r on a node uses cuda:LOCAL_RANK."""
    if device.type == "cuda" and ctx.is_distributed:
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return device


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a small CPU tensor over processes (moved to the GPU for NCCL, which cannot reduce CPU tensors)."""
    if not ctx.is_distributed:
        return t
    work = t.cuda() if dist.get_backend() == "nccl" else t.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.cpu()


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every process's `obj`, in rank order (validation logits of each shard)."""
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Rank 0's BatchNorm running statistics everywhere (what DDP does before each forward): after the
    last step of an epoch every rank would otherwise validate and save with its own, slightly different, ones."""
    if not ctx.is_distributed:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()
