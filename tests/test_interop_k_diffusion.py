"""from_k_diffusion: EDM denoisers as score models; sdediff's euler/heun equal k-diffusion's on its sigmas."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import sdediff as sd
from sdediff.interop import EDMSDE
from _interop_helpers import relative_error, tiny_unet

F64 = torch.float64

# `import k_diffusion` needs torchvision and more (see k_diffusion_sampling); only being
# installed (pip install --no-deps k-diffusion) is required here.
needs_k_diffusion = pytest.mark.skipif(importlib.util.find_spec("k_diffusion") is None,
                                       reason="k-diffusion is not installed (pip install --no-deps k-diffusion)")


def test_edm_sde_std_is_sigma_exactly():
    sde = EDMSDE(sigma_max=80.0)
    sigmas = torch.tensor([80.0, 14.6, 1.0, 0.002, 0.0], dtype=F64)
    t = sde.time_of(sigmas)
    assert torch.equal(sde.std(t), sigmas) and torch.equal(sde.scale(t), torch.ones_like(t))
    u = torch.linspace(0.01, 0.99, 50, dtype=F64)
    assert torch.allclose(sde.t_from_log_snr(sde.log_snr(u)), u, rtol=1e-14, atol=0)
    # g^2 = d sigma^2 / dt
    h = 1e-4  # central differences are exact for the quadratic sigma(t)^2
    assert torch.allclose(sde.g(u) ** 2, (sde.std(u + h) ** 2 - sde.std(u - h) ** 2) / (2 * h), rtol=1e-8)
    assert sde.prior_std == 80.0


def test_score_of_the_oracle_denoiser():
    oracle = sd.GaussianMixture(*sd.ring_params())
    edm = EDMSDE(80.0)
    denoiser = lambda x, sigma: oracle.denoise(x, edm.time_of(sigma), edm)  # D(x, sigma)
    model = sd.from_k_diffusion(denoiser, 0.002, 80.0)
    assert model.eps_time == pytest.approx(0.002 / 80.0)
    x = oracle.sample(50, generator=torch.Generator().manual_seed(0), dtype=F64) * 3
    t = torch.rand(50, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.5 + 1e-3
    assert torch.allclose(model(x, t), oracle.score_fn(edm)(x, t), rtol=1e-10, atol=1e-10)
    # any other linear SDE: the denoiser sees x / a at sigma = s / a
    vp = sd.VPSDE()
    on_vp = sd.from_k_diffusion(denoiser, 0.002, 80.0, sde=vp)
    y = oracle.sample(50, generator=torch.Generator().manual_seed(2), dtype=F64)
    assert torch.allclose(on_vp(y, t), oracle.score_fn(vp)(y, t), rtol=1e-8, atol=1e-8)


def test_bad_input():
    with pytest.raises(TypeError, match="sigma_min="):
        sd.from_k_diffusion(lambda x, s: x)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sd.from_k_diffusion(lambda x, s: x, 1.0, 0.5)
    model = sd.from_k_diffusion(lambda x, s: x[:, :1], 0.01, 10.0)
    with pytest.raises(ValueError, match="denoiser returned shape"):
        model(torch.zeros(3, 2, dtype=F64), torch.full((3,), 0.5, dtype=F64))


class EDMDenoiser(torch.nn.Module):
    """Karras et al. 2022 preconditioning (Table 1) around the tiny UNet."""

    def __init__(self, net, sigma_data=0.5):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data
        self.sigma_min, self.sigma_max = 0.002, 80.0

    def forward(self, x, sigma):
        sig = sigma.reshape(-1, 1, 1, 1)
        c_skip = self.sigma_data ** 2 / (sig ** 2 + self.sigma_data ** 2)
        c_out = sig * self.sigma_data / (sig ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (sig ** 2 + self.sigma_data ** 2).sqrt()
        return c_skip * x + c_out * self.net(c_in * x, sigma.log() / 4).sample


@needs_k_diffusion
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_euler_and_heun_equal_k_diffusion(sampler):
    pytest.importorskip("diffusers")
    from sdediff.interop import k_diffusion_sampling

    K = k_diffusion_sampling()
    denoiser = EDMDenoiser(tiny_unet())
    sigmas = K.get_sigmas_karras(8, 0.002, 80.0).to(F64)  # ends with sigma = 0
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64) * sigmas[0]
    model = sd.from_k_diffusion(denoiser)  # sigma_min / sigma_max read from the denoiser
    with torch.no_grad():
        ref = {"euler": K.sample_euler, "heun": K.sample_heun}[sampler](denoiser, x_T.clone(), sigmas, disable=True)
        # k-diffusion's last step to sigma = 0 is Euler, which lands on D: the grid's landing
        # on t = 0; every step before it is a Heun step (final_euler=False).
        options = {"final_euler": False} if sampler == "heun" else {}
        x = sd.sample(model, model.sde, x_T.shape, sampler=sampler, grid=model.time_of(sigmas), x_T=x_T,
                      **options)
    assert relative_error(x, ref) < 1e-12  # measured ~6e-16


@needs_k_diffusion
def test_k_diffusion_sampling_module_loads():
    from sdediff.interop import k_diffusion_sampling

    K = k_diffusion_sampling()
    assert callable(K.sample_euler) and callable(K.sample_dpmpp_2m)
    s = K.get_sigmas_karras(5, 0.1, 10.0)
    assert float(s[0]) == pytest.approx(10.0) and float(s[-1]) == 0.0 and not math.isnan(float(s.sum()))
