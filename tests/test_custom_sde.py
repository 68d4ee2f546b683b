"""A user-written SDE (not in the library) sampled through sampler='sde' and sampler='ode'."""
import importlib.util
import math
import pathlib

import pytest
import torch

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "custom_sde.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("custom_sde_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_custom_sde_tabulated_marginals_match_closed_form():
    sde = _load_example().OrnsteinUhlenbeckSDE()
    for t in (1e-3, 0.1, 0.5, 1.0):
        a, s = sde.exact_scale_std(t)
        tt = torch.tensor(t, dtype=torch.float64)
        assert float(sde.scale(tt)) == pytest.approx(a, rel=1e-9)  # quadrature error O(h^4)
        assert float(sde.std(tt)) == pytest.approx(s, rel=1e-9)


@pytest.mark.parametrize("n,steps", [(4000, 100)])
def test_custom_sde_marginals_sde_and_ode(n, steps):
    res = _load_example().run(n=n, steps=steps, seed=1)
    var = res["exact_var"]
    for sampler in ("sde", "ode"):
        # Monte Carlo: mean SE = sqrt(var / n) = 0.008, variance SE (averaged over 2 coords) =
        # var * sqrt(1 / n) = 1.6%. Discretization (Euler-Maruyama, weak order 1, 100 steps of a
        # theta = 6 OU process) biases the variance by O(theta dt) ~ a few %; allow 5 SE + that.
        mean_err = max(abs(m - e) for m, e in zip(res[sampler]["mean"], res["exact_mean"]))
        assert mean_err < 5 * math.sqrt(var / n), (sampler, res)
        assert res[sampler]["var"] == pytest.approx(var, rel=0.08 + 5 * math.sqrt(1 / n)), (sampler, res)


def test_example_main_smoke(capsys):
    res = _load_example().main(["--n", "200", "--steps", "20"])
    assert "exact" in capsys.readouterr().out and "sde" in res and "ode" in res


def _heavy_tail_sde():
    """``dx = -x dt + sqrt(1 + x^2) dW``: state-dependent diagonal noise, written by a user.

    Its stationary density (Fokker-Planck: ``p ~ exp(int 2f/g^2) / g^2``) is
    ``p(x) ~ (1 + x^2)^-2``, i.e. ``x = y / sqrt(3)`` with ``y`` Student-t with 3 degrees
    of freedom; started there, every marginal is that density and the score is
    ``-4x / (1 + x^2)`` at all times. The reverse drift needs the ``- d(g^2)/dx`` term:
    without it the reverse SDE would contract towards ``(1 + x^2)^-4``.
    """
    import sdediff as sd

    class HeavyTail(sd.SDE):
        noise_type = "diagonal"

        def sde(self, x, t):
            return -x, torch.sqrt(1 + x ** 2)

        def prior_sampling(self, shape, generator=None, dtype=None, device=None):
            z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
            chi2 = torch.randn((3, *shape), generator=generator, dtype=dtype, device=device).pow(2).sum(0)
            return z / chi2.sqrt()  # t_3 / sqrt(3)

        def prior_logp(self, z):
            return (math.log(2 / math.pi) - 2 * torch.log1p(z ** 2)).flatten(1).sum(1)

    return HeavyTail()


@pytest.mark.parametrize("sampler, steps", [("sde", 200), ("ode", 20)])
def test_state_dependent_noise_keeps_the_stationary_law(sampler, steps):
    from scipy import stats

    import sdediff as sd
    sde = _heavy_tail_sde()
    n = 4000
    x = sd.sample(lambda x, t: -4 * x / (1 + x ** 2), sde, (n, 1), sampler=sampler, steps=steps,
                  generator=torch.Generator().manual_seed(3), denoise=False, dtype=torch.float64)
    # Kolmogorov-Smirnov distance to the exact CDF F(x) = T_3(sqrt(3) x): 1.95/sqrt(n) is
    # the 0.1% critical value; the missing divergence term would move the law far beyond it.
    ks = stats.kstest(x.flatten().numpy() * math.sqrt(3), stats.t(df=3).cdf).statistic
    assert ks < 1.95 / math.sqrt(n), ks
