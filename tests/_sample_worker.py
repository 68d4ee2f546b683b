"""Worker for the sharded-sampling test: each of ``world`` gloo processes samples its shard of the
seeds with :func:`sdediff.distributed.sample_seeds`; rank 0 saves the gathered samples.

Also imported by the test for the cases and the one-process run (``samples()`` without a group).
"""
from __future__ import annotations

import torch

import sdediff as sd
from sdediff.distributed import sample_seeds
from test_samplers_random import elementwise_ring_score

N, SEED, STEPS = 7, 11, 12  # 7 examples: uneven shards (3 and 4) on 2 processes

#: name -> (sampler, options); every sampler that draws noise, and a deterministic one.
CASES = {
    "euler_maruyama": ("euler_maruyama", {}),
    "ancestral": ("ancestral", {}),
    "pc": ("pc", {"norm": "example"}),
    "ddim_eta1": ("ddim", {"eta": 1.0}),
    "sde": ("sde", {}),
    "dpm_solver": ("dpm_solver", {}),
}


def samples(dst: int | None = 0) -> dict[str, torch.Tensor | None]:
    """Every case's ``N`` samples (seeds ``SEED .. SEED + N - 1``), gathered on ``dst``."""
    sde = sd.VPSDE()
    score = elementwise_ring_score(sde)
    return {name: sample_seeds(score, sde, (2,), N, SEED, dst=dst, sampler=sampler, steps=STEPS,
                               dtype=torch.float64, **options)
            for name, (sampler, options) in CASES.items()}


def run(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        on_rank0, on_all = samples(dst=0), samples(dst=None)
        if rank != 0:
            assert all(v is None for v in on_rank0.values())
        torch.save({"rank0": on_rank0, "all": on_all}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()
