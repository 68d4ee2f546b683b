"""The oracle's conditional answers against autograd, Bayes' rule and numerical integration."""
import math

import pytest
import torch

import sdediff as sd
from conftest import random_mixture

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
CONDITIONAL_SDES = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(sigma_min=0.01, sigma_max=10.0),
}
TIMES = [1e-3, 0.1, 0.5, 1.0]


def labelled_mixture(dim: int = 3, num_modes: int = 6, num_classes: int = 3, seed: int = 1) -> sd.GaussianMixture:
    """A random mixture whose component ``k`` has class ``k % num_classes`` (unequal class priors)."""
    base = random_mixture(dim=dim, num_modes=num_modes, seed=seed)
    return sd.GaussianMixture(base.means, base.stds, base.weights, labels=torch.arange(num_modes) % num_classes)


def labelled_ring(labels) -> sd.GaussianMixture:
    return sd.GaussianMixture(*sd.ring_params(), labels=torch.as_tensor(labels))


def batch(n: int = 30, dim: int = 3, num_classes: int = 3, t: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, dim, generator=g, dtype=F64)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x, torch.full((n,), t, dtype=F64), y


def grad_class_log_density(gm: sd.GaussianMixture, x, t, y, sde):
    """``grad_x log p_t(x | y_b)`` by autograd through each class's own mixture."""
    out = torch.empty_like(x)
    for c in range(gm.num_classes):
        rows = y == c
        x_req = x[rows].clone().requires_grad_(True)
        lp = gm.class_conditional(c).marginal_log_prob(x_req, t[rows], sde)
        (out[rows],) = torch.autograd.grad(lp.sum(), x_req)
    return out


def grad_classifier(gm: sd.GaussianMixture, x, t, y, sde):
    """``grad_x log p_t(y_b | x)`` by autograd through ``classifier_fn``."""
    x_req = x.clone().requires_grad_(True)
    chosen = gm.classifier_fn(sde)(x_req, t).gather(1, y[:, None]).sum()
    return torch.autograd.grad(chosen, x_req)[0]


# ------------------------------------------------------------------ labels
def test_labels_and_num_classes():
    gm = labelled_ring(torch.arange(8) % 3)
    assert gm.num_classes == 3
    assert gm.labels.dtype == torch.long
    torch.testing.assert_close(gm.class_prior(), torch.tensor([3, 3, 2], dtype=F64) / 8, **TOL)
    assert sd.GaussianMixture(*sd.ring_params()).num_classes is None
    assert "classes=3" in repr(gm)
    assert torch.equal(gm.noised(0.3, sd.VPSDE()).labels, gm.labels)


def test_class_conditional_is_the_class_components_renormalized():
    gm = labelled_mixture(num_modes=6, num_classes=3)
    for c in range(3):
        sub = gm.class_conditional(c)
        keep = torch.arange(6) % 3 == c
        assert sub.labels is None and sub.num_components == 2
        torch.testing.assert_close(sub.means, gm.means[keep], **TOL)
        torch.testing.assert_close(sub.weights, gm.weights[keep] / gm.weights[keep].sum(), **TOL)
    # p0(x) = sum_y p(y) p0(x | y)
    x = torch.randn(20, 3, dtype=F64)
    mix = torch.stack([gm.class_prior()[c].log() + gm.class_conditional(c).log_prob(x) for c in range(3)])
    torch.testing.assert_close(mix.logsumexp(0), gm.log_prob(x), **TOL)


# ------------------------------------------------------------------ conditional score
@pytest.mark.parametrize("t", TIMES)
@pytest.mark.parametrize("name", sorted(CONDITIONAL_SDES))
def test_conditional_score_is_gradient_of_class_log_density(name, t):
    sde = CONDITIONAL_SDES[name]()
    gm = labelled_mixture()
    x, tt, y = batch(t=t)
    score = gm.conditional_score_fn(sde)(x, tt, y)
    torch.testing.assert_close(score, grad_class_log_density(gm, x, tt, y, sde), **TOL)


def test_conditional_score_without_y_is_the_score(any_sde):
    gm = labelled_mixture()
    x, tt, _ = batch(t=0.3)
    cond = gm.conditional_score_fn(any_sde)
    assert cond.num_classes == 3
    assert torch.equal(cond(x, tt), gm.score_fn(any_sde)(x, tt))
    assert torch.equal(cond(x, tt, None), gm.score_fn(any_sde)(x, tt))


def test_conditional_score_with_one_component_per_class_is_that_gaussian():
    """Labels ``arange(K)``: ``p_t(x | k) = N(a mu_k, v_k I)``, score ``(a mu_k - x) / v_k``."""
    sde = sd.VPSDE()
    gm = labelled_ring(torch.arange(8))
    x, tt, y = batch(n=16, dim=2, num_classes=8, t=0.4)
    a, s = sde.scale(tt)[:, None], sde.std(tt)[:, None]
    v = a ** 2 * gm.stds[y, None] ** 2 + s ** 2
    torch.testing.assert_close(gm.conditional_score_fn(sde)(x, tt, y), (a * gm.means[y] - x) / v, **TOL)


def test_conditional_score_of_image_shaped_input():
    gm = sd.GaussianMixture(random_mixture(dim=12, num_modes=4).means, 0.5, labels=torch.tensor([0, 1, 1, 0]))
    sde = sd.VPSDE()
    x = torch.randn(5, 3, 2, 2, dtype=F64)
    t = torch.full((5,), 0.5, dtype=F64)
    y = torch.tensor([0, 1, 1, 0, 1])
    score = gm.conditional_score_fn(sde)
    assert torch.equal(score(x, t, y), score(x.reshape(5, 12), t, y).reshape(5, 3, 2, 2))
    assert gm.classifier_fn(sde)(x, t).shape == (5, 2)


# ------------------------------------------------------------------ classifier and Bayes
@pytest.mark.parametrize("t", [0.0] + TIMES)
@pytest.mark.parametrize("name", sorted(CONDITIONAL_SDES))
def test_bayes_score_plus_classifier_gradient_is_conditional_score(name, t):
    """``grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x)``: what classifier guidance uses."""
    sde = CONDITIONAL_SDES[name]()
    gm = labelled_mixture()
    x, tt, y = batch(t=t, seed=3)
    guided = gm.score_fn(sde)(x, tt) + grad_classifier(gm, x, tt, y, sde)
    torch.testing.assert_close(guided, gm.conditional_score_fn(sde)(x, tt, y), **TOL)


@pytest.mark.parametrize("name", sorted(CONDITIONAL_SDES))
def test_classifier_is_bayes_rule_and_normalized(name):
    sde = CONDITIONAL_SDES[name]()
    gm = labelled_mixture()
    x, tt, _ = batch(t=0.2, seed=4)
    log_prob = gm.classifier_fn(sde)(x, tt)
    assert log_prob.shape == (30, 3) and log_prob.dtype == F64
    torch.testing.assert_close(log_prob.exp().sum(1), torch.ones(30, dtype=F64), **TOL)
    # log p_t(y | x) = log p(y) + log p_t(x | y) - log p_t(x)
    by_hand = torch.stack([gm.class_prior()[c].log() + gm.class_conditional(c).marginal_log_prob(x, tt, sde)
                           for c in range(3)], 1) - gm.marginal_log_prob(x, tt, sde)[:, None]
    torch.testing.assert_close(log_prob, by_hand, **TOL)


def test_classifier_tends_to_class_priors_as_t_grows():
    """Noise washes the classes out: ``p_t(y | x) -> p(y)`` as ``t -> T``; at ``t ~ 0`` it is sure."""
    sde = sd.VPSDE()
    gm = labelled_ring(torch.arange(8) % 3)
    prior = gm.class_prior()
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=F64)  # typical of p_T
    classify = gm.classifier_fn(sde)
    gaps = []
    for t in [0.2, 0.4, 0.6, 0.8, 1.0]:
        p = classify(x, torch.full((200,), t, dtype=F64)).exp()
        gaps.append(float((p - prior).abs().max()))
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    # at T: |log p_T(y | x) - log p(y)| <= 2 a max|mu| |x| / (a^2 std^2 + s^2), with a(T) = 6.6e-3 under VP
    assert gaps[-1] < 0.01, gaps
    # at t ~ 0, a point on mode k is classified as class k % 3
    p0 = classify(gm.means, torch.full((8,), 1e-4, dtype=F64)).exp()
    assert torch.all(p0[torch.arange(8), torch.arange(8) % 3] > 1 - 1e-6)


# ------------------------------------------------------------------ condition on observed coordinates
def test_condition_two_components_by_hand_and_by_quadrature():
    means = torch.tensor([[1.0, -1.0], [-0.5, 2.0]], dtype=F64)
    stds = torch.tensor([0.7, 1.3], dtype=F64)
    weights = torch.tensor([0.3, 0.7], dtype=F64)
    gm = sd.GaussianMixture(means, stds, weights, labels=torch.tensor([1, 0]))
    o = 0.4
    mask = torch.tensor([True, False])
    post = gm.condition(mask, torch.tensor([o, 123.0], dtype=F64))   # the ignored entry is arbitrary
    # Bayes by hand: w'_k ∝ w_k N(o; mu_k1, std_k^2), component k's free part N(mu_k2, std_k^2)
    lik = [w * math.exp(-0.5 * ((o - m[0]) / s) ** 2) / (s * math.sqrt(2 * math.pi))
           for w, m, s in zip(weights.tolist(), means.tolist(), stds.tolist())]
    expected = torch.tensor(lik, dtype=F64) / sum(lik)
    torch.testing.assert_close(post.weights, expected, **TOL)
    torch.testing.assert_close(post.means, means[:, 1:], **TOL)
    torch.testing.assert_close(post.stds, stds, **TOL)
    assert torch.equal(post.labels, gm.labels) and post.dim == 1
    torch.testing.assert_close(post.class_prior(), expected.flip(0), **TOL)   # p(y | o): class of each component
    # numerical integration of p(o, x2) over x2 (Riemann sum of a smooth, rapidly decaying integrand)
    h = 1e-3
    x2 = torch.arange(-15.0, 18.0, h, dtype=F64)
    log_joint = gm.log_prob(torch.stack([torch.full_like(x2, o), x2], 1))
    log_evidence = log_joint.logsumexp(0) + math.log(h)
    torch.testing.assert_close(post.log_prob(x2[:, None]), log_joint - log_evidence, **TOL)
    mean_quad = (x2 * (log_joint - log_evidence).exp()).sum() * h
    torch.testing.assert_close(mean_quad, (post.weights * post.means[:, 0]).sum(), **TOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_condition_log_density_is_joint_minus_observed_marginal(seed):
    """``log p(x_U | x_O) = log p(x) - log p_O(x_O)``, with ``p_O`` the mixture of the observed coordinates."""
    gm = random_mixture(dim=8, num_modes=5, seed=seed)
    g = torch.Generator().manual_seed(10 + seed)
    mask = torch.zeros(8, dtype=torch.bool)
    mask[torch.randperm(8, generator=g)[:4]] = True
    observed_marginal = sd.GaussianMixture(gm.means[:, mask], gm.stds, gm.weights)
    for _ in range(4):
        full = gm.sample(1, generator=g, dtype=F64)[0]
        post = gm.condition(mask, full)
        x = full + 0.7 * torch.randn(16, 8, generator=g, dtype=F64)
        x[:, mask] = full[mask]
        expected = gm.log_prob(x) - observed_marginal.log_prob(full[mask][None])
        torch.testing.assert_close(post.log_prob(x[:, ~mask]), expected, **TOL)


def test_condition_on_image_shaped_mask_and_embed():
    gm = random_mixture(dim=8, num_modes=5, seed=3)
    mask = torch.tensor([[[True, False], [False, True]], [[True, True], [False, False]]])
    observed = torch.randn(2, 2, 2, dtype=F64)
    post = gm.condition(mask, observed)
    assert post.dim == 4
    # the same as conditioning on the flattened example
    flat = gm.condition(mask.reshape(8), observed.reshape(8))
    torch.testing.assert_close(post.weights, flat.weights, **TOL)
    full = sd.GaussianMixture.embed(post.sample(1000, generator=torch.Generator().manual_seed(0), dtype=F64),
                                    mask, observed)
    assert full.shape == (1000, 2, 2, 2)
    assert torch.equal(full[:, mask], observed[mask].expand(1000, -1))
    assert torch.equal(full[:, ~mask], post.sample(1000, generator=torch.Generator().manual_seed(0), dtype=F64))


def test_condition_on_nothing_observed_is_the_mixture():
    gm = random_mixture(dim=4, num_modes=3)
    post = gm.condition(torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=F64))
    x = torch.randn(10, 4, dtype=F64)
    torch.testing.assert_close(post.log_prob(x), gm.log_prob(x), **TOL)


def test_condition_far_from_most_components_stays_exact():
    """Posterior weights that underflow to 0 leave log-densities, class conditionals and noising intact."""
    gm = labelled_ring(torch.arange(8))
    post = gm.condition(torch.tensor([True, False]), torch.tensor([2.0, 0.0], dtype=F64))
    assert float(post.weights[4]) == 0.0                                     # exp(-800) underflows
    far = post.class_conditional(4)                                          # still N(mu_4[1], std^2)
    torch.testing.assert_close(far.log_prob(torch.zeros(1, 1, dtype=F64)),
                               torch.tensor([-0.5 * math.log(2 * math.pi * 0.01)], dtype=F64), **TOL)
    noised = post.noised(0.5, sd.VPSDE())
    x = torch.randn(5, 1, dtype=F64)
    assert torch.isfinite(noised.log_prob(x)).all()
    torch.testing.assert_close(noised.log_prob(x), post.marginal_log_prob(x, 0.5, sd.VPSDE()), **TOL)
    assert torch.isfinite(post.sample(100, dtype=F64)).all()


# ------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("labels, err, match", [
    (torch.tensor([0, 1]), ValueError, r"labels must have shape \(K,\) = \(3,\)"),
    (torch.tensor([[0, 1, 2]]), ValueError, "labels must have shape"),
    (torch.tensor([0.0, 1.0, 2.0]), TypeError, "labels must be an integer tensor"),
    (torch.tensor([True, False, True]), TypeError, "labels must be an integer tensor"),
    (torch.tensor([0, -1, 1]), ValueError, "labels must be non-negative"),
    (torch.tensor([0, 2, 2]), ValueError, r"classes \[1\] have no component"),
])
def test_bad_labels(labels, err, match):
    with pytest.raises(err, match=match):
        sd.GaussianMixture(torch.zeros(3, 2), torch.ones(3), labels=labels)


def test_conditional_methods_need_labels():
    gm = sd.GaussianMixture(*sd.ring_params())
    for method in ("conditional_score_fn", "classifier_fn"):
        with pytest.raises(ValueError, match=f"{method} needs class labels"):
            getattr(gm, method)(sd.VPSDE())
    with pytest.raises(ValueError, match="class_conditional needs class labels"):
        gm.class_conditional(0)


@pytest.mark.parametrize("y, err, match", [
    (torch.tensor([0, 1, 2, 3]), ValueError, r"y must hold class labels in \[0, 3\), got 3"),
    (torch.tensor([0, -1, 2, 0]), ValueError, r"y must hold class labels in \[0, 3\), got -1"),
    (torch.tensor([0, 1, 2]), ValueError, r"y must have shape \(B,\) = \(4,\)"),
    (torch.zeros(4, 1, dtype=torch.long), ValueError, r"y must have shape \(B,\) = \(4,\)"),
    (torch.zeros(4), TypeError, "y must be an integer tensor"),
    (torch.zeros(4, dtype=torch.bool), TypeError, "y must be an integer tensor"),
    (1, TypeError, r"y must be None or an integer tensor .* torch.full"),
])
def test_bad_y(y, err, match):
    score = labelled_mixture().conditional_score_fn(sd.VPSDE())
    with pytest.raises(err, match=match):
        score(torch.zeros(4, 3, dtype=F64), torch.full((4,), 0.5, dtype=F64), y)


def test_bad_class_conditional():
    gm = labelled_mixture()
    with pytest.raises(ValueError, match=r"y must be a class label in \[0, 3\), got 3"):
        gm.class_conditional(3)
    with pytest.raises(TypeError, match="y must be an int"):
        gm.class_conditional(1.0)
    assert gm.class_conditional(torch.tensor(1)).num_components == 2


@pytest.mark.parametrize("mask, observed, err, match", [
    (torch.tensor([1, 0, 0, 1]), torch.zeros(4), TypeError, "mask must be a bool tensor"),
    (torch.tensor([True, False]), torch.zeros(2), ValueError, r"mask must have the example shape \(4 entries"),
    (torch.ones(4, dtype=torch.bool), torch.zeros(4), ValueError, "mask observes every coordinate"),
    (torch.tensor([True, False, False, True]), torch.zeros(2), ValueError,
     r"observed must have mask's \(the example's\) shape \(4,\)"),
    (torch.tensor([True, False, False, True]), torch.zeros(4, dtype=torch.long), TypeError,
     "observed must be a floating tensor"),
    (torch.tensor([True, False, False, True]), torch.tensor([float("nan"), 0.0, 0.0, 0.0]), ValueError,
     "observed must be finite where mask is True"),
])
def test_bad_condition(mask, observed, err, match):
    with pytest.raises(err, match=match):
        random_mixture(dim=4, num_modes=3).condition(mask, observed)


def test_bad_embed():
    mask = torch.tensor([True, False, False, True])
    with pytest.raises(ValueError, match=r"free must have shape \(n, 2\)"):
        sd.GaussianMixture.embed(torch.zeros(5, 3), mask, torch.zeros(4))
    with pytest.raises(ValueError, match="observed must have mask's shape"):
        sd.GaussianMixture.embed(torch.zeros(5, 2), mask, torch.zeros(3))
