"""Datasets: toy samplers (shape, determinism, ring statistics), the digits split and levels."""

from __future__ import annotations

import math

import pytest
import torch

from sdediff.datasets import (
    DIGITS_NUM_LEVELS,
    DIGITS_SPLIT_SIZES,
    TOY_DATASETS,
    digits_split_indices,
    load_digits_tensors,
    range_to_levels,
    ring,
    ring_params,
    toy_data,
)

# ---------------------------------------------------------------------------------- toy sets


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_shape_finite_and_deterministic(name: str) -> None:
    x = toy_data(name, 500, generator=torch.Generator().manual_seed(0))
    assert x.shape == (500, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x.abs().max() < 10
    assert torch.equal(x, toy_data(name, 500, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(x, toy_data(name, 500, generator=0))  # an int seed is the same generator
    assert not torch.allclose(x, toy_data(name, 500, generator=1))


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_dtype_and_empty(name: str) -> None:
    assert toy_data(name, 10, generator=0, dtype=torch.float64).dtype == torch.float64
    assert toy_data(name, 0, generator=0).shape == (0, 2)


def test_toy_unknown_name_lists_allowed() -> None:
    with pytest.raises(ValueError, match="ring.*moons"):
        toy_data("gaussians8", 10)
    with pytest.raises(ValueError, match="n must"):
        toy_data("ring", -1)
    with pytest.raises(TypeError, match="generator"):
        toy_data("ring", 5, generator="seed")


def test_ring_matches_ring_params() -> None:
    means, stds, weights = ring_params()
    assert means.shape == (8, 2) and stds.shape == (8,) and weights.shape == (8,)
    assert torch.allclose(means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))

    n = 16000
    x = ring(n, generator=0, dtype=torch.float64)
    k = torch.cdist(x, means).argmin(dim=1)  # modes are ~15 stds apart: assignment is exact
    counts = torch.bincount(k, minlength=8).double()
    # Mode frequencies: binomial, within 4 standard errors.
    se_freq = torch.sqrt(weights * (1 - weights) / n)
    assert ((counts / n - weights).abs() < 4 * se_freq).all()
    for j in range(8):
        xj = x[k == j]
        se_mean = stds[j] / math.sqrt(len(xj))
        assert ((xj.mean(0) - means[j]).abs() < 4 * se_mean).all(), f"mode {j} mean off"
        # Per-coordinate std: its standard error is ~ std / sqrt(2 n_j).
        assert ((xj.std(0) - stds[j]).abs() < 4 * stds[j] / math.sqrt(2 * len(xj))).all(), f"mode {j} std off"


def test_ring_params_custom_and_validation() -> None:
    means, stds, weights = ring_params(num_modes=5, radius=3.0, std=0.2, dtype=torch.float32)
    assert means.dtype == torch.float32 and means.shape == (5, 2)
    assert torch.allclose(means[0], torch.tensor([3.0, 0.0]))
    assert torch.allclose(stds, torch.full((5,), 0.2))
    with pytest.raises(ValueError, match="std"):
        ring_params(std=0.0)
    with pytest.raises(ValueError, match="num_modes"):
        ring_params(num_modes=0)


# ---------------------------------------------------------------------------------- digits


def test_digits_split_sizes_disjoint_and_covering() -> None:
    idx = {s: digits_split_indices(s) for s in ("train", "val", "test", "trainval")}
    for split, size in DIGITS_SPLIT_SIZES.items():
        assert len(idx[split]) == size
        assert len(set(idx[split].tolist())) == size
    train, val, test = (set(idx[s].tolist()) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(range(1797))
    assert set(idx["trainval"].tolist()) == train | val
    # The split is a constant of the project (hash-based, RNG-free): pin a few values.
    assert idx["test"][:5].tolist() == [1, 3, 14, 17, 20]
    assert idx["val"][:5].tolist() == [9, 15, 23, 28, 29]
    assert idx["train"][:5].tolist() == [0, 2, 4, 5, 6]
    with pytest.raises(ValueError, match="split must be one of"):
        digits_split_indices("validation")


def test_digits_tensors_levels_and_range() -> None:
    levels, labels = load_digits_tensors("val", return_labels=True)
    assert levels.shape == (200, 1, 8, 8) and levels.dtype == torch.int64
    assert levels.min() >= 0 and levels.max() <= 16 and levels.max() == 16
    assert labels.shape == (200,) and set(labels.tolist()) <= set(range(10))
    x = load_digits_tensors("val", output="range")
    assert x.dtype == torch.float32 and x.min() > -1 and x.max() < 1
    assert torch.equal(range_to_levels(x, DIGITS_NUM_LEVELS), levels)
    # Rows match scikit-learn's own array through the indices.
    from sklearn.datasets import load_digits

    raw = torch.as_tensor(load_digits().images).round().long()
    assert torch.equal(raw[digits_split_indices("val")].unsqueeze(1), levels)


def test_quantization_names_are_reexported_unchanged() -> None:
    # One home: sdediff.quantization; sdediff.datasets re-exports the same function objects.
    import sdediff.datasets as datasets
    import sdediff.quantization as quantization

    for name in ("dequantize", "levels_to_range", "range_to_levels", "dequantization_log_jacobian",
                 "dequantization_bpd_offset"):
        assert getattr(datasets, name) is getattr(quantization, name), name
