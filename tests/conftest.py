"""Shared test problems: the standard SDEs and Gaussian-mixture oracles."""

import pytest
import torch

import sdediff as sd

torch.set_num_threads(2)


def ring_mixture(num_modes: int = 8, radius: float = 4.0, std: float = 0.5) -> sd.GaussianMixture:
    """An isotropic Gaussian ring: ``num_modes`` equal-weight modes on a circle."""
    return sd.GaussianMixture(*sd.ring_params(num_modes, radius, std))


def random_mixture(dim: int = 64, num_modes: int = 10, seed: int = 0) -> sd.GaussianMixture:
    """A d-dimensional mixture with random means, stds and weights (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_modes, dim, generator=g, dtype=torch.float64)
    stds = 0.2 + 0.3 * torch.rand(num_modes, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(num_modes, generator=g, dtype=torch.float64)
    return sd.GaussianMixture(means, stds, weights)


class GenericVP(sd.SDE):
    """VP written as a plain SDE (no LinearSDE): exercises the general reverse-drift path."""

    def __init__(self):
        super().__init__(1.0)
        self.vp = sd.VPSDE()

    def sde(self, x, t):
        return self.vp.sde(x, t)

    def prior_sampling(self, shape, generator=None, dtype=None, device=None):
        return self.vp.prior_sampling(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, z):
        return self.vp.prior_logp(z)


STANDARD_SDES = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(sigma_min=0.01, sigma_max=10.0),
    "linear": lambda: sd.LinearSDE(f=lambda t: -0.5 * (0.1 + 19.9 * t),
                                   g=lambda t: (0.1 + 19.9 * t).sqrt()),
}


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: the oracle works on tiny tensors, and on a loaded 2-core
    machine the OpenMP barriers of 2 threads cost milliseconds per op (one thread: ~100x faster)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def ring():
    return ring_mixture()


@pytest.fixture(params=sorted(STANDARD_SDES))
def any_sde(request):
    return STANDARD_SDES[request.param]()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
