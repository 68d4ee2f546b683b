"""Classifier-free and classifier guidance, and plug-and-play, against the exact oracle (float64)."""
import math

import pytest
import torch

import sdediff as sd

from conftest import STANDARD_SDES, ring_mixture

F64 = torch.float64


def labelled_ring(std: float = 0.1, labels=None) -> sd.GaussianMixture:
    """``sd.ring_params()``'s 8-mode ring (radius 2) with classes ``arange(8) % 2`` (alternating modes)."""
    means, _, weights = sd.ring_params()
    return sd.GaussianMixture(means, std, weights, labels=torch.arange(8) % 2 if labels is None else labels)


def class_fraction(x, mix: sd.GaussianMixture, y: int) -> float:
    """The fraction of samples whose most probable component (under ``mix``) is of class ``y``."""
    stats = sd.mode_statistics(x, mix.means, mix.stds, mix.weights)
    return sum(f for f, label in zip(stats["frequencies"], mix.labels.tolist()) if label == y)


def random_inputs(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 5 * torch.randn(n, 2, generator=g, dtype=F64), g


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("sde_name", sorted(STANDARD_SDES))
def test_exact_classifier_guidance_is_the_conditional_score(sde_name):
    sde = STANDARD_SDES[sde_name]()
    mix = labelled_ring()
    x, g = random_inputs()
    cond = mix.conditional_score_fn(sde)
    for y in (0, 1, torch.randint(0, 2, (64,), generator=g)):
        guided = sd.classifier_guidance(mix.score_fn(sde), mix.classifier_fn(sde), y, scale=1.0)
        labels = y if isinstance(y, torch.Tensor) else torch.full((64,), y)
        for t in (1e-3, 0.1, 0.5, 1.0):
            tv = torch.full((64,), t, dtype=F64)
            err = (guided(x, tv) - cond(x, tv, labels)).abs().max()
            assert err < 1e-10, (sde_name, y, t, float(err))


def test_classifier_guidance_works_inside_no_grad_and_scales():
    sde = sd.VPSDE()
    mix = labelled_ring()
    x, _ = random_inputs()
    t = torch.full((64,), 0.4, dtype=F64)
    s, clf = mix.score_fn(sde), mix.classifier_fn(sde)
    with torch.no_grad():
        g1 = sd.classifier_guidance(s, clf, 1, scale=1.0)(x, t)
        g3 = sd.classifier_guidance(s, clf, 1, scale=3.0)(x, t)
        g0 = sd.classifier_guidance(s, clf, 1, scale=0.0)(x, t)
    assert torch.equal(g0, s(x, t))
    torch.testing.assert_close(g3 - s(x, t), 3 * (g1 - s(x, t)), rtol=1e-12, atol=1e-12)


def test_cfg_w0_is_conditional_bit_for_bit():
    sde = sd.VPSDE()
    mix = labelled_ring()
    cond = mix.conditional_score_fn(sde)
    y = torch.arange(200) % 2
    x, _ = random_inputs(200)
    t = torch.full((200,), 0.3, dtype=F64)
    guided = sd.classifier_free_guidance(cond, y, 0)
    assert torch.equal(guided(x, t), cond(x, t, y))
    runs = [sd.sample(fn, sde, (200, 2), sampler="ddim", steps=10, dtype=F64,
                      generator=torch.Generator().manual_seed(3))
            for fn in (guided, lambda x, t: cond(x, t, y))]
    assert torch.equal(*runs)


@pytest.mark.parametrize("w", [0.5, 1.0, 3.0, 8.0, -1.0])
def test_cfg_closed_form(w):
    sde = sd.VPSDE()
    mix = labelled_ring()
    cond = mix.conditional_score_fn(sde)
    x, g = random_inputs()
    y = torch.randint(0, 2, (64,), generator=g)
    for t in (0.01, 0.2, 0.7):
        tv = torch.full((64,), t, dtype=F64)
        expected = (1 + w) * cond(x, tv, y) - w * cond(x, tv, None)
        torch.testing.assert_close(sd.classifier_free_guidance(cond, y, w)(x, tv), expected, rtol=1e-12, atol=1e-12)


def test_cfg_one_batched_call_with_a_null_label():
    sde = sd.VPSDE()
    mix = labelled_ring()
    cond = mix.conditional_score_fn(sde)
    calls = []

    def net_like(x, t, y):  # reads label 2 as "unconditional", as a network's extra class would
        calls.append(x.shape[0])
        assert y is not None
        null = y == 2
        out = cond(x, t, torch.where(null, 0, y))
        if bool(null.any()):
            out[null] = cond(x[null], t[null], None)
        return out

    x, _ = random_inputs()
    t = torch.full((64,), 0.3, dtype=F64)
    guided = sd.classifier_free_guidance(net_like, 1, 2.0, null_label=2)
    torch.testing.assert_close(guided(x, t), 3 * cond(x, t, torch.ones(64, dtype=torch.long))
                               - 2 * cond(x, t, None), rtol=1e-12, atol=1e-12)
    assert calls == [128]  # one call on the doubled batch
    big = torch.zeros(sd.guidance.CFG_BATCH_LIMIT, 2, dtype=F64)
    calls.clear()
    with pytest.raises(AssertionError):  # above the limit: two calls, the second with y=None
        guided(big, torch.full((big.shape[0],), 0.3, dtype=F64))


# ------------------------------------------------------------------ sampling
@pytest.mark.parametrize("y", [0, 1])
def test_guided_samples_match_exact_conditional_samples(y):
    """Per-mode statistics of classifier-guided samples (exact classifier, dpm_solver 50 steps on
    the log-SNR grid) within 1.5x the worst of 4 exact conditional sample sets of the same size."""
    sde = sd.VPSDE()
    mix = labelled_ring()
    sub = mix.class_conditional(y)
    n = 1000
    g = torch.Generator().manual_seed(5)
    floors = [sd.mode_statistics(sub.sample(n, generator=g, dtype=F64), sub.means, sub.stds, sub.weights)
              for _ in range(4)]
    guided = sd.classifier_guidance(mix.score_fn(sde), mix.classifier_fn(sde), y)
    x = sd.sample(guided, sde, (n, 2), sampler="dpm_solver", steps=50, grid="logsnr", dtype=F64,
                  generator=torch.Generator().manual_seed(1))
    assert class_fraction(x, mix, y) == 1.0
    stats = sd.mode_statistics(x, sub.means, sub.stds, sub.weights)
    assert stats["num_empty"] == 0
    for key in ("weights_tv", "mean_error", "frechet"):
        assert stats[key] <= 1.5 * max(f[key] for f in floors), (key, stats[key])
    spread = [f["spread_ratio"] for f in floors]
    assert min(spread) - 0.03 <= stats["spread_ratio"] <= max(spread) + 0.03


def test_cfg_raises_the_class_fraction_monotonically():
    """Overlapping classes (mode std 1.2 on the radius-2 ring): the fraction of samples whose most
    probable component is of class 0 rises with w (measured 0.58, 0.63, 0.73, 0.86 for n = 1000)."""
    sde = sd.VPSDE()
    mix = labelled_ring(std=1.2)
    cond = mix.conditional_score_fn(sde)
    fractions = []
    for w in (0, 1, 3, 8):
        x = sd.sample(sd.classifier_free_guidance(cond, 0, w), sde, (1000, 2), sampler="dpm_solver", steps=20,
                      grid="logsnr", dtype=F64, generator=torch.Generator().manual_seed(1))
        fractions.append(class_fraction(x, mix, 0))
    assert all(b > a + 0.02 for a, b in zip(fractions, fractions[1:])), fractions


# ------------------------------------------------------------------ bad input
def test_bad_labels_and_weights():
    sde = sd.VPSDE()
    mix = labelled_ring()
    cond = mix.conditional_score_fn(sde)
    with pytest.raises(ValueError, match=r"y .*\[0, 2\)"):
        sd.classifier_free_guidance(cond, 2, 1.0)  # num_classes read from the score function
    with pytest.raises(ValueError, match="y"):
        sd.classifier_free_guidance(cond, torch.tensor([0, 5]), 1.0)
    with pytest.raises(ValueError, match="y"):
        sd.classifier_free_guidance(cond, -1, 1.0)
    with pytest.raises(ValueError, match=r"y .*\[0, 4\)"):
        sd.classifier_free_guidance(lambda x, t, y: x, 4, 1.0, num_classes=4)
    for bad_y in (True, 0.5, torch.tensor([0.0, 1.0]), torch.tensor([True])):
        with pytest.raises(TypeError, match="y"):
            sd.classifier_free_guidance(cond, bad_y, 1.0)
    with pytest.raises(ValueError, match="y"):
        sd.classifier_free_guidance(cond, torch.zeros(2, 2, dtype=torch.long), 1.0)
    for bad_w in (float("nan"), float("-inf"), float("inf")):
        with pytest.raises(ValueError, match="w must be finite"):
            sd.classifier_free_guidance(cond, 0, bad_w)
        with pytest.raises(ValueError, match="scale must be finite"):
            sd.classifier_guidance(mix.score_fn(sde), mix.classifier_fn(sde), 0, bad_w)
    with pytest.raises(TypeError, match="w"):
        sd.classifier_free_guidance(cond, 0, "3")
    with pytest.raises(TypeError, match="score_fn"):
        sd.classifier_free_guidance(None, 0, 1.0)
    # the batch of y must match x's at call time
    guided = sd.classifier_free_guidance(cond, torch.zeros(3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="y has batch 3 but x has batch 4"):
        guided(torch.zeros(4, 2, dtype=F64), torch.full((4,), 0.5, dtype=F64))


def test_bad_classifier_output():
    sde = sd.VPSDE()
    mix = labelled_ring()
    x = torch.zeros(4, 2, dtype=F64)
    t = torch.full((4,), 0.5, dtype=F64)
    s = mix.score_fn(sde)
    for bad in (lambda x, t: x.sum(1), lambda x, t: x[:, :, None], lambda x, t: x[:3]):
        with pytest.raises(ValueError, match=r"log_prob_fn must return .*\(B, num_classes\)"):
            sd.classifier_guidance(s, bad, 0)(x, t)
    with pytest.raises(TypeError, match="log_prob_fn"):
        sd.classifier_guidance(s, lambda x, t: 1.0, 0)(x, t)
    with pytest.raises(ValueError, match=r"y must hold class labels in \[0, 2\)"):
        sd.classifier_guidance(s, mix.classifier_fn(sde), 2)(x, t)
    with pytest.raises(TypeError, match="log_prob_fn"):
        sd.classifier_guidance(s, None, 0)


# ------------------------------------------------------------------ plug-and-play
def test_plug_and_play_moves_to_a_posterior_mode():
    """Gaussian constraint (std 1) at the midpoint of two adjacent ring modes (std 0.5). The exact
    posterior is a mixture whose two heavy components sit at ``0.8 mu_k + 0.2 m`` (std 0.45), 1.22
    from the start. Asserted for every one of 64 estimates from the midpoint: the exact posterior
    log-density rises by > 1 nat (measured mean 2.5), and the estimate lies within 0.75 of one of
    the two posterior modes (measured median 0.47, max 0.68); both modes are reached."""
    sde = sd.VPSDE()
    mix = ring_mixture()  # radius 4, std 0.5
    m = 0.5 * (mix.means[0] + mix.means[1])

    def log_constraint(x):
        return -((x - m) ** 2).sum(1) / 2

    def log_posterior(x):
        return mix.log_prob(x) + log_constraint(x)

    x0 = m.expand(64, 2).clone()
    x = sd.plug_and_play(mix.score_fn(sde), sde, log_constraint, x0, generator=torch.Generator().manual_seed(0))
    assert x.shape == x0.shape and torch.equal(x0, m.expand(64, 2))
    assert bool((log_posterior(x) > log_posterior(x0) + 1.0).all())
    modes = 0.8 * mix.means[:2] + 0.2 * m
    dist = torch.cdist(x, modes)
    assert float(dist.min(1).values.max()) < 0.75
    assert set(dist.argmin(1).tolist()) == {0, 1}


def test_plug_and_play_bad_input():
    sde = sd.VPSDE()
    s = labelled_ring().score_fn(sde)
    x0 = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="log_constraint must return"):
        sd.plug_and_play(s, sde, lambda x: x, x0, steps=2)
    with pytest.raises(ValueError, match="lr"):
        sd.plug_and_play(s, sde, lambda x: x.sum(1), x0, lr=float("nan"))
    with pytest.raises(ValueError, match="t_min"):
        sd.plug_and_play(s, sde, lambda x: x.sum(1), x0, t_min=0.6, t_max=0.5)
    with pytest.raises(TypeError, match="x_init"):
        sd.plug_and_play(s, sde, lambda x: x.sum(1))
    out = sd.plug_and_play(s, sde, lambda x: x.sum(1), shape=(3, 2), steps=3, dtype=F64,
                           t_schedule=torch.tensor([0.5, 0.3, 0.1]))
    assert out.shape == (3, 2) and bool(torch.isfinite(out).all())
