"""The trainer's data-parallel plumbing (``torch.distributed``): process group, DDP wrapper, and the
few collectives that keep the processes in step (a shared clock, a shared loss and stop flag)."""
from __future__ import annotations

import os

import torch
from torch import Tensor, nn

__all__ = ["dist_info", "maybe_init_distributed", "wrap", "broadcast_float", "mean_and_any", "barrier"]


def dist_info() -> tuple[bool, int, int]:
    """``(distributed, rank, world_size)`` of the default process group (``(False, 0, 1)`` without one)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def maybe_init_distributed(device: torch.device) -> None:
    """Initialize the default process group under ``torchrun`` (``WORLD_SIZE > 1`` in the environment)."""
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (it averages the gradients over the processes)."""
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast_float(value: float, device: torch.device) -> float:
    """Process 0's ``value`` on every process."""
    import torch.distributed as dist
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def mean_and_any(value: Tensor, flag: bool, world_size: int) -> tuple[Tensor, bool]:
    """The mean of a scalar over the processes and whether any process raised ``flag``, in one all-reduce."""
    import torch.distributed as dist
    packed = torch.stack([value, torch.tensor(float(flag), dtype=value.dtype, device=value.device)])
    dist.all_reduce(packed)
    return packed[0] / world_size, bool(packed[1] > 0)


def barrier() -> None:
    """Wait for every process."""
    import torch.distributed as dist
    dist.barrier()
