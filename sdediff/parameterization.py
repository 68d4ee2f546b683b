"""Score models: a time-conditioned network plus an SDE, wrapped into the score-function contract.

A network ``net(x, c)`` predicts one of four targets; with ``x = a x0 + s z`` (``a = scale(t)``,
``s = std(t)``) they convert into each other as follows (MATH.md, "Parameterizations"):

==============  =========================  ==========================================
name            the network predicts       score ``grad log p_t(x)``
==============  =========================  ==========================================
``"eps"``       ``eps_hat ~ z``            ``-eps_hat / s``
``"x0"``        ``x0_hat ~ x0``            ``-(x - a x0_hat) / s^2``
``"score"``     ``s * score`` (O(1))       ``out / s``
``"v"``         ``v_hat ~ a z - s x0``     ``-(s x + a v_hat) / ((a^2 + s^2) s)``
==============  =========================  ==========================================

For ``"v"``: ``x = a x0 + s z`` and ``v = a z - s x0`` give ``z = (s x + a v) / (a^2 + s^2)`` and
``x0 = (a x - s v) / (a^2 + s^2)`` for any linear SDE (``a^2 + s^2 = 1`` for VP; Salimans & Ho 2022).

Every model here is an ``nn.Module`` whose ``forward(x, t)`` *is* the score function of the
contract in DESIGN.md (``x`` of shape ``(B, *dims)``, ``t`` of shape ``(B,)`` in ``[0, T]``), so it can
be handed to ``sample``, ``log_likelihood`` or wrapped in DDP. ``eps(x, t)`` and ``denoise(x, t)``
give the other two views. With a class-conditional net (``num_classes`` set, see :mod:`sdediff.nets`)
every view takes labels: ``model(x, t, y)`` is the conditional score, ``model(x, t)`` (``y=None``)
the unconditional one (DESIGN.md, "Conditional generation").

At ``t = 0`` (``s = 0``) the score is undefined; ``s`` is floored at the dtype's machine epsilon
so the result is large but finite rather than NaN.

Discrete-time models (:class:`DiscreteScoreModel`) feed the network the DDPM index ``n`` and use
DDPM's ``alpha_bar_n`` instead of the continuous ``scale``/``std``; continuous time ``t`` maps to
``n = round(t N)`` (``DDPM.index``), so ``t = n / N`` round-trips exactly.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .ddpm import DDPM
from .sde import LinearSDE, broadcast_like

__all__ = ["PARAMETERIZATIONS", "TIME_INPUTS", "ScoreModel", "DiscreteScoreModel"]

#: Network output targets accepted by :class:`ScoreModel`.
PARAMETERIZATIONS: tuple[str, ...] = ("eps", "x0", "score", "v")
#: What the network receives as its time input: ``t`` itself, ``log s(t)``, or ``log(a(t)/s(t))``.
TIME_INPUTS: tuple[str, ...] = ("t", "log_std", "log_snr")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


class ScoreModel(nn.Module):
    """A network and a linear SDE as a score function ``score_fn(x, t)``.

    Args:
        net: ``net(x, c) -> tensor like x`` with ``c`` of shape ``(B,)`` (see ``time_input``); a
            class-conditional net also takes ``net(x, c, y)`` and has a ``num_classes`` attribute.
        sde: the linear SDE the model belongs to (needs ``scale`` and ``std``).
        parameterization: what the network predicts, one of :data:`PARAMETERIZATIONS`.
        time_input: what the network is conditioned on, one of :data:`TIME_INPUTS`
            (``"t"``: continuous time; ``"log_std"``: ``log s(t)``; ``"log_snr"``: ``log(a/s)``).
            Fourier embeddings with the default scale 16 suit ``"t"``; use a smaller
            ``fourier_scale`` (about 1) for the log inputs, whose range is wider.
        sigma_data: if given, the network sees ``x / sqrt(a^2 sigma_data^2 + s^2)`` (the input
            scaling ``c_in`` of Karras et al. 2022, eq. 7), i.e. an input of unit variance for
            data of std ``sigma_data``; useful for VE SDEs whose ``x_t`` grows to ``sigma_max``.

    Raises:
        ValueError: an unknown ``parameterization`` or ``time_input`` (the message lists the
            allowed values), or a non-positive ``sigma_data``.
        TypeError: ``net`` not an ``nn.Module`` or ``sde`` not a :class:`LinearSDE`.
    """

    def __init__(self, net: nn.Module, sde: LinearSDE | None, parameterization: str = "eps",
                 time_input: str = "t", sigma_data: float | None = None):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if sde is not None and not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE (it needs scale(t) and std(t)), got {type(sde).__name__}")
        self.net = net
        self.sde = sde
        self.parameterization = _check_choice("parameterization", parameterization, PARAMETERIZATIONS)
        self.time_input = _check_choice("time_input", time_input, TIME_INPUTS)
        if sigma_data is not None and not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a positive number or None, got {sigma_data!r}")
        self.sigma_data = None if sigma_data is None else float(sigma_data)

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional net; ``None`` if the model is unconditional."""
        return getattr(self.net, "num_classes", None)

    @property
    def null_label(self) -> int | None:
        """The label meaning "unconditional" (``num_classes``), for batching guided calls; ``None`` if unconditional."""
        return getattr(self.net, "null_label", self.num_classes)

    # ------------------------------------------------------------- the schedule
    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a(t), s(t))``, each of shape ``(B,)`` in ``t``'s dtype, with ``s`` floored at machine epsilon."""
        a = self.sde.scale(t).to(t.dtype)
        s = self.sde.std(t).to(t.dtype)
        return a, s.clamp_min(torch.finfo(t.dtype).eps)

    def net_time(self, t: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """The network's conditioning input for times ``t`` (see ``time_input``)."""
        if self.time_input == "t":
            return t
        if self.time_input == "log_std":
            return s.log()
        return a.log() - s.log()

    def config(self) -> dict[str, Any]:
        """JSON-serializable description of the wrapper (the net and SDE are described separately)."""
        return {"kind": "continuous", "parameterization": self.parameterization,
                "time_input": self.time_input, "sigma_data": self.sigma_data}

    # ------------------------------------------------------------------ views
    def _time(self, x: Tensor, t) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a tensor of shape (B, *dims), got {got}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or of shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        return t.to(dtype=x.dtype, device=x.device)

    def _predict(self, x: Tensor, t, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(a, s, out)`` with ``a, s`` broadcast against ``x`` and the raw network output."""
        if y is not None and hasattr(self.net, "num_classes") and self.net.num_classes is None:
            raise ValueError("y was given, but this model is unconditional (its net has num_classes=None); "
                             "pass y=None, or build the net with num_classes=K")
        t = self._time(x, t)
        a, s = self.coefficients(t)
        x_in = x
        if self.sigma_data is not None:
            c_in = torch.rsqrt(a ** 2 * self.sigma_data ** 2 + s ** 2)  # Karras et al. 2022, eq. 7
            x_in = broadcast_like(c_in, x) * x
        c = self.net_time(t, a, s)
        out = self.net(x_in, c) if y is None else self.net(x_in, c, y)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the network must return a tensor of x's shape {tuple(x.shape)}, got {got}")
        return broadcast_like(a, x), broadcast_like(s, x), out

    def eps(self, x: Tensor, t, y: Tensor | None = None) -> Tensor:
        """The predicted noise ``eps_hat(x, t[, y])``, with ``x = a x0 + s eps``."""
        a, s, out = self._predict(x, t, y)
        p = self.parameterization
        if p == "eps":
            return out
        if p == "x0":
            return (x - a * out) / s
        if p == "score":
            return -out  # out = s * score = -eps
        return (s * x + a * out) / (a ** 2 + s ** 2)  # v: z = (s x + a v) / (a^2 + s^2)

    def denoise(self, x: Tensor, t, y: Tensor | None = None) -> Tensor:
        """The predicted clean data ``x0_hat(x, t[, y]) = E[x0 | x_t = x(, y)]``."""
        a, s, out = self._predict(x, t, y)
        p = self.parameterization
        if p == "x0":
            return out
        if p == "v":
            return (a * x - s * out) / (a ** 2 + s ** 2)  # x0 = (a x - s v) / (a^2 + s^2)
        eps = out if p == "eps" else -out
        return (x - s * eps) / a

    def score(self, x: Tensor, t, y: Tensor | None = None) -> Tensor:
        """The score ``grad_x log p_t(x)``, or ``grad_x log p_t(x | y)`` given labels (same as calling the module)."""
        a, s, out = self._predict(x, t, y)
        p = self.parameterization
        if p == "eps":
            return -out / s
        if p == "x0":
            return -(x - a * out) / s ** 2
        if p == "score":
            return out / s
        return -(s * x + a * out) / ((a ** 2 + s ** 2) * s)

    def forward(self, x: Tensor, t, y: Tensor | None = None) -> Tensor:
        """The score function of the contract: ``x`` ``(B, *dims)``, ``t`` ``(B,)`` -> tensor like ``x``.

        Args:
            x: ``(B, *dims)`` states.
            t: ``(B,)`` times (or a scalar).
            y: optional integer labels ``(B,)`` for a class-conditional net (``None``: unconditional;
                entries equal to :attr:`null_label` are unconditional too).

        Raises:
            ValueError: bad shapes, or ``y`` given to an unconditional model (the net checks ``y``'s
                shape and range, ``TypeError`` for a non-integer ``y``).
        """
        return self.score(x, t, y)

    def score_fn(self, x: Tensor, t, y: Tensor | None = None) -> Tensor:
        """Alias of :meth:`score`, so ``model.score_fn`` reads as the contract's name."""
        return self.score(x, t, y)

    def extra_repr(self) -> str:
        extra = "" if self.num_classes is None else f", num_classes={self.num_classes}"
        return f"parameterization={self.parameterization!r}, time_input={self.time_input!r}, sde={self.sde!r}{extra}"


class DiscreteScoreModel(ScoreModel):
    """A network conditioned on the DDPM index ``n`` (as a float), with DDPM's own coefficients.

    ``a = sqrt(alpha_bar_n)``, ``s = sqrt(1 - alpha_bar_n)`` with ``n = round(t N)`` clamped to
    ``1..N`` (index 0 is the data itself). Trained with :func:`sdediff.losses.ddpm_loss`. As a
    score function it is piecewise constant in ``t`` between the grid points ``n / N`` and belongs
    to ``ddpm.to_sde()`` (stored as ``sde`` for the linear schedule; ``None`` for the cosine one).

    Args:
        net: ``net(x, n) -> tensor like x`` with ``n`` a float tensor of indices in ``1..N``.
        ddpm: the discrete chain.
        parameterization: one of :data:`PARAMETERIZATIONS`.
        index_scale: the network sees ``index_scale * n``. ``1`` (default) is DDPM's raw index; the
            embeddings of :mod:`sdediff.nets` are tuned for inputs in ``[0, 1]``, so pass ``1 / N``
            with them (the net then sees the grid time ``n / N``).

    Raises:
        ValueError: an unknown ``parameterization`` or a non-positive ``index_scale``.
        TypeError: ``ddpm`` not a :class:`~sdediff.ddpm.DDPM`.
    """

    def __init__(self, net: nn.Module, ddpm: DDPM, parameterization: str = "eps", index_scale: float = 1.0):
        if not isinstance(ddpm, DDPM):
            raise TypeError(f"ddpm must be an sdediff DDPM, got {type(ddpm).__name__}")
        sde = ddpm.to_sde() if ddpm.schedule == "linear" else None
        super().__init__(net, sde, parameterization=parameterization, time_input="t")
        if not (isinstance(index_scale, (int, float)) and index_scale > 0):
            raise ValueError(f"index_scale must be a positive number, got {index_scale!r}")
        self.ddpm = ddpm
        self.index_scale = float(index_scale)

    def index(self, t: Tensor) -> Tensor:
        """The DDPM index ``n = round(t N)`` of each time, clamped to ``1..N``."""
        return self.ddpm.index(t.detach().clamp(0.0, 1.0).cpu()).clamp(1, self.ddpm.num_steps).to(t.device)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        abar = self.ddpm.alpha_bar(self.index(t).cpu()).to(dtype=t.dtype, device=t.device)
        return abar.sqrt(), (1 - abar).sqrt()

    def net_time(self, t: Tensor, a: Tensor, s: Tensor) -> Tensor:
        return self.index(t).to(t.dtype) * self.index_scale

    def config(self) -> dict[str, Any]:
        return {"kind": "discrete", "parameterization": self.parameterization, "index_scale": self.index_scale}

    def extra_repr(self) -> str:
        extra = "" if self.num_classes is None else f", num_classes={self.num_classes}"
        return f"parameterization={self.parameterization!r}, ddpm={self.ddpm!r}{extra}"
