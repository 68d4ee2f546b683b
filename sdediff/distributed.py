"""Sampling under ``torch.distributed``: ranks take disjoint seed shards and gather in seed order.

Under ``sample(..., seeds=...)`` an example's result depends on its seed only, so a run of ``n``
examples with seeds ``seed, seed + 1, ..., seed + n - 1`` can be split over any number of
processes: rank ``r`` of ``K`` samples the contiguous shard :func:`shard` gives it, and the
shards are gathered in seed order. The result is the one-process result (bitwise, for a score
whose value for an example does not depend on its batch-mates).

* :func:`rank_and_world`: ``(rank, world_size)`` of an initialized process group, else ``(0, 1)``.
* :func:`init_from_env`: start the default process group under ``torchrun`` (``WORLD_SIZE > 1``).
* :func:`shard`: the contiguous range of example indices of a rank.
* :func:`gather_in_order`: concatenate every rank's tensor in rank order, on one rank or all.
* :func:`sample_seeds`: all of it for :func:`sdediff.sample`.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import Tensor

__all__ = ["rank_and_world", "init_from_env", "shard", "gather_in_order", "sample_seeds"]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialized default process group, else ``(0, 1)``."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: torch.device | str | None = None) -> tuple[int, int]:
    """Start the default process group when run by ``torchrun`` (``WORLD_SIZE > 1``), if not yet.

    The backend is ``nccl`` for a CUDA ``device``, else ``gloo``. Without ``WORLD_SIZE`` (or with
    ``WORLD_SIZE=1``) nothing is started. Returns :func:`rank_and_world`.
    """
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        cuda = device is not None and torch.device(device).type == "cuda"
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return rank_and_world()


def shard(n: int, rank: int, world: int) -> range:
    """The example indices of ``rank``: a contiguous run, sizes differing by at most one.

    Args:
        n: the number of examples, ``>= 0``.
        rank: in ``[0, world)``.
        world: the number of processes, ``>= 1``.

    Raises:
        ValueError: a negative ``n``, ``world < 1`` or a rank outside ``[0, world)``.
    """
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"need n >= 0, world >= 1 and 0 <= rank < world, got n={n}, rank={rank}, world={world}")
    return range(n * rank // world, n * (rank + 1) // world)


def gather_in_order(local: Tensor, dst: int | None = 0) -> Tensor | None:
    """Every rank's ``local`` tensor concatenated along dim 0 in rank order.

    Args:
        local: this rank's part (any first-dimension size, possibly 0; the same trailing shape and
            dtype on every rank).
        dst: the rank that receives the result (the others get ``None``); ``None``: every rank
            receives it.

    Returns:
        The concatenation on CPU, or ``local`` itself without a process group.
    """
    rank, world = rank_and_world()
    if world == 1:
        return local
    import torch.distributed as dist
    part = local.detach().cpu()
    if dst is None:
        parts: list = [None] * world
        dist.all_gather_object(parts, part)
        return torch.cat(parts)
    parts = [None] * world if rank == dst else None
    dist.gather_object(part, parts, dst=dst)
    return torch.cat(parts) if rank == dst else None


def sample_seeds(score_fn: Callable[[Tensor, Tensor], Tensor], sde, example_shape: tuple[int, ...], n: int,
                 seed: int = 0, *, dst: int | None = 0, progress: bool = False, return_nfe: bool = False,
                 **kwargs):
    """``n`` samples, example ``i`` from seed ``seed + i``, sharded over the ranks of a process group.

    Rank ``r`` samples the examples :func:`shard` gives it with ``sample(..., seeds=...)``; the
    shards are gathered in seed order (:func:`gather_in_order`), so the result is the
    one-process result, whatever the number of processes. Without a process group this is one
    :func:`sdediff.sample` call.

    Args:
        score_fn, sde: as for :func:`sdediff.sample`.
        example_shape: the shape of one example, e.g. ``(2,)``.
        n: the number of examples, ``>= 1``.
        seed: the seed of example 0.
        dst: the rank that receives the samples (the others get ``None``); ``None``: all ranks.
        progress: a progress bar (on rank 0 only).
        return_nfe: also return this rank's number of score evaluations.
        **kwargs: :func:`sdediff.sample`'s other arguments (``sampler``, ``steps``, ``dtype``, ...);
            not ``generator`` or ``seeds``.

    Returns:
        The samples ``(n, *example_shape)`` (on ``dst``, else ``None``), and the NFE if asked.

    Raises:
        ValueError: ``n < 1``, or ``generator``/``seeds``/``shape`` among ``kwargs``.
    """
    from .samplers import sample

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    clash = sorted({"generator", "seeds", "shape"} & set(kwargs))
    if clash:
        raise ValueError(f"sample_seeds sets the seeds itself; do not pass {', '.join(clash)}")
    rank, world = rank_and_world()
    mine = shard(n, rank, world)
    example_shape = tuple(example_shape)
    nfe = 0
    if len(mine):
        x, nfe = sample(score_fn, sde, (len(mine), *example_shape), seeds=[seed + i for i in mine],
                        progress=progress and rank == 0, return_nfe=True, **kwargs)
    else:  # more ranks than examples: an empty part
        x = torch.empty((0, *example_shape), dtype=kwargs.get("dtype") or torch.get_default_dtype())
    out = gather_in_order(x, dst)
    return (out, nfe) if return_nfe else out
