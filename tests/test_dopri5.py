"""The likelihood's lean Dormand-Prince loop: the same steps as torchdiffeq's dopri5, to round-off."""
import pytest
import torch
from torchdiffeq import odeint

from sdediff._dopri5 import dopri5

A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)


def problem(batch=300, seed=0):
    """``y' = (1 + t) A y``: a damped rotation with a time-dependent rate, solved in closed form."""
    y0 = torch.randn(batch, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    calls = []

    def f(t, y):
        calls.append(float(t))
        return (1 + t) * y @ A.T

    def exact(t):
        return y0 @ torch.linalg.matrix_exp((t + t * t / 2) * A).T

    return f, y0, exact, calls


@pytest.mark.parametrize("tol", [1e-3, 1e-5, 1e-7])
def test_same_steps_and_dense_output_as_torchdiffeq(tol):
    f, y0, exact, calls = problem()
    t_eval = torch.tensor([0.3, 1.1, 1.7], dtype=torch.float64)
    y1, ys = dopri5(f, y0, 0.0, 2.0, tol, tol, t_eval=t_eval)
    ours = len(calls)
    calls.clear()
    times = torch.cat([torch.zeros(1, dtype=torch.float64), t_eval, torch.full((1,), 2.0, dtype=torch.float64)])
    ref = odeint(f, y0, times, rtol=tol, atol=tol, method="dopri5", options={"step_t": times[-1:]})
    assert ours == len(calls)  # the same evaluations: the same steps, accepted and rejected
    assert torch.allclose(y1, ref[-1], rtol=0, atol=1e-12)
    assert torch.allclose(ys, ref[1:-1], rtol=0, atol=1e-12)
    # and both are as accurate as asked
    assert float((y1 - exact(2.0)).abs().max()) < 20 * tol
    for i, t in enumerate(t_eval.tolist()):
        assert float((ys[i] - exact(t)).abs().max()) < 20 * tol


def test_nan_and_step_limits_raise():
    _, y0, _, _ = problem(batch=4)
    with pytest.raises(FloatingPointError, match="NaN"):
        dopri5(lambda t, y: y * float("nan"), y0, 0.0, 1.0, 1e-5, 1e-5)
    with pytest.raises(FloatingPointError, match="NaN"):  # NaN appearing mid-solve
        dopri5(lambda t, y: -y if float(t) < 0.5 else y * float("nan"), y0, 0.0, 1.0, 1e-5, 1e-5)
    with pytest.raises(RuntimeError, match="did not reach"):
        dopri5(lambda t, y: -y, y0, 0.0, 1.0, 1e-9, 1e-9, max_steps=3)


def test_on_step_reports_every_accepted_step_with_its_dense_output():
    f, y0, exact, _ = problem(batch=50)
    t_eval = torch.tensor([0.3, 1.1, 1.7], dtype=torch.float64)
    steps, at_eval = [], {}

    def on_step(t, dt, y_at):  # y_at is valid during the call only: read it now
        steps.append((t, dt, y_at(0.0), y_at(1.0), {s: y_at(s) for s in (0.25, 0.5, 0.9)}))
        for i, te in enumerate(t_eval.tolist()):
            if t < te <= t + dt:
                at_eval[i] = y_at((te - t) / dt)

    y1, ys = dopri5(f, y0, 0.0, 2.0, 1e-6, 1e-6, t_eval=t_eval, on_step=on_step)
    y_plain, ys_plain = dopri5(f, y0, 0.0, 2.0, 1e-6, 1e-6, t_eval=t_eval)
    assert torch.equal(y1, y_plain) and torch.equal(ys, ys_plain)  # observing changes nothing
    # The steps tile [0, 2] in order; each starts where the last ended, the last ends at y1.
    assert steps[0][0] == 0.0 and steps[-1][0] + steps[-1][1] == pytest.approx(2.0, abs=1e-15)
    for (t, dt, *_), (t_next, *_) in zip(steps, steps[1:]):
        assert t_next == pytest.approx(t + dt, abs=1e-15)
    # The interpolant meets the step's ends (to round-off): continuous across steps.
    assert torch.allclose(steps[0][2], y0, rtol=0, atol=1e-13)
    assert torch.allclose(steps[-1][3], y1, rtol=0, atol=1e-13)
    for (_, _, _, end, _), (_, _, start, _, _) in zip(steps, steps[1:]):
        assert torch.allclose(end, start, rtol=0, atol=1e-13)
    # The dense output inside a step is the solution to the solver's accuracy, and is the
    # same interpolant that t_eval reads.
    for t, dt, _, _, inner in steps:
        for s, y in inner.items():
            assert float((y - exact(t + s * dt)).abs().max()) < 20 * 1e-6
    assert sorted(at_eval) == [0, 1, 2]
    for i, y in at_eval.items():
        assert torch.allclose(y, ys[i], rtol=0, atol=1e-13)
