"""Quantization: one dequantize, one bits_per_dim, the level/range maps and their convention.

The default convention is score_sde's: 256 levels on [-1, 1], uniform dequantization, a
bits/dim offset of log2(256 / 2) = 7.
"""
from __future__ import annotations

import math

import pytest
import torch

import sdediff as sd
from sdediff.datasets import DIGITS_NUM_LEVELS, load_digits_tensors
from sdediff.quantization import (HIGH, LOW, NUM_LEVELS, bits_per_dim, dequantization_bpd_offset,
                                  dequantization_log_jacobian, dequantize, levels_to_range, range_to_levels)

F64 = torch.float64


def test_one_home_and_the_documented_default():
    import sdediff.likelihood as likelihood

    assert sd.dequantize is dequantize is likelihood.dequantize
    assert sd.bits_per_dim is bits_per_dim is likelihood.bits_per_dim
    assert (NUM_LEVELS, LOW, HIGH) == (256, -1.0, 1.0)
    # The default is score_sde's: 256 levels to [-1, 1], offset log2(256 / 2) = 7 bits.
    assert float(bits_per_dim(torch.zeros(1, dtype=F64), 1)) == pytest.approx(7.0, abs=1e-12)
    assert dequantization_bpd_offset() == pytest.approx(7.0)
    levels = torch.arange(256)
    x = dequantize(levels, generator=0, dtype=F64)
    assert x.min() >= -1 and x.max() < 1 and torch.equal(range_to_levels(x), levels)


def test_bits_per_dim_checks_the_data_it_is_given():
    logp = torch.zeros(3, dtype=F64)
    levels = torch.tensor([[0, 255], [3, 4], [7, 8]])
    assert torch.equal(bits_per_dim(logp, 2, data=levels), bits_per_dim(logp, 2))
    # Not integer, or outside 0..K-1 (e.g. digits levels with a wrong K, or data already in [-1, 1]):
    # a ValueError naming the argument, not a silently wrong offset.
    with pytest.raises(ValueError, match="data must lie in 0..16"):
        bits_per_dim(logp, 2, num_levels=DIGITS_NUM_LEVELS, data=levels)
    with pytest.raises(ValueError, match="data must hold integer values"):
        bits_per_dim(logp, 2, data=torch.tensor([[0.5, -0.25]] * 3))
    with pytest.raises(ValueError, match="data must lie in 0..255"):
        bits_per_dim(logp, 2, data=-levels - 1)
    with pytest.raises(ValueError, match="num_levels"):
        bits_per_dim(logp, 2, num_levels=None, data=levels)
    with pytest.raises(TypeError, match="data must be a torch.Tensor"):
        bits_per_dim(logp, 2, data=[[0, 1]])


def test_bpd_of_uniform_data_is_log2_levels():
    # x uniform on [low, high]^d has log p = -d log(high - low); the K-level data it
    # dequantizes has probability K^-d, i.e. log2(K) bits per dimension exactly.
    for K, low, high in [(256, -1.0, 1.0), (256, 0.0, 1.0), (17, -1.0, 1.0), (4, -3.0, 5.0)]:
        d = 7
        logp = torch.full((3,), -d * math.log(high - low), dtype=F64)
        assert torch.allclose(bits_per_dim(logp, d, num_levels=K, low=low, high=high),
                              torch.full((3,), math.log2(K), dtype=F64), atol=1e-12)
    zero = torch.zeros(1, dtype=F64)
    assert float(bits_per_dim(zero, 1, 256, -1.0, 1.0)) == pytest.approx(7.0, abs=1e-12)
    assert float(bits_per_dim(zero, 1, 256, 0.0, 1.0)) == pytest.approx(8.0, abs=1e-12)


def test_bpd_of_quantized_gaussian_matches_the_discrete_probability():
    # N(0, s^2) per dimension, quantized to K bins on [-1, 1]: the exact discrete probability
    # of a bin is Phi(b+) - Phi(b-); the density at the bin centre times delta agrees with it
    # to O(delta^2 / s^2) (midpoint rule), here < 1e-4 bits.
    K, low, high, s, d = 256, -1.0, 1.0, 0.25, 3
    levels = torch.randint(96, 160, (500, d), generator=torch.Generator().manual_seed(0))
    centres = levels_to_range(levels, K, low, high, dtype=F64)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(s, dtype=F64))
    logp = normal.log_prob(centres).sum(1)
    delta = (high - low) / K
    edges_lo, edges_hi = low + levels * delta, low + (levels + 1) * delta
    exact_bits = -torch.log(normal.cdf(edges_hi) - normal.cdf(edges_lo)).sum(1) / (d * math.log(2))
    assert (bits_per_dim(logp, d, K, low, high, data=levels) - exact_bits).abs().max() < 1e-4


def test_bpd_of_continuous_gaussian_is_its_entropy():
    # For continuous N(0, I) data, E[bpd] = h / ln 2 = log2(2 pi e) / 2 bits per dimension.
    d = 4
    x = torch.randn(20000, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    logp = -0.5 * x.pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)
    bits = bits_per_dim(logp, d, num_levels=None)
    # std of bpd = sqrt(d/2)/(d ln2) ~ 0.51; 4 standard errors of the mean ~ 0.015.
    assert abs(float(bits.mean()) - 0.5 * math.log2(2 * math.pi * math.e)) < 0.015


def test_dequantize_is_uniform_within_bins():
    levels = torch.randint(0, 256, (1000, 5), generator=torch.Generator().manual_seed(2))
    x = dequantize(levels, 256, -1.0, 1.0, generator=torch.Generator().manual_seed(3), dtype=F64)
    delta = 2.0 / 256
    lo = -1.0 + levels * delta
    assert ((x >= lo) & (x < lo + delta)).all()
    # Uniform within bins: the offsets (x - lo) / delta have mean 1/2 (std 0.29/sqrt(5000)).
    assert abs(float(((x - lo) / delta).mean()) - 0.5) < 0.02


def test_bpd_bad_input():
    with pytest.raises(ValueError, match="dim"):
        bits_per_dim(torch.zeros(2), 0)
    with pytest.raises(ValueError, match="num_levels"):
        bits_per_dim(torch.zeros(2), 2, num_levels=1)
    with pytest.raises(ValueError, match="low"):
        bits_per_dim(torch.zeros(2), 2, low=1.0, high=1.0)
    with pytest.raises(ValueError, match="NaN"):
        bits_per_dim(torch.tensor([float("nan")]), 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantize_round_trip(dtype: torch.dtype) -> None:
    levels = load_digits_tensors("train")
    x = dequantize(levels, DIGITS_NUM_LEVELS, generator=0, dtype=dtype)
    assert x.dtype == dtype and x.shape == levels.shape
    assert x.min() >= -1 and x.max() < 1
    assert torch.equal(range_to_levels(x, DIGITS_NUM_LEVELS), levels)
    assert torch.equal(x, dequantize(levels, DIGITS_NUM_LEVELS, generator=0, dtype=dtype))
    # Offsets within each bin are uniform: mean 1/2, variance 1/12 (in bin units).
    u = (x.double() + 1) * DIGITS_NUM_LEVELS / 2 - levels
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002


def test_dequantize_custom_range_and_validation() -> None:
    levels = torch.arange(256).repeat(4)
    x = dequantize(levels, num_levels=256, generator=1, low=0.0, high=1.0)
    assert torch.equal(range_to_levels(x, 256, 0.0, 1.0), levels)
    assert torch.equal(range_to_levels(levels_to_range(levels, 256, 0.0, 1.0), 256, 0.0, 1.0), levels)
    # Out-of-range continuous values are clamped to the end bins.
    assert range_to_levels(torch.tensor([-5.0, 5.0]), DIGITS_NUM_LEVELS).tolist() == [0, 16]
    with pytest.raises(ValueError, match="levels must lie in 0..16"):
        dequantize(torch.tensor([17]), DIGITS_NUM_LEVELS)
    with pytest.raises(ValueError, match="levels must lie in 0..255"):
        dequantize(torch.tensor([256]))
    with pytest.raises(ValueError, match="integer"):
        dequantize(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="low < high"):
        dequantize(torch.tensor([1]), low=1.0, high=-1.0)
    # generator and dtype are keyword-only: a generator in low's place is refused, not misread.
    with pytest.raises(TypeError, match="low"):
        dequantize(torch.tensor([1]), 17, torch.Generator())


@pytest.mark.parametrize("num_levels,low,high", [(17, -1.0, 1.0), (256, -1.0, 1.0), (4, 0.0, 3.0)])
def test_dequantization_log_jacobian_brute_force(num_levels: int, low: float, high: float) -> None:
    d = 6
    delta = (high - low) / num_levels

    def level_to_x(y: torch.Tensor) -> torch.Tensor:  # the map behind dequantize, on the level scale
        return low + y * delta

    y = torch.rand(d, dtype=torch.float64) * num_levels
    jac = torch.autograd.functional.jacobian(level_to_x, y)
    log_det = torch.linalg.slogdet(jac).logabsdet.item()
    assert dequantization_log_jacobian(d, num_levels, low, high) == pytest.approx(log_det, rel=1e-12)

    # A density uniform on [low, high]^d is the uniform distribution over all K^d level vectors:
    # log p_x + jacobian must be -d log K exactly; the bpd offset then gives log2 K bits per dim.
    log_px = -d * math.log(high - low)
    log_q = log_px + dequantization_log_jacobian(d, num_levels, low, high)
    assert log_q == pytest.approx(-d * math.log(num_levels))
    bpd = -log_px / (d * math.log(2)) + dequantization_bpd_offset(num_levels, low, high)
    assert bpd == pytest.approx(math.log2(num_levels))


def test_bpd_offset_reference_values() -> None:
    assert dequantization_bpd_offset(256, -1.0, 1.0) == pytest.approx(7.0)
    assert dequantization_bpd_offset(17, -1.0, 1.0) == pytest.approx(math.log2(8.5))
