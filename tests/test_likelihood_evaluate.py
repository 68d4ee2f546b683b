"""evaluate: whole data sets in batches, sharded over torch.distributed ranks."""
from __future__ import annotations

import math
import socket

import pytest
import torch

import sdediff as sd
from sdediff.likelihood import evaluate
from test_likelihood import EPS, draw, ring


# ------------------------------------------------------------------ evaluate
def test_evaluate_batches_tensors_and_iterables():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 16, seed=8)
    kw = dict(eps=EPS, rtol=1e-5, atol=1e-5)
    ev = evaluate(oracle.score_fn(sde), sde, x, batch_size=8, progress=False, bpd=True, num_levels=None, **kw)
    assert ev.logp.shape == (16,)
    assert ev.mean_logp == pytest.approx(float(ev.logp.mean()))
    assert ev.mean_nll == pytest.approx(-ev.mean_logp)
    assert ev.stderr == pytest.approx(float(ev.logp.std()) / math.sqrt(16))
    assert ev.mean_bpd == pytest.approx(float(-ev.logp.mean() / (2 * math.log(2))))
    # Each batch is an independent solve, held to the 1e-3-nat bar on the mean.
    assert (ev.logp - oracle.marginal_log_prob(x, EPS, sde)).abs().mean() < 1e-3
    ev2 = evaluate(oracle.score_fn(sde), sde, list(x.split(5)), batch_size=8, progress=False, **kw)
    assert torch.equal(ev.logp, ev2.logp)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(oracle.score_fn(sde), sde, x, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        evaluate(oracle.score_fn(sde), sde, [], batch_size=4)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _CountingScore:
    """The oracle's score, counting this process's evaluations."""

    def __init__(self, score_fn):
        self.score_fn, self.calls = score_fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.score_fn(x, t)


def _evaluations(score_fn, sde):
    """The runs compared between 1 and 2 processes: 30 points in batches of 8 (the last short)."""
    x = draw(ring(), 30, seed=9)
    kw = dict(batch_size=8, progress=False, eps=EPS)
    return {"hutch": evaluate(score_fn, sde, x, trace="rademacher", generator=torch.Generator().manual_seed(1), **kw),
            "exact": evaluate(score_fn, sde, x, error_norm="per_example", **kw)}


def _dist_worker(rank: int, world: int, port: int, out_path: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        sde = sd.VPSDE()
        score = _CountingScore(ring().score_fn(sde))
        res = _evaluations(score, sde)
        torch.save({name: (r.logp, r.nfe) for name, r in res.items()} | {"calls": score.calls},
                   f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_evaluate_two_processes_match_one(tmp_path):
    import torch.multiprocessing as mp
    out = str(tmp_path / "res")
    mp.spawn(_dist_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    sde = sd.VPSDE()
    score = _CountingScore(ring().score_fn(sde))
    one = _evaluations(score, sde)
    got = [torch.load(f"{out}.{rank}") for rank in range(2)]
    for name, res in one.items():
        for rank in range(2):
            logp, nfe = got[rank][name]
            # Same batches, same per-batch probe seeds, every solve on one rank with no collective:
            # the same per-example numbers in data order (to round-off), on every rank.
            assert logp.shape == (30,)
            assert torch.allclose(logp, res.logp, rtol=0, atol=1e-10), name
            assert nfe == res.nfe
    # Each rank evaluated only its own shard: the two shards' evaluations make up the whole.
    assert got[0]["calls"] + got[1]["calls"] == score.calls
    assert got[0]["calls"] != got[1]["calls"]  # different data, different step counts
