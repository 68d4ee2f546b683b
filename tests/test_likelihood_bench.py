"""The likelihood benchmark's exact-trace accounting: trace nodes counted, one node timed."""

import pytest
import torch

import sdediff as sd
from sdediff.bench import likelihood as bench


@pytest.fixture(scope="module")
def ring():
    gm = sd.GaussianMixture(*sd.ring_params())
    sde = sd.VPSDE()
    x = gm.sample(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return gm.score_fn(sde), sde, x


def test_plain_exact_solve_traces_at_every_evaluation(ring):
    """Without quadrature the divergence rides along the solve: every score evaluation is a node."""
    score_fn, sde, x = ring
    res = sd.log_likelihood(score_fn, sde, x, eps=bench.EPS, rtol=1e-3, atol=1e-3)
    assert bench.count_trace_nodes(score_fn, sde, x, 1e-3) == res.nfe


@pytest.mark.parametrize("n", [5, 12])
def test_log_snr_quadrature_traces_at_its_nodes_only(ring, n):
    score_fn, sde, x = ring
    assert bench.count_trace_nodes(score_fn, sde, x, 1e-3, quadrature=n) == n


def test_steps_quadrature_traces_m_nodes_per_step(ring):
    """``quadrature="steps"``: the trajectory costs no trace; each accepted step adds ``m`` nodes,
    and the trajectory's evaluations (6 a step, 2 for the first step) are the rest of the NFE."""
    score_fn, sde, x = ring
    counts = {}
    for m in (2, 3):
        nodes = bench.count_trace_nodes(score_fn, sde, x, 1e-3, quadrature="steps", nodes_per_step=m)
        assert nodes % m == 0 and nodes > 0
        counts[m] = nodes // m
    assert counts[2] == counts[3]  # the same accepted steps, whatever the node count
    res = sd.log_likelihood(score_fn, sde, x, eps=bench.EPS, rtol=1e-3, atol=1e-3, quadrature="steps")
    assert res.nfe - 3 * counts[3] >= 6 * counts[3] + 2


def test_node_budget_line():
    """The cost-floor line picks the exact run that meets the bar with the fewest nodes."""
    ref = {"problem": "mix64d", "estimator": bench.REFERENCE, "seconds": 0.25, "node_seconds": 0.02}
    rows = [ref,
            {"problem": "mix64d", "estimator": "exact, a", "rtol": 1e-4, "err": 1.5e-2, "floor": 1.44e-2,
             "trace_nodes": 40.0},
            {"problem": "mix64d", "estimator": "exact, b", "rtol": 1e-3, "err": 5e-2, "floor": 1.44e-2,
             "trace_nodes": 20.0}]
    (line,) = bench.node_budget("mix64d", rows, ref, "bar")
    assert "12.5 nodes" in line and "exact, a" in line and "3.20x" in line


def test_exact_node_seconds_is_positive(ring):
    score_fn, _, x = ring
    assert 0 < bench.exact_node_seconds(score_fn, x, repeats=2) < 5
