"""log_likelihood refuses what it cannot do well, with a message that says what to do."""
from __future__ import annotations

import time
import warnings

import pytest
import torch
from torchdiffeq import odeint

import sdediff as sd
from sdediff.likelihood import METHODS, SolverOptions, log_likelihood
from sdediff.likelihood.solvers import ADAPTIVE_METHODS
from test_likelihood import draw, ring

F64 = torch.float64


# ----------------------------------------------------------------------- input dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_refused(dtype):
    # Half precision used to fail with "t must lie in [0, T], got [nan, nan]" (float16) or come
    # out ~0.7 nats off without a word (bfloat16).
    oracle, sde = ring(), sd.VPSDE()
    with pytest.raises(TypeError, match="float32 or float64"):
        log_likelihood(oracle.score_fn(sde), sde, draw(oracle, 4).to(dtype))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_input_is_refused(dtype):
    oracle, sde = ring(), sd.VPSDE()
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        log_likelihood(oracle.score_fn(sde), sde, torch.ones(4, 2, dtype=dtype))


def test_nan_in_x_is_refused_naming_x():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 4)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="^x has NaN"):
        log_likelihood(oracle.score_fn(sde), sde, x)


def test_float32_model_on_float64_data_works():
    # The docs recommend float64 data for likelihoods; a model trained in float32 is evaluated in
    # its own dtype (with a warning) and the solve stays in float64.
    from sdediff.parameterization import ScoreModel

    torch.manual_seed(0)
    model = ScoreModel(sd.build_net("mlp", dim=2, hidden=32, depth=2), sd.VPSDE(), "eps")
    x = draw(ring(), 20, seed=5)
    kw = dict(eps=1e-3, rtol=1e-4, atol=1e-4)
    with pytest.warns(UserWarning, match="float32.*copy.deepcopy"):
        mixed = log_likelihood(model, model.sde, x, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matching dtypes: no warning
        full = log_likelihood(model.double(), model.sde, x, **kw)
    assert mixed.logp.dtype == F64 and mixed.z.dtype == F64
    # float32 round-off in the score only: the same answer to far below a nat.
    assert (mixed.logp - full.logp).abs().max() < 1e-3


def test_a_score_in_another_dtype_is_cast_to_x():
    oracle, sde = ring(), sd.VPSDE()
    exact = oracle.score_fn(sde)
    x = draw(oracle, 10)
    ref = log_likelihood(exact, sde, x, rtol=1e-4, atol=1e-4)
    res = log_likelihood(lambda y, t: exact(y, t).float(), sde, x, rtol=1e-4, atol=1e-4)
    assert res.logp.dtype == F64
    assert (res.logp - ref.logp).abs().max() < 1e-3


# ------------------------------------------------------------------------ the step cap
def test_a_stiff_solve_fails_fast_naming_max_steps():
    # beta_max = 1e6 makes the flow stiff: an explicit solver would need ~1e5 steps.
    from sdediff.parameterization import ScoreModel

    torch.manual_seed(0)
    sde = sd.VPSDE(0.1, 1e6)
    model = ScoreModel(sd.build_net("mlp", dim=2, hidden=16, depth=1), sde, "eps").double()
    x = torch.randn(20, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for kw in (dict(max_steps=300), dict(max_steps=300, options={"first_step": 1e-6}),
               dict(solver=SolverOptions(max_steps=300), quadrature="steps")):
        start = time.perf_counter()
        with pytest.raises(RuntimeError, match=r"max_steps = 300 .*rtol = 1e-05, atol = 1e-05"):
            log_likelihood(model, sde, x, **kw)
        assert time.perf_counter() - start < 30


def test_the_default_step_cap_leaves_room_for_ordinary_solves():
    oracle, sde = ring(), sd.VPSDE()
    res = log_likelihood(oracle.score_fn(sde), sde, draw(oracle, 50), rtol=1e-7, atol=1e-7)
    # ~6 evaluations per step: far inside the default cap even at a tight tolerance.
    assert res.nfe / 6 < SolverOptions().max_steps / 5


# ---------------------------------------------------------------------- solver options
def test_our_method_names_are_torchdiffeqs():
    # The allowed names are our own tuple (no private torchdiffeq import); each must be one
    # that torchdiffeq.odeint accepts, and a name it refuses must be refused by us too.
    y0 = torch.ones(3, dtype=F64)
    t = torch.tensor([0.0, 0.5], dtype=F64)
    for method in METHODS:
        fixed_grid = method not in ADAPTIVE_METHODS + ("scipy_solver",)
        y = odeint(lambda s, y: -y, y0, t, method=method, rtol=1e-6, atol=1e-6,
                   options={"step_size": 0.01} if fixed_grid else None)
        assert torch.allclose(y[-1], torch.exp(-t[-1]) * y0, atol=0.05), method
    with pytest.raises(ValueError, match="method"):
        odeint(lambda s, y: -y, y0, t, method="dopri6")
    with pytest.raises(ValueError, match="method"):
        log_likelihood(lambda y, s: -y, sd.VPSDE(), y0[:, None], method="dopri6")


def test_solver_options_grouped_or_flat_are_the_same():
    oracle, sde = ring(), sd.VPSDE()
    x = draw(oracle, 30, seed=2)
    flat = log_likelihood(oracle.score_fn(sde), sde, x, rtol=1e-4, atol=1e-4, error_norm="per_example")
    grouped = log_likelihood(oracle.score_fn(sde), sde, x, rtol=1e-4, atol=1e-4,
                             solver=SolverOptions(error_norm="per_example"))
    assert torch.equal(flat.logp, grouped.logp) and flat.nfe == grouped.nfe
    with pytest.raises(TypeError, match="not both"):
        log_likelihood(oracle.score_fn(sde), sde, x, solver=SolverOptions(), error_norm="batch")
    with pytest.raises(TypeError, match="unexpected keyword.*errornorm"):
        log_likelihood(oracle.score_fn(sde), sde, x, errornorm="batch")
    with pytest.raises(ValueError, match="max_steps"):
        SolverOptions(max_steps=0)
