"""Every rank / device decision lives here, so FSDP2 and GPUs stay a local change.

Under `torchrun` the environment names the rank and world size; without it we are a
single process. CPU uses the gloo backend, CUDA uses NCCL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistContext:
    """Join the process group that `torchrun` describes (idempotent); single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DistributedDataParallel across ranks; the model itself when single-process."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over ranks: a copy on the input's device (the input is untouched).

    The reduction itself runs on the process group's device (NCCL reduces CUDA tensors only),
    so callers may pass CPU or device tensors alike.
    """
    if not ctx.enabled:
        return values.detach().clone()
    out = values.detach().to(ctx.device, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def global_masked_sums(x: torch.Tensor, mask: torch.Tensor, ctx: DistContext) -> tuple[torch.Tensor, ...]:
    """(count, sum, sum of squares) of x's masked-in entries over every rank, float64 scalars, in
    one reduction: a statistic of the global batch then does not depend on how it is split into
    micro-batches or ranks."""
    m = mask.bool()
    values = torch.where(m, x.double(), torch.zeros((), dtype=torch.float64, device=x.device))
    return all_reduce_sum(torch.stack([m.sum().double(), values.sum(), values.pow(2).sum()]), ctx).unbind()


def global_masked_moments(x: torch.Tensor, mask: torch.Tensor, ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of x's masked-in entries over every rank: (scalar, scalar) float64."""
    count, total, squares = global_masked_sums(x, mask, ctx)
    mean = total / count.clamp(min=1)
    var = (squares - count * mean**2).clamp(min=0) / (count - 1).clamp(min=1)
    return mean, var


def to_device(batch: dict, ctx: DistContext) -> dict:
    """A batch dict with every tensor moved to this process's device (other values as they are)."""
    return {k: v.to(ctx.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shard_rows(indices: list[int], ctx: DistContext) -> list[int]:
    """This rank's share of one global batch (strided, so shares differ by at most one row)."""
    return indices[ctx.rank :: ctx.world_size]


def no_sync(model: torch.nn.Module, sync: bool):
    """Skip DDP's gradient all-reduce on accumulation micro-batches other than the last."""
    import contextlib

    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()
