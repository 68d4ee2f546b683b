"""ScoreModel / DiscreteScoreModel: the four parameterizations convert exactly into score, eps and x0.

A fake "network" that outputs the exact target of each parameterization (computed from the
Gaussian-mixture oracle) must give back the oracle's score and denoiser; any error is a wrong
conversion formula. Float64 throughout: the tolerance 1e-9 is round-off only.
"""
import math

import pytest
import torch
from torch import nn

import sdediff as sd
from sdediff.parameterization import PARAMETERIZATIONS, DiscreteScoreModel, ScoreModel
from sdediff.sde import broadcast_like

from conftest import STANDARD_SDES, ring_mixture

TOL = 1e-9  # float64 round-off on O(1)-O(100) quantities


class OracleNet(nn.Module):
    """Outputs the exact target of ``parameterization`` for the oracle ``gm`` (conditioned on ``t``)."""

    def __init__(self, gm, sde, parameterization):
        super().__init__()
        self.gm, self.sde, self.p = gm, sde, parameterization
        self.dummy = nn.Parameter(torch.zeros(()))
        self.seen = None

    def forward(self, x, c):
        self.seen = c
        t = c
        a = broadcast_like(self.sde.scale(t), x)
        s = broadcast_like(self.sde.std(t), x)
        score = self.gm.score_at(x, t, self.sde)
        x0 = self.gm.denoise(x, t, self.sde)
        eps = -s * score
        return {"eps": eps, "x0": x0, "score": s * score, "v": a * eps - s * x0}[self.p]


def _draw(gm, sde, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = 0.02 + (sde.T - 0.02) * torch.rand(n, generator=g, dtype=torch.float64)
    x0 = gm.sample(n, generator=g, dtype=torch.float64)
    a = broadcast_like(sde.scale(t), x0)
    s = broadcast_like(sde.std(t), x0)
    return a * x0 + s * torch.randn(x0.shape, generator=g, dtype=torch.float64), t


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("sde_name", sorted(STANDARD_SDES))
def test_parameterizations_recover_the_oracle(parameterization, sde_name):
    sde = STANDARD_SDES[sde_name]()
    gm = ring_mixture()
    model = ScoreModel(OracleNet(gm, sde, parameterization), sde, parameterization)
    x, t = _draw(gm, sde)
    score = gm.score_at(x, t, sde)
    s = broadcast_like(sde.std(t), x)
    scale = score.abs().max()
    assert (model(x, t) - score).abs().max() <= TOL * scale
    assert (model.score_fn(x, t) - score).abs().max() <= TOL * scale
    assert (model.eps(x, t) + s * score).abs().max() <= TOL * (s * score).abs().max()
    x0 = gm.denoise(x, t, sde)
    # x0 = (x - s eps) / a divides round-off by a >= 0.0067 (VP at T): allow 1e2 x TOL.
    assert (model.denoise(x, t) - x0).abs().max() <= TOL * max(1.0, float(x0.abs().max())) * 1e2


@pytest.mark.parametrize("time_input", ["log_std", "log_snr"])
def test_time_input_is_what_the_net_sees(time_input):
    sde = sd.VPSDE()
    net = OracleNet(ring_mixture(), sde, "eps")
    model = ScoreModel(net, sde, "eps", time_input=time_input)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x = torch.zeros(3, 2, dtype=torch.float64)
    try:
        model(x, t)
    except ValueError:
        pass  # the oracle net cannot read log-times; only the conditioning matters here
    expected = sde.std(t).log() if time_input == "log_std" else sde.log_snr(t)
    assert torch.allclose(net.seen, expected, rtol=0, atol=1e-12)


def test_sigma_data_scales_the_input():
    sde = sd.VESDE(sigma_min=0.01, sigma_max=10.0)

    class Probe(nn.Module):
        def forward(self, x, c):
            self.x = x
            return torch.zeros_like(x)

    net = Probe()
    model = ScoreModel(net, sde, "eps", sigma_data=0.5)
    x = torch.ones(2, 3, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    model(x, t)
    c_in = 1 / (sde.scale(t) ** 2 * 0.25 + sde.std(t) ** 2).sqrt()
    assert torch.allclose(net.x, c_in[:, None] * x, rtol=1e-14, atol=0)


def test_unknown_options_are_rejected_with_the_allowed_values():
    sde = sd.VPSDE()
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"parameterization must be one of \('eps', 'x0', 'score', 'v'\)"):
        ScoreModel(net, sde, "noise")
    with pytest.raises(ValueError, match="time_input must be one of"):
        ScoreModel(net, sde, "eps", time_input="sigma")
    with pytest.raises(TypeError, match="LinearSDE"):
        ScoreModel(net, object(), "eps")


def test_network_output_shape_is_checked():
    class Bad(nn.Module):
        def forward(self, x, c):
            return x[:, :1]

    model = ScoreModel(Bad(), sd.VPSDE(), "eps")
    with pytest.raises(ValueError, match=r"network must return a tensor of x's shape \(4, 2\)"):
        model(torch.zeros(4, 2), torch.full((4,), 0.5))


def test_discrete_model_uses_ddpm_index_and_alpha_bar():
    ddpm = sd.DDPM(num_steps=100)

    class IndexEcho(nn.Module):
        def forward(self, x, c):
            self.c = c
            return torch.ones_like(x)  # eps_hat = 1

    net = IndexEcho()
    model = DiscreteScoreModel(net, ddpm, "eps")
    n = torch.tensor([1, 7, 50, 100])
    t = ddpm.time(n)  # t = n / N must round-trip to n
    x = torch.zeros(4, 3, dtype=torch.float64)
    score = model(x, t)
    assert torch.equal(net.c, n.to(torch.float64))
    s = (1 - ddpm.alpha_bar(n)).sqrt()
    assert torch.allclose(score, -1 / s[:, None].expand(4, 3), rtol=1e-14, atol=0)
    assert model.sde.beta_max == pytest.approx(100 * 0.02)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_follows_input_dtype(dtype):
    from sdediff.nets import build_net
    model = ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1), sd.VPSDE(), "v").to(dtype)
    out = model(torch.randn(5, 2, dtype=dtype), torch.full((5,), 0.3, dtype=dtype))
    assert out.dtype == dtype and out.shape == (5, 2) and bool(torch.isfinite(out).all())


def test_score_at_time_zero_is_finite():
    # s(0) = 0: the std is floored at machine epsilon, so the score is huge but not NaN.
    model = ScoreModel(OracleNet(ring_mixture(), sd.VPSDE(), "eps"), sd.VPSDE(), "x0")
    out = model(torch.ones(2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    assert not bool(torch.isnan(out).any())
    assert math.isfinite(float(out.abs().max()))


# ------------------------------------------------------------------ class-conditional models

class LabelEcho(nn.Module):
    """eps_hat = (label + 1) everywhere (0 for y=None); records what it was called with."""

    num_classes = 3

    def forward(self, x, c, y=None):
        self.calls = getattr(self, "calls", []) + [y]
        fill = torch.zeros(x.shape[0], dtype=x.dtype) if y is None else (y + 1).to(x.dtype)
        return broadcast_like(fill, x).expand_as(x).clone()


@pytest.mark.parametrize("discrete", [False, True])
def test_labels_pass_through_every_view(discrete):
    net = LabelEcho()
    model = DiscreteScoreModel(net, sd.DDPM(num_steps=100), "eps") if discrete else ScoreModel(net, sd.VPSDE(), "eps")
    assert model.num_classes == 3 and model.null_label == 3
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.5, 0.9], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    _, s = model.coefficients(t)
    expected = -(y + 1).to(x.dtype)[:, None].expand(4, 2) / s[:, None]
    for fn in (model, model.score, model.score_fn, model.forward):
        assert torch.allclose(fn(x, t, y), expected, rtol=1e-14, atol=0)
        assert net.calls[-1] is y
    assert torch.equal(model.eps(x, t, y), (y + 1).to(x.dtype)[:, None].expand(4, 2))
    assert torch.allclose(model.denoise(x, t, y), model.denoise(x, t) - (y + 1).to(x.dtype)[:, None] * s[:, None]
                          / model.coefficients(t)[0][:, None], rtol=1e-12)
    # y=None calls the net with two arguments, exactly as for an unconditional model.
    assert torch.equal(model(x, t), torch.zeros_like(x))
    assert net.calls[-1] is None


def test_conditional_mlp_inside_a_score_model():
    from sdediff.nets import build_net
    torch.manual_seed(0)
    net = build_net("mlp", dim=2, hidden=16, depth=1, emb_dim=8, num_classes=4)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = ScoreModel(net, sd.VPSDE(), "eps")
    assert model.num_classes == 4 and model.null_label == 4 and "num_classes=4" in repr(model)
    x, t, y = torch.randn(5, 2), torch.full((5,), 0.4), torch.tensor([0, 1, 2, 3, 4])
    s = sd.VPSDE().std(t)[:, None]
    with torch.no_grad():
        assert torch.allclose(model(x, t, y), -net(x, t, y) / s)
        assert torch.equal(model(x, t), model(x, t, torch.full((5,), 4)))  # None is the null class
        assert not torch.allclose(model(x, t, torch.zeros(5, dtype=torch.long)), model(x, t))


def test_unconditional_model_rejects_labels():
    from sdediff.nets import build_net
    model = ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1), sd.VPSDE(), "eps")
    assert model.num_classes is None and model.null_label is None
    x, t = torch.randn(3, 2), torch.full((3,), 0.5)
    with pytest.raises(ValueError, match="y was given.*unconditional"):
        model(x, t, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="y must hold labels"):
        ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1, num_classes=2), sd.VPSDE())(x, t, torch.full((3,), 5))
