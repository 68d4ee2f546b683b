"""from_score_sde: the reference score-SDE code's time labels and output conventions."""
from __future__ import annotations

import math

import pytest
import torch

import sdediff as sd

F64 = torch.float64


class Recorder(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn, self.labels = fn, None

    def forward(self, x, labels):
        self.labels = labels.clone()
        return self.fn(x, labels)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE()], ids=["vp", "subvp"])
def test_vp_labels_999t_and_eps_output(sde):
    oracle = sd.GaussianMixture(*sd.ring_params())
    t = torch.tensor([1e-3, 0.25, 0.5, 1.0], dtype=F64)
    # an eps network: eps = -std score (the reference's continuous VP models)
    net = Recorder(lambda x, labels: -sde.std(labels / 999)[:, None] * oracle.score_fn(sde)(x, labels / 999))
    model = sd.from_score_sde(net, sde)
    x = oracle.sample(4, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(model(x, t), oracle.score_fn(sde)(x, t), rtol=1e-12, atol=1e-12)
    assert torch.allclose(net.labels, 999 * t)
    assert torch.allclose(model.time_of(net.labels), t)


def test_ve_labels_sigma_and_score_output():
    sde = sd.VESDE(sigma_min=0.01, sigma_max=50.0)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    net = Recorder(lambda x, labels: -x / labels[:, None] ** 2)
    model = sd.from_score_sde(net, sde)
    x = torch.ones(3, 2, dtype=F64)
    out = model(x, t)
    sigma = 0.01 * (50.0 / 0.01) ** t
    assert torch.allclose(net.labels, sigma)  # the reference's marginal std sigma(t)
    assert torch.allclose(out, -x / sigma[:, None] ** 2)  # the score, as returned
    assert torch.allclose(model.time_of(sigma), t)
    assert torch.allclose(model.eps(x, t), -sde.std(t)[:, None] * out)


def test_bad_input():
    with pytest.raises(TypeError, match="VPSDE, SubVPSDE or VESDE"):
        sd.from_score_sde(lambda x, l: x, sd.DiscreteVPSDE.from_schedule("linear"))
    with pytest.raises(ValueError, match="num_scales"):
        sd.from_score_sde(lambda x, l: x, sd.VPSDE(), num_scales=1)
    model = sd.from_score_sde(lambda x, l: x.sum(1), sd.VPSDE())
    with pytest.raises(ValueError, match="net returned shape"):
        model(torch.zeros(2, 3, dtype=F64), torch.full((2,), 0.5, dtype=F64))
