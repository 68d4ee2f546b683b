"""Noisy classifiers: shapes, uniform at initialization, log-softmax view, and training on the ring
against the exact noisy classifier of the Gaussian-mixture oracle."""
import json
import math

import pytest
import torch

import sdediff as sd
from sdediff.classifier import NoisyClassifier, classifier_log_prob_fn, train_classifier
from sdediff.sde import broadcast_like

from conftest import ring_mixture




def _exact_log_prob(gm, sde):
    """``log p_t(k | x)`` for labels = component index: responsibilities of the noised mixture."""
    if hasattr(gm, "classifier_fn"):
        try:
            labelled = sd.GaussianMixture(gm.means, gm.stds, gm.weights, labels=torch.arange(gm.num_components))
            return labelled.classifier_fn(sde)
        except TypeError:
            pass

    def log_prob(x, t):
        x = x.to(torch.float64)
        a, s = sde.scale(t).to(x)[:, None], sde.std(t).to(x)[:, None]
        v = a ** 2 * gm.stds[None, :] ** 2 + s ** 2  # (B, K)
        sq = (x[:, None, :] - a[:, :, None] * gm.means[None]).pow(2).sum(-1)
        log_comp = gm.weights.log()[None] - 0.5 * (sq / v + gm.dim * torch.log(2 * math.pi * v))
        return torch.log_softmax(log_comp, dim=-1)

    return log_prob


def test_shapes_uniform_init_and_rebuild():
    clf = NoisyClassifier(4, num_classes=3, hidden=16, depth=1, emb_dim=8)
    x, t = torch.randn(5, 4), torch.rand(5)
    logits = clf(x, t)
    assert logits.shape == (5, 3)
    log_prob = classifier_log_prob_fn(clf)
    assert log_prob.num_classes == 3
    assert torch.allclose(log_prob(x, t), torch.full((5, 3), -math.log(3)))  # zero-initialized output
    assert clf(x.reshape(5, 1, 2, 2), t).shape == (5, 3)  # (B, *dims) is flattened
    assert clf(x, 0.5).shape == (5, 3)  # a scalar t broadcasts
    config = json.loads(json.dumps(clf.config))
    assert config["dim"] == 4 and config["num_classes"] == 3
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    clone = NoisyClassifier(**config)
    clone.load_state_dict(clf.state_dict())
    assert torch.equal(clone(x, t), clf(x, t))


def test_log_prob_is_normalized_and_differentiable_in_x():
    torch.manual_seed(0)
    clf = NoisyClassifier(2, num_classes=4, hidden=16, depth=1, emb_dim=8)
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(6, 2, requires_grad=True)
    lp = classifier_log_prob_fn(clf)(x, torch.rand(6))
    assert torch.allclose(lp.exp().sum(1), torch.ones(6))
    (grad,) = torch.autograd.grad(lp[:, 1].sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        NoisyClassifier(2, num_classes=1)
    clf = NoisyClassifier(2, num_classes=3, hidden=8, depth=1, emb_dim=8)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        clf(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(TypeError, match="classifier must be callable"):
        classifier_log_prob_fn(3)
    sde, data = sd.VPSDE(), torch.zeros(10, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        train_classifier(clf, sde, data, torch.full((10,), 3), steps=1, progress=False)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        train_classifier(clf, sde, data, torch.zeros(10), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(10,\)"):
        train_classifier(clf, sde, data, torch.zeros(9, dtype=torch.long), steps=1, progress=False)
    with pytest.raises(TypeError, match="LinearSDE"):
        train_classifier(clf, object(), data, torch.zeros(10, dtype=torch.long), steps=1, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train_classifier(clf, sde, data, torch.zeros(10, dtype=torch.long), steps=0, progress=False)


def test_training_is_reproducible(one_thread):
    gm = ring_mixture()
    x, labels = gm.sample(200, generator=torch.Generator().manual_seed(0), return_labels=True)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)  # the weights' initialization; train_classifier's seed fixes the draws
        clf = NoisyClassifier(2, num_classes=8, hidden=16, depth=1, emb_dim=8)
        runs.append(train_classifier(clf, sd.VPSDE(), x, labels, steps=5, batch_size=32, seed=4, progress=False))
        assert not clf.training  # left in eval mode
    assert runs[0] == runs[1] and len(runs[0]) == 5


def test_trained_on_the_ring_matches_the_exact_noisy_classifier(one_thread):
    gm, sde = ring_mixture(), sd.VPSDE()
    x, labels = gm.sample(4000, generator=torch.Generator().manual_seed(0), return_labels=True)
    torch.manual_seed(0)
    clf = NoisyClassifier(2, num_classes=8, hidden=64, depth=2)
    losses = train_classifier(clf, sde, x, labels, steps=300, batch_size=256, lr=3e-3, progress=False)
    assert len(losses) == 300 and sum(losses[-20:]) < sum(losses[:20])

    log_prob, exact = classifier_log_prob_fn(clf), _exact_log_prob(gm, sde)
    g = torch.Generator().manual_seed(5)
    x0, y0 = gm.sample(2000, generator=g, return_labels=True)
    z = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        for t_val in (0.01, 0.5):
            t = torch.full((2000,), t_val)
            x_t = broadcast_like(sde.scale(t), x0) * x0 + broadcast_like(sde.std(t), x0) * z
            model_lp, exact_lp = log_prob(x_t, t).double(), exact(x_t.double(), t.double())
            if t_val == 0.01:  # the modes barely overlap: clearly above chance (1/8)
                assert float((model_lp.argmax(1) == y0).double().mean()) >= 0.9
            # KL(exact || model) well below KL(exact || uniform).
            p = exact_lp.exp()
            kl_model = float((p * (exact_lp - model_lp)).sum(1).mean())
            kl_uniform = float((p * (exact_lp + math.log(8))).sum(1).mean())
            assert kl_model < 0.5 * kl_uniform, (t_val, kl_model, kl_uniform)
