"""k-diffusion / EDM denoisers ``D(x, sigma)``, and k-diffusion's own samplers for comparison.

A denoiser ``D(y; sigma) ~ E[x0 | y]`` for ``y = x0 + sigma z`` (Karras et al. 2022) is the
score ``(D(y, sigma) - y) / sigma^2`` of the VE process of noise level ``sigma``. To sample it
with sdediff's samplers on k-diffusion's own ``sigmas`` the SDE's ``std(t)`` must *be* sigma,
so the default SDE is :class:`EDMSDE`, ``sigma(t) = sigma_max t / T`` (Karras et al.'s
``s(t) = 1, sigma(t) = t``, rescaled to ``[0, T]``). :class:`~sdediff.VESDE` would not do: its
``std(t) = sqrt(sigma(t)^2 - sigma_min^2)`` is the exact kernel of the SDE from ``t = 0`` and
differs from its ``sigma(t)``. On ``EDMSDE`` a k-diffusion sigma is the time
``t = T sigma / sigma_max`` exactly, ``euler`` is ``sample_euler`` and ``heun`` is
``sample_heun`` (the final step to ``sigma = 0`` is Tweedie's denoiser, as theirs is).

Any other :class:`~sdediff.sde.LinearSDE` works too (e.g. a VP SDE): the denoiser then sees
``y = x / a`` at ``sigma = s / a`` and the score is ``(a D - x) / s^2``.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import sys
import types
from pathlib import Path

import torch
from torch import Tensor

from ..sde import LinearSDE
from ..sde.base import _check_finite_positive
from ._base import AdaptedScoreModel, NetworkDtype, check_output, like

__all__ = ["EDMSDE", "KDiffusionScoreModel", "from_k_diffusion", "k_diffusion_sampling"]


class EDMSDE(LinearSDE):
    """VE SDE with the noise level linear in time: ``sigma(t) = sigma_max t / T`` (Karras et al. 2022).

    ``f = 0``, ``g(t)^2 = d sigma^2 / dt = 2 sigma_max^2 t / T^2``, ``scale = 1``,
    ``std(t) = sigma(t)`` exactly (``0`` at ``t = 0``), prior ``N(0, sigma_max^2 I)``. The
    probability-flow ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma``, k-diffusion's ``to_d``.

    Args:
        sigma_max: the noise level at ``T``.
        T: end time.
    """

    def __init__(self, sigma_max: float = 80.0, T: float = 1.0):
        super().__init__(T=T)
        self.sigma_max = _check_finite_positive("sigma_max", sigma_max)

    def sigma(self, t: Tensor) -> Tensor:
        """``sigma(t) = sigma_max t / T``."""
        return self.sigma_max * t / self.T

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g(self, t: Tensor) -> Tensor:
        return self.sigma_max * torch.sqrt(2 * t.clamp_min(0)) / self.T

    def scale(self, t) -> Tensor:
        t = self.check_time(t)
        return torch.ones_like(t)

    def std(self, t) -> Tensor:
        t = self.check_time(t)
        return self.sigma(t)

    def scale_and_std_at(self, t: float) -> tuple[float, float]:
        return 1.0, self.sigma_max * self._float_time(t) / self.T

    def log_snr(self, t) -> Tensor:
        return -self.std(t).log()

    def t_from_log_snr(self, lam) -> Tensor:
        """Closed-form inverse: ``t = T exp(-lambda) / sigma_max``."""
        lam = torch.as_tensor(lam)
        return self.T * torch.exp(-lam) / self.sigma_max

    def time_of(self, sigma) -> Tensor:
        """The time ``t = T sigma / sigma_max`` of noise level ``sigma`` (float64)."""
        return torch.as_tensor(sigma).to(torch.float64) * self.T / self.sigma_max

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def __repr__(self) -> str:
        return f"EDMSDE(sigma_max={self.sigma_max}, T={self.T})"


class KDiffusionScoreModel(AdaptedScoreModel):
    """A denoiser ``D(y, sigma)`` as a score model (see the module notes).

    Args:
        denoiser: ``denoiser(y, sigma, **kwargs) -> tensor like y``, ``sigma`` of shape ``(B,)``.
        sde: the linear SDE; ``sigma = std / scale``.
        sigma_min, sigma_max: the denoiser's trained range (``eps = time_of(sigma_min)`` is
            where a sampler should stop).
        denoiser_kwargs: extra keyword arguments of every call (k-diffusion's ``extra_args``).
    """

    def __init__(self, denoiser, sde: LinearSDE, sigma_min: float, sigma_max: float,
                 denoiser_kwargs: dict | None = None):
        super().__init__(sde)
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable as denoiser(x, sigma), got {type(denoiser).__name__}")
        self.denoiser = denoiser
        self.sigma_min = _check_finite_positive("sigma_min", sigma_min)
        self.sigma_max = _check_finite_positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.denoiser_kwargs = dict(denoiser_kwargs or {})
        self._dtype = NetworkDtype(denoiser)

    @property
    def eps_time(self) -> float:
        """The time of ``sigma_min``: stop sampling there (``sample(..., eps=model.eps_time)``)."""
        return float(self.time_of(self.sigma_min))

    def time_of(self, sigma) -> Tensor:
        """The time ``t`` of noise level ``sigma = std(t) / scale(t)`` (float64)."""
        sigma = torch.as_tensor(sigma).to(torch.float64)
        if isinstance(self.sde, EDMSDE):
            return self.sde.time_of(sigma)
        return self.sde.t_from_log_snr(-sigma.log()).to(torch.float64)

    def _denoise(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        dtype = self._dtype(x)
        sigma = s / a
        sigma = torch.full((x.shape[0],), sigma, dtype=dtype, device=x.device) if isinstance(sigma, float) \
            else sigma.to(dtype)
        out = self.denoiser((x / like(a, x)).to(dtype), sigma, **self.denoiser_kwargs)
        return check_output(out, x, "denoiser")

    def denoise(self, x: Tensor, t) -> Tensor:
        """``E[x0 | x_t] = D(x / a, s / a)``."""
        _, a, s = self._schedule(x, t)
        return self._denoise(x, a, s)

    def _eps(self, x: Tensor, t: Tensor, a: Tensor, s: Tensor) -> Tensor:
        return (x - like(a, x) * self._denoise(x, a, s)) / like(s, x)

    def forward(self, x: Tensor, t) -> Tensor:
        """The score ``(a D(x / a, s / a) - x) / s^2``; for :class:`EDMSDE` ``(D(x, sigma) - x) / sigma^2``."""
        _, a, s = self._schedule(x, t)
        return (like(a, x) * self._denoise(x, a, s) - x) / like(s * s, x)


def from_k_diffusion(denoiser, sigma_min: float | None = None, sigma_max: float | None = None, *,
                     sde: LinearSDE | None = None, denoiser_kwargs: dict | None = None) -> KDiffusionScoreModel:
    """A k-diffusion / EDM denoiser ``D(x, sigma)`` as a score model.

    Args:
        denoiser: ``denoiser(x, sigma, **denoiser_kwargs)`` with ``sigma`` of shape ``(B,)``,
            e.g. a ``k_diffusion.layers.Denoiser`` or a ``k_diffusion.external`` wrapper.
        sigma_min, sigma_max: the trained noise range; read from ``denoiser.sigma_min`` /
            ``denoiser.sigma_max`` when omitted (k-diffusion's wrappers have them).
        sde: the SDE; default ``EDMSDE(sigma_max)``, on which ``std(t)`` is exactly sigma.
        denoiser_kwargs: extra keyword arguments of every call (e.g. a class label).

    Returns:
        A :class:`KDiffusionScoreModel`: ``score(x, t)``, ``.sde``, ``.time_of(sigma)``,
        ``.eps_time`` (the time of ``sigma_min``).

    Raises:
        TypeError: ``sigma_min``/``sigma_max`` missing and not on the denoiser, or ``sde`` not linear.
        ValueError: a non-positive or inverted sigma range.
    """
    if sigma_min is None:
        sigma_min = _float_attr(denoiser, "sigma_min")
    if sigma_max is None:
        sigma_max = _float_attr(denoiser, "sigma_max")
    if sde is None:
        sde = EDMSDE(sigma_max)
    return KDiffusionScoreModel(denoiser, sde, sigma_min, sigma_max, denoiser_kwargs)


def _float_attr(obj, name: str) -> float:
    value = getattr(obj, name, None)
    if value is None:
        raise TypeError(f"from_k_diffusion needs {name}= (the denoiser has no .{name})")
    return float(value)


@functools.lru_cache(maxsize=None)
def k_diffusion_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling`` module (its samplers: ``sample_euler``, ``sample_heun``, ...).

    ``import k_diffusion`` imports the whole package -- training, evaluation and augmentation
    code that needs torchvision, clean-fid, CLIP, scikit-image and more, whose resolution
    replaces a pinned torch. The samplers themselves need only torch, scipy, torchdiffeq,
    torchsde and tqdm, plus one helper (``utils.append_dims``) of a module that imports
    torchvision. So when the full import fails, ``sampling.py`` is loaded from the installed
    k-diffusion files, as a module of a private package whose ``utils`` holds only
    ``append_dims``, compiled from the installed ``utils.py``'s own source. Install with
    ``pip install --no-deps k-diffusion``.

    Raises:
        ImportError: k-diffusion is not installed.
    """
    try:
        import k_diffusion.sampling as sampling
        return sampling
    except ImportError as err:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError('k-diffusion is not installed: pip install --no-deps k-diffusion '
                              '(its samplers need only torch, scipy, torchdiffeq, torchsde and tqdm)') from err
    root = Path(list(spec.submodule_search_locations)[0])
    package = "_sdediff_k_diffusion"
    pkg = types.ModuleType(package)
    pkg.__path__ = [str(root)]
    utils = types.ModuleType(f"{package}.utils")
    source = (root / "utils.py").read_text()
    [node] = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "append_dims"]
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(root / "utils.py"), "exec"), utils.__dict__)
    pkg.utils = utils
    sys.modules[package], sys.modules[utils.__name__] = pkg, utils
    spec = importlib.util.spec_from_file_location(f"{package}.sampling", root / "sampling.py")
    sampling = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = sampling
    spec.loader.exec_module(sampling)
    pkg.sampling = sampling
    return sampling
