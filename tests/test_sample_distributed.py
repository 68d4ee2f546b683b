"""Sampling sharded over torch.distributed ranks (gloo): the gathered samples, in seed order, are
bitwise the one-process samples."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

import sdediff as sd
from sdediff.distributed import gather_in_order, rank_and_world, sample_seeds, shard

import _sample_worker as worker


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_are_contiguous_disjoint_and_cover_every_example():
    for n in (0, 1, 5, 7, 64):
        for world in (1, 2, 3, 8):
            parts = [shard(n, r, world) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard(4, 2, 2)


def test_without_a_process_group_it_is_one_sample_call():
    assert rank_and_world() == (0, 1)
    x = torch.arange(6.0).reshape(3, 2)
    assert gather_in_order(x) is x
    sde = sd.VPSDE()
    score = sd.GaussianMixture(*sd.ring_params()).score_fn(sde)
    got = sample_seeds(score, sde, (2,), 5, 3, sampler="euler_maruyama", steps=4, dtype=torch.float64)
    want = sd.sample(score, sde, (5, 2), sampler="euler_maruyama", steps=4, dtype=torch.float64,
                     seeds=[3, 4, 5, 6, 7])
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="generator"):
        sample_seeds(score, sde, (2,), 5, generator=0)


@pytest.mark.distributed
def test_two_processes_give_the_one_process_samples_bitwise(tmp_path):
    import torch.multiprocessing as mp
    torch.set_num_threads(1)
    out = str(tmp_path / "res")
    mp.spawn(worker.run, args=(2, _free_port(), out), nprocs=2, join=True)
    one = worker.samples()
    got = [torch.load(f"{out}.{rank}") for rank in range(2)]
    for name, x in one.items():
        assert x.shape == (worker.N, 2) and bool(torch.isfinite(x).all()), name
        assert torch.equal(got[0]["rank0"][name], x), name  # gathered on rank 0, in seed order
        assert got[1]["rank0"][name] is None
        for rank in range(2):  # dst=None: every rank has them
            assert torch.equal(got[rank]["all"][name], x), name


@pytest.mark.slow  # three more Python processes (torchrun and its two workers): ~15 s on a busy machine
@pytest.mark.distributed
def test_sample_command_under_torchrun_writes_the_one_process_file(tmp_path):
    """``torchrun --nproc_per_node 2 -m sdediff sample ... --n N --seed S``: rank 0 writes the samples
    of seeds S .. S + N - 1 in seed order; the file equals the one-process file (to the network's
    batch-size round-off: its matrix products block differently for other batch sizes)."""
    import os
    import subprocess
    import sys

    import numpy as np

    from sdediff import cli

    run = tmp_path / "run"
    assert cli.main(["train", "--data", "ring", "--steps", "5", "--out", str(run), "--hidden", "16",
                     "--depth", "1", "--batch-size", "64", "--no-progress"]) == 0
    (tmp_path / "sample.toml").write_text("[sample]\nn = 9\n")  # torchrun's parser would take --n as its own
    flags = ["--ckpt", str(run), "--sampler", "euler_maruyama", "--steps", "6", "--seed", "4", "--no-progress",
             "--config", str(tmp_path / "sample.toml")]
    assert cli.main(["sample", *flags, "--out", str(tmp_path / "one.npy")]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "sdediff", "sample", *flags,
           "--out", str(tmp_path / "two.npy")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote 9 samples") == 1  # rank 0 alone writes and reports
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert one.shape == two.shape == (9, 2)
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)
