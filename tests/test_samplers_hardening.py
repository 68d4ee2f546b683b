"""``sample`` and ``time_grid`` refuse bad input with messages naming the argument and the cause."""
from __future__ import annotations

import pytest
import torch

import sdediff as sd

from _sampler_problems import ring, sliced_w2

VP = sd.VPSDE()


def _score():
    return ring().score_fn(VP)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_x_T_is_blamed_on_x_T(bad):
    x_T = torch.zeros(4, 2)
    x_T[1, 0] = bad
    with pytest.raises(ValueError, match="x_T"):
        sd.sample(_score(), VP, (4, 2), sampler="ddim", steps=3, x_T=x_T)


def test_integer_x_T_or_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="x_T"):
        sd.sample(_score(), VP, (4, 2), sampler="ddim", steps=3, x_T=torch.zeros(4, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype"):
        sd.sample(_score(), VP, (4, 2), sampler="ddim", steps=3, dtype=torch.int64)


@pytest.mark.parametrize("shape", [(8.5, 2), (4, "2"), 2.0])
def test_shape_entries_must_be_ints(shape):
    with pytest.raises(TypeError, match="shape"):
        sd.sample(_score(), VP, shape, sampler="ddim", steps=3)


def test_score_of_another_dtype_is_refused():
    score = _score()
    with pytest.raises(TypeError, match="score_fn returned dtype torch.float64"):
        sd.sample(lambda x, t: score(x.double(), t.double()), VP, (4, 2), sampler="ddim", steps=3,
                  dtype=torch.float32)


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_half_precision_runs_in_float32_and_returns_the_requested_dtype(low):
    gm = ring()
    x_T = VP.prior_sampling((2000, 2), generator=torch.Generator().manual_seed(0))
    seen = []

    def score(x, t):
        seen.append((x.dtype, t.dtype))
        return gm.score_fn(VP)(x, t)

    x32 = sd.sample(gm.score_fn(VP), VP, x_T.shape, sampler="ddim", steps=50, x_T=x_T)
    x_low = sd.sample(score, VP, x_T.shape, sampler="ddim", steps=50, x_T=x_T.to(low))
    assert x_low.dtype == low and set(seen) == {(low, low)}
    # The state is never rounded to the low dtype between steps: the samples sit where the
    # float32 run's do (the score sees rounded inputs) and the distribution is intact.
    assert sliced_w2(x_low.float(), x32) < 0.05
    assert float((x_low.float() - x32).abs().median()) < 0.05


def test_time_grid_checks_its_arguments():
    with pytest.raises(ValueError, match="steps"):
        sd.time_grid(VP, 0)
    with pytest.raises(ValueError, match="steps"):
        sd.time_grid(VP, -1)
    with pytest.raises(ValueError, match="steps"):
        sd.time_grid(VP, 2.0)
    for eps in (0.0, 2.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="eps"):
            sd.time_grid(VP, 10, eps=eps)
    with pytest.raises(ValueError, match="steps"):
        sd.sample(_score(), VP, (4, 2), sampler="ddim", steps=-1)


def test_overflow_with_a_finite_score_is_not_called_nondeterministic():
    def huge(x, t):  # finite (below float32's max), but any step multiplies it up to inf
        return torch.full_like(x, 3e38)

    with pytest.raises(FloatingPointError, match="overflowed .*although every score output was finite"):
        sd.sample(huge, VP, (4, 2), sampler="euler_maruyama", steps=5, generator=0, dtype=torch.float32)


def test_ode_failure_names_a_time_inside_the_interval():
    def huge(x, t):
        return torch.full_like(x, 3e38)

    with pytest.raises(FloatingPointError) as info:
        sd.sample(huge, VP, (4, 2), sampler="ode", steps=1, generator=0, dtype=torch.float32)
    msg = str(info.value)
    assert "t = -" not in msg and "near t = " in msg, msg
    t = float(msg.split("near t = ")[1].split()[0])
    assert 1e-3 <= t <= 1.0
    assert "although every score output was finite" in msg


def test_adaptive_dpm_failure_names_a_time():
    def huge(x, t):
        return torch.full_like(x, 3e38)

    with pytest.raises(FloatingPointError, match=r"from t = 1\b"):
        sd.sample(huge, VP, (4, 2), sampler="dpm_solver_adaptive", generator=0, dtype=torch.float32)


@pytest.mark.parametrize("sde,match", [
    (sd.LinearSDE(f=lambda t: 0 * t, g=lambda t: 0 * t), "injects no noise"),
    (sd.VPSDE(0.1, 1e6), "underflowed to 0"),
])
def test_degenerate_linear_sde_in_ddim_names_the_cause(sde, match):
    x_T = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        sd.sample(lambda x, t: -x, sde, (4, 2), sampler="ddim", steps=3, x_T=x_T)
