"""Forward SDEs and their reverses: the one interface the whole toolkit plugs into.

- :mod:`~sdediff.sde.base`: the :class:`SDE` contract and :class:`ReverseSDE`, home of the one
  reverse-time / probability-flow drift.
- :mod:`~sdediff.sde.linear`: :class:`LinearSDE`, marginals by quadrature for any ``f(t)``, ``g(t)``.
- :mod:`~sdediff.sde.standard`: :class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE` in closed form.
- :mod:`~sdediff.sde.discrete`: :class:`DiscreteVPSDE`, exact on a discrete (DDPM / diffusers) schedule.

Time convention: ``t`` is continuous in ``[0, T]``, a float or a tensor of shape ``(B,)``;
``t = 0`` is the data, ``t = T`` the prior.
"""
from .base import SDE, ReverseSDE, ScoreFn, broadcast_like
from .linear import LinearSDE
from .standard import VESDE, SubVPSDE, VPSDE
from .discrete import DiscreteVPSDE

__all__ = ["SDE", "LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "DiscreteVPSDE", "ReverseSDE", "ScoreFn", "broadcast_like"]
