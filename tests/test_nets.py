"""Networks: shapes, zero initial output, time conditioning, gradients, rebuild from config, input checks."""

from __future__ import annotations

import json

import pytest
import torch

from sdediff.nets import (
    GaussianFourierEmbedding,
    ResidualMLP,
    SinusoidalEmbedding,
    UNet,
    build_net,
)

SMALL_UNET = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, groups=4)


def _train_steps(net: torch.nn.Module, x: torch.Tensor, steps: int = 1) -> None:
    """A few Adam steps regressing a t-dependent target, so the output must depend on t."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        t = torch.rand(x.shape[0], generator=g, dtype=x.dtype)
        target = x * t.view(-1, *([1] * (x.dim() - 1)))
        loss = (net(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


# ---------------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("emb", [GaussianFourierEmbedding(16, seed=3), SinusoidalEmbedding(16)])
def test_embedding_shape_and_dtype(emb: torch.nn.Module) -> None:
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    out = emb(t)
    assert out.shape == (5, 16) and out.dtype == torch.float64
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[-1])


def test_fourier_frequencies_are_a_fixed_buffer() -> None:
    emb = GaussianFourierEmbedding(32, scale=4.0, seed=7)
    assert len(list(emb.parameters())) == 0
    assert "weight" in emb.state_dict()
    assert torch.equal(emb.weight, GaussianFourierEmbedding(32, scale=4.0, seed=7).weight)
    g = torch.Generator().manual_seed(7)
    assert not torch.equal(emb.weight, GaussianFourierEmbedding(32, scale=4.0, seed=8).weight)
    assert GaussianFourierEmbedding(32, generator=g).weight.shape == (16,)


@pytest.mark.parametrize("dim", [0, 7, 2.0])
def test_embedding_rejects_bad_dim(dim) -> None:
    with pytest.raises(ValueError, match="dim"):
        SinusoidalEmbedding(dim)


# ---------------------------------------------------------------------------------- MLP


@pytest.mark.parametrize("dim", [2, 64])
@pytest.mark.parametrize("time_embedding", ["fourier", "sinusoidal"])
def test_mlp_shape_and_zero_init(dim: int, time_embedding: str) -> None:
    torch.manual_seed(0)
    net = ResidualMLP(dim, hidden=32, depth=2, time_embedding=time_embedding, emb_dim=16)
    x = torch.randn(7, dim)
    out = net(x, torch.rand(7))
    assert out.shape == (7, dim)
    assert torch.equal(out, torch.zeros_like(out))


def test_mlp_time_conditioning_and_gradients_reach_all_parameters() -> None:
    torch.manual_seed(0)
    net = ResidualMLP(2, hidden=32, depth=2, emb_dim=16, dropout=0.1)
    x = torch.randn(64, 2)
    _train_steps(net, x, steps=1)
    net.eval()
    with torch.no_grad():
        a, b = net(x, torch.full((64,), 0.1)), net(x, torch.full((64,), 0.9))
    assert not torch.allclose(a, b), "output must depend on t after a training step"

    net.train()
    net.zero_grad()
    net(x, torch.rand(64)).pow(2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_mlp_scalar_t_broadcasts() -> None:
    net = ResidualMLP(2, hidden=16, depth=1, emb_dim=8)
    x = torch.randn(3, 2)
    assert net(x, 0.5).shape == (3, 2)
    assert net(x, torch.tensor(0.5)).shape == (3, 2)


# ---------------------------------------------------------------------------------- UNet


@pytest.mark.parametrize(
    "channels,size,mults",
    [(1, 8, (1, 2)), (3, 8, (1, 2)), (1, 32, (1, 2, 2)), (3, 32, (1, 2, 2))],
)
def test_unet_shapes_and_zero_init(channels: int, size: int, mults: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    cfg = {**SMALL_UNET, "channel_mults": mults}
    net = UNet(in_channels=channels, image_size=size, attention_resolutions=(4, 8), **cfg)
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.rand(2))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))


def test_unet_time_conditioning_and_gradients_reach_all_parameters() -> None:
    torch.manual_seed(0)
    net = UNet(image_size=8, time_embedding="sinusoidal", dropout=0.1, **SMALL_UNET)
    x = torch.randn(8, 1, 8, 8)
    _train_steps(net, x, steps=1)
    net.eval()
    with torch.no_grad():
        a, b = net(x, torch.full((8,), 0.1)), net(x, torch.full((8,), 0.9))
    assert not torch.allclose(a, b), "output must depend on t after a training step"

    net.train()
    net.zero_grad()
    net(x, torch.rand(8)).pow(2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_unet_rejects_wrong_input_shape() -> None:
    net = UNet(image_size=8, **SMALL_UNET)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\), got \(4, 64\)"):
        net(torch.randn(4, 64), torch.rand(4))
    with pytest.raises(ValueError, match="t must have shape"):
        net(torch.randn(4, 1, 8, 8), torch.rand(3))


def test_mlp_rejects_wrong_input_shape() -> None:
    net = ResidualMLP(2, hidden=16, depth=1, emb_dim=8)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\), got \(4, 3\)"):
        net(torch.randn(4, 3), torch.rand(4))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"image_size": 9, "channel_mults": (1, 2)}, "image_size"),
        ({"base_channels": 12, "groups": 8}, "groups"),
        ({"time_embedding": "learned"}, "time_embedding"),
        ({"channel_mults": ()}, "channel_mults"),
    ],
)
def test_unet_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


# ---------------------------------------------------------------------------------- build_net


@pytest.mark.parametrize(
    "name,cfg,shape",
    [
        ("mlp", {"dim": 2, "hidden": 32, "depth": 2, "emb_dim": 16, "time_embedding": "sinusoidal"}, (5, 2)),
        ("unet", {"image_size": 8, **SMALL_UNET}, (2, 1, 8, 8)),
    ],
)
def test_build_net_round_trip(name: str, cfg: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = build_net(name, **cfg)
    assert net.net_name == name
    config = json.loads(json.dumps(net.config))  # must survive JSON
    # Perturb the weights so the comparison is not between two zero outputs.
    x = torch.randn(shape)
    _train_steps(net, x, steps=2)
    clone = build_net(name, **config)
    clone.load_state_dict(net.state_dict())
    assert clone.config == net.config
    net.eval()
    clone.eval()
    t = torch.rand(shape[0])
    with torch.no_grad():
        assert torch.equal(net(x, t), clone(x, t))


def test_build_net_unknown_name_lists_allowed() -> None:
    with pytest.raises(ValueError, match=r"'mlp', 'unet'"):
        build_net("transformer")


# ---------------------------------------------------------------------------------- dtype / device


@pytest.mark.parametrize("name", ["mlp", "unet"])
def test_float64_follows_input(name: str) -> None:
    torch.manual_seed(0)
    if name == "mlp":
        net, x = ResidualMLP(2, hidden=16, depth=1, emb_dim=8), torch.randn(4, 2, dtype=torch.float64)
    else:
        net, x = UNet(image_size=8, **SMALL_UNET), torch.randn(2, 1, 8, 8, dtype=torch.float64)
    net = net.to(torch.float64)
    with torch.no_grad():
        for p in net.parameters():  # make the output non-trivial
            p.add_(0.01 * torch.randn_like(p))
    t = torch.rand(x.shape[0], dtype=torch.float32)  # t's dtype is adapted to x
    out = net(x, t)
    assert out.dtype == torch.float64 and out.device == x.device
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    # Integer DDPM-style indices are accepted too.
    assert net(x, torch.arange(x.shape[0])).dtype == torch.float64
