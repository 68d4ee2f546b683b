"""One way to accept randomness (generator / int seed / None) and per-example seeds."""
from __future__ import annotations

import pytest
import torch

import sdediff as sd
from sdediff._random import SeededNoise, as_generator, as_noise

from _sampler_problems import ring

VP = sd.VPSDE()
SHAPE = (1000, 2)


pytestmark = pytest.mark.usefixtures("one_thread")


def elementwise_ring_score(sde):
    """The ring's exact score written with elementwise operations only (no matmul, no reduction
    across the batch), so an example's score is bitwise the same in any batch. The oracle's own
    score uses matrix products, whose BLAS blocking depends on the batch size (last-bit
    differences), so it is compared to this one to round-off only."""
    gm = ring()
    means, var0 = gm.means, float(gm.stds[0]) ** 2

    def score(x, t):
        a, s = sde.scale(t)[:, None], sde.std(t)[:, None]
        v = a * a * var0 + s * s
        diffs = [x - a * mu for mu in means]
        logits = [-(d[:, :1] * d[:, :1] + d[:, 1:] * d[:, 1:]) / (2 * v) for d in diffs]
        m = logits[0]
        for lg in logits[1:]:
            m = torch.maximum(m, lg)
        w = [torch.exp(lg - m) for lg in logits]
        total, num = w[0], -w[0] * diffs[0]
        for wk, d in zip(w[1:], diffs[1:]):
            total = total + wk
            num = num - wk * d
        return num / (total * v)

    return score


def test_elementwise_score_is_the_oracle():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    t = torch.full((50,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(elementwise_ring_score(VP)(x, t), ring().score_fn(VP)(x, t),
                               rtol=1e-12, atol=1e-12)


def test_as_generator():
    assert as_generator(None) is None
    g = torch.Generator()
    assert as_generator(g) is g
    a, b = as_generator(5), torch.Generator().manual_seed(5)
    assert torch.equal(torch.randn(3, generator=a), torch.randn(3, generator=b))
    for bad in (1.5, "3", True):
        with pytest.raises(TypeError, match="generator"):
            as_generator(bad)


def test_sample_accepts_an_int_seed():
    score = ring().score_fn(VP)
    kw = dict(sampler="euler_maruyama", steps=5, dtype=torch.float64)
    a = sd.sample(score, VP, (8, 2), generator=0, **kw)
    b = sd.sample(score, VP, (8, 2), generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a, b)


def test_generator_path_keeps_the_generator_numbers():
    """A noise source over a generator draws exactly torch.randn's numbers."""
    x = torch.empty(4, 3, dtype=torch.float64)
    z = as_noise(torch.Generator().manual_seed(3)).randn_like(x)
    assert torch.equal(z, torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64))


def test_seeded_noise_is_a_pure_function_of_seed_counter_coordinate():
    big = SeededNoise(list(range(100)))
    small = SeededNoise([41, 7])
    x_big, x_small = torch.empty(100, 3, 2), torch.empty(2, 3, 2)
    for _ in range(3):
        zb, zs = big.randn_like(x_big.double()), small.randn_like(x_small.double())
        assert torch.equal(zb[[41, 7]], zs)
    assert not torch.equal(zb[0], zb[1])


def test_prior_draw_is_standard_normal():
    stats = pytest.importorskip("scipy.stats")
    z = SeededNoise(list(range(20000))).randn((20000, 2), dtype=torch.float64).flatten().numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-3
    x = sd.sample(lambda x, t: -x, VP, (20000, 2), sampler="euler", steps=1, denoise=False,
                  seeds=range(20000), dtype=torch.float64, callback=None)
    assert x.shape == (20000, 2)


CASES = [("euler_maruyama", {}), ("ancestral", {}), ("pc", {"norm": "example"}), ("ddim", {"eta": 1.0}),
         ("sde", {})]


@pytest.mark.parametrize("name,opts", CASES, ids=[c[0] for c in CASES])
def test_seeds_make_an_example_independent_of_its_batch(name, opts):
    """An example's result depends on its seed only: bitwise the same alone and in a batch of 1000."""
    seeds = list(range(10_000, 10_000 + SHAPE[0]))
    kw = dict(sampler=name, steps=10, dtype=torch.float64, **opts)
    score = elementwise_ring_score(VP)
    full = sd.sample(score, VP, SHAPE, seeds=seeds, **kw)
    for j in (0, 513, 999):
        alone = sd.sample(score, VP, (1, 2), seeds=[seeds[j]], **kw)
        assert torch.equal(alone, full[j:j + 1]), (name, j)
    # The oracle's own score (matrix products) agrees to round-off.
    oracle = sd.sample(ring().score_fn(VP), VP, (1, 2), seeds=[seeds[513]], **kw)
    torch.testing.assert_close(oracle, full[513:514], rtol=0, atol=1e-9)
    other = sd.sample(score, VP, (1, 2), seeds=[seeds[513] + SHAPE[0]], **kw)
    assert not torch.equal(other, full[513:514])


def test_seeds_as_a_tensor_and_prior_only_depends_on_the_seed():
    score = elementwise_ring_score(VP)
    kw = dict(sampler="ddim", steps=3, dtype=torch.float64)
    a = sd.sample(score, VP, (3, 2), seeds=torch.tensor([5, 6, 7]), **kw)
    b = sd.sample(score, VP, (3, 2), seeds=[7, 6, 5], **kw)
    assert torch.equal(a, b.flip(0))


@pytest.mark.parametrize("kwargs,err,match", [
    ({"seeds": [1, 2], "generator": 0}, ValueError, "generator or seeds"),
    ({"seeds": [1, 2, 3]}, ValueError, "seeds"),
    ({"seeds": [1.5, 2]}, TypeError, "seeds"),
    ({"seeds": torch.zeros(2)}, TypeError, "seeds"),
    ({"seeds": [1, 2], "sampler": "pc"}, ValueError, "norm='example'"),
    ({"seeds": [1, 2], "sampler": "sde", "brownian": "interval"}, ValueError, "brownian='tree'"),
])
def test_bad_seeds(kwargs, err, match):
    kw = dict(sampler="euler_maruyama", steps=2)
    kw.update(kwargs)
    with pytest.raises(err, match=match):
        sd.sample(ring().score_fn(VP), VP, (2, 2), **kw)


def test_seeded_failures_replay_and_name_the_step():
    def score(x, t):
        return torch.full_like(x, float("nan")) if float(t[0]) < 0.5 else -x

    with pytest.raises(FloatingPointError, match=r"step 4, t = 0\.36"):
        sd.sample(score, VP, (4, 2), sampler="euler_maruyama", steps=5, eps=0.2, seeds=[1, 2, 3, 4],
                  dtype=torch.float64)
