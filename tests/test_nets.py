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


# ---------------------------------------------------------------------------------- class conditioning

COND_CASES = [
    ("mlp", {"dim": 2, "hidden": 32, "depth": 2, "emb_dim": 16}, (6, 2)),
    ("unet", {"image_size": 8, **SMALL_UNET}, (3, 1, 8, 8)),
]


def _perturb(net: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter (class embedding included) off its initialization."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("name,cfg,shape", COND_CASES)
def test_unconditional_config_is_unchanged_and_conditional_adds_num_classes(name, cfg, shape) -> None:
    plain = build_net(name, **cfg)
    assert "num_classes" not in plain.config and plain.num_classes is None and plain.null_label is None
    assert build_net(name, **cfg, num_classes=None).config == plain.config
    cond = build_net(name, **cfg, num_classes=4)
    assert cond.config == {**plain.config, "num_classes": 4}
    assert cond.num_classes == 4 and cond.null_label == 4
    # The unconditional state dict is unchanged; the conditional one only adds the class embedding.
    extra = set(cond.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(cond.state_dict())
    assert extra == {"class_embed.embedding.weight"}
    assert cond.state_dict()["class_embed.embedding.weight"].shape[0] == 5  # 4 classes + the null class


@pytest.mark.parametrize("name,cfg,shape", COND_CASES)
def test_fresh_conditional_net_equals_the_unconditional_one(name, cfg, shape) -> None:
    torch.manual_seed(3)
    plain = build_net(name, **cfg)
    torch.manual_seed(3)
    cond = build_net(name, **cfg, num_classes=3)
    for key, value in plain.state_dict().items():  # same weights from the same RNG state
        assert torch.equal(cond.state_dict()[key], value), key
    assert torch.count_nonzero(cond.class_embed.embedding.weight) == 0  # zero-initialized
    _perturb(plain)
    cond.load_state_dict({**cond.state_dict(), **plain.state_dict()})
    x, t = torch.randn(shape), torch.rand(shape[0])
    y = torch.arange(shape[0]) % 4  # includes the null class 3
    with torch.no_grad():
        ref = plain(x, t)
        assert ref.abs().sum() > 0
        for labels in (None, y):
            assert torch.allclose(cond(x, t, labels), ref, atol=1e-6)


@pytest.mark.parametrize("name,cfg,shape", COND_CASES)
def test_labels_condition_the_output_and_none_is_the_null_class(name, cfg, shape) -> None:
    torch.manual_seed(0)
    net = build_net(name, **cfg, num_classes=3)
    _perturb(net)
    net.eval()
    x, t = torch.randn(shape), torch.rand(shape[0])
    batch = shape[0]
    with torch.no_grad():
        outs = [net(x, t, torch.full((batch,), k)) for k in range(4)]
        assert torch.equal(net(x, t), outs[3])  # y=None is the null class
        assert torch.equal(net(x, t, None), outs[3])
        for i in range(4):
            for j in range(i):
                assert (outs[i] - outs[j]).abs().max() > 1e-4
        # A mixed batch: each example gets its own label, and a null entry is unconditional.
        y = torch.tensor([0, 3, 1, 2, 0, 3])[:batch]
        mixed = net(x, t, y)
        for i in range(batch):
            assert torch.allclose(mixed[i], outs[int(y[i])][i], atol=1e-6)


@pytest.mark.parametrize("name,cfg,shape", COND_CASES)
def test_gradients_reach_the_class_embedding_and_round_trip(name, cfg, shape) -> None:
    torch.manual_seed(0)
    net = build_net(name, **cfg, num_classes=2)
    x, t = torch.randn(shape), torch.rand(shape[0])
    y = torch.arange(shape[0]) % 3
    _train_steps(net, x, steps=1)  # leave the zero-initialized output layer so gradients reach the trunk
    net(x, t, y).pow(2).sum().backward()
    grad = net.class_embed.embedding.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    clone = build_net(name, **json.loads(json.dumps(net.config)))
    clone.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(clone(x, t, y), net(x, t, y))


@pytest.mark.parametrize("name,cfg,shape", COND_CASES)
def test_bad_labels_are_rejected_naming_y(name, cfg, shape) -> None:
    net = build_net(name, **cfg, num_classes=3)
    x, t = torch.randn(shape), torch.rand(shape[0])
    batch = shape[0]
    with pytest.raises(TypeError, match="y"):
        net(x, t, torch.zeros(batch))  # float labels
    with pytest.raises(TypeError, match="y"):
        net(x, t, torch.zeros(batch, dtype=torch.bool))
    with pytest.raises(TypeError, match="y"):
        net(x, t, [0] * batch)
    with pytest.raises(ValueError, match="y must have shape"):
        net(x, t, torch.zeros(batch, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="y must have shape"):
        net(x, t, torch.zeros(batch + 1, dtype=torch.long))
    for bad in (-1, 4):
        with pytest.raises(ValueError, match=r"y must hold labels in \[0, 3\]"):
            net(x, t, torch.full((batch,), bad))
    plain = build_net(name, **cfg)
    with pytest.raises(ValueError, match="y was given.*unconditional"):
        plain(x, t, torch.zeros(batch, dtype=torch.long))


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "3"])
@pytest.mark.parametrize("name,cfg", [(n, c) for n, c, _ in COND_CASES])
def test_bad_num_classes_is_rejected(name, cfg, bad) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_net(name, **cfg, num_classes=bad)


def test_mlp_out_dim_changes_only_the_output() -> None:
    net = ResidualMLP(3, hidden=16, depth=1, emb_dim=8, out_dim=5)
    assert net.config["out_dim"] == 5
    assert net(torch.randn(4, 3), torch.rand(4)).shape == (4, 5)
    assert "out_dim" not in ResidualMLP(3, hidden=16, depth=1, emb_dim=8).config
    with pytest.raises(ValueError, match="out_dim"):
        ResidualMLP(3, out_dim=0)
