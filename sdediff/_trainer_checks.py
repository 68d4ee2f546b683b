"""Checks of the :class:`~sdediff.training.Trainer`'s inputs: hyper-parameter ranges, data, labels,
and whether a module's weights are finite. Every error names the argument and what it should be."""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import all_finite
from .losses import WEIGHTINGS

__all__ = ["LR_SCHEDULES", "resolve_options", "check_number", "check_settings", "check_probability", "check_data", "check_labels", "finite_parameters"]


#: The learning-rate schedules after the warm-up.
LR_SCHEDULES = ("constant", "cosine")


def resolve_options(weighting: str, val_weighting: str | None, lr_schedule: str | None, max_seconds: Any,
                    max_time: Any, importance_sampling: bool) -> tuple[str, str, Any]:
    """Check the Trainer's named options; returns ``val_weighting``, ``lr_schedule`` and ``max_seconds``
    with their defaults filled in (``"cosine"`` with a time budget; ``max_time`` is its deprecated alias).

    Raises:
        ValueError: an unknown weighting or schedule, both ``max_seconds`` and ``max_time``, or
            importance sampling without the likelihood weighting.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    val_weighting = weighting if val_weighting is None else val_weighting
    if val_weighting not in WEIGHTINGS:
        raise ValueError(f"val_weighting must be one of {WEIGHTINGS}, got {val_weighting!r}")
    if lr_schedule is None:  # the deprecated max_time keeps its old default, "constant"
        lr_schedule = "cosine" if max_seconds is not None else "constant"
    if max_time is not None:
        warnings.warn("Trainer(max_time=...) is deprecated; use max_seconds=...", DeprecationWarning, 3)
        if max_seconds is not None:
            raise ValueError("pass max_seconds or its deprecated alias max_time, not both")
        max_seconds = max_time
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if importance_sampling and weighting != "likelihood":
        raise ValueError("importance_sampling=True needs weighting='likelihood'")
    return val_weighting, lr_schedule, max_seconds


def check_number(name: str, value: Any, low: float, high: float = math.inf, *, integer: bool = False,
                 closed: bool = False, optional: bool = False) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` lies in ``[low, high)`` (``closed``) or
    ``(low, high)``, is an int (``integer``), or is ``None`` (``optional``)."""
    if optional and value is None:
        return
    kind = numbers.Integral if integer else numbers.Real
    if (isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value)
            or not (low <= value if closed else low < value) or not value < high):
        where = f"in {'[' if closed else '('}{low}, {high})" if high < math.inf else f"{'>=' if closed else '>'} {low}"
        raise ValueError(f"{name} must be {'an int' if integer else 'a finite number'} {where}"
                         f"{' or None' if optional else ''}, got {value!r}")


#: The Trainer's numeric settings: name -> (low, high, integer, closed, optional), see :func:`check_number`.
SETTINGS: dict[str, tuple[float, float, bool, bool, bool]] = {
    "batch_size": (1, math.inf, True, True, False), "steps": (1, math.inf, True, True, False),
    "checkpoint_every": (1, math.inf, True, True, False), "log_every": (1, math.inf, True, True, False),
    "keep_checkpoints": (1, math.inf, True, True, False), "val_every": (1, math.inf, True, True, True),
    "early_stopping": (1, math.inf, True, True, True), "warmup": (0, math.inf, True, True, False),
    "seed": (-math.inf, math.inf, True, False, False), "lr": (0.0, math.inf, False, False, False),
    "grad_clip": (0.0, math.inf, False, False, True), "max_seconds": (0.0, math.inf, False, False, True),
    "weight_decay": (0.0, math.inf, False, True, False), "ema_decay": (0.0, 1.0, False, True, False),
}


def check_settings(**settings: Any) -> None:
    """:func:`check_number` on each keyword, with its range from :data:`SETTINGS`, in the order given."""
    for name, value in settings.items():
        low, high, integer, closed, optional = SETTINGS[name]
        check_number(name, value, low, high, integer=integer, closed=closed, optional=optional)


def check_probability(name: str, value: Any) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a real number in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def check_data(model: nn.Module, name: str, data: Any, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``data`` on ``device`` in ``dtype``, checked to be finite, of shape ``(N, *dims)`` and accepted by
    ``model`` (one forward pass on one example, unconditional).

    Raises:
        TypeError: ``data`` is not a tensor.
        ValueError: the wrong shape (for the network: named with its config), or NaN/inf entries.
    """
    if not isinstance(data, Tensor):
        raise TypeError(f"{name} must be a tensor of shape (N, *dims), got {type(data).__name__}")
    if data.dim() < 2 or data.shape[0] < 1:
        raise ValueError(f"{name} must have shape (N, *dims) with N >= 1, got {tuple(data.shape)}")
    data = data.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"{name} contains NaN or inf")
    dims = tuple(data.shape[1:])
    net = model.net
    net_desc = f"{getattr(net, 'net_name', type(net).__name__)} {getattr(net, 'config', '')}"
    t = torch.full((1,), 0.5, dtype=dtype, device=device)
    try:
        with torch.no_grad():
            out = model(data[:1], t)
    except (ValueError, RuntimeError, TypeError) as err:
        raise ValueError(f"{name} has examples of shape {dims}, which the network ({net_desc}) does "
                         f"not accept: {err}") from err
    if tuple(out.shape[1:]) != dims:
        raise ValueError(f"{name} has examples of shape {dims} but the network ({net_desc}) returns "
                         f"{tuple(out.shape[1:])}")
    return data


def check_labels(name: str, labels: Any, num_classes: int | None, data_name: str, num_examples: int
                 ) -> Tensor | None:
    """The class labels of ``num_examples`` examples as a CPU int64 tensor (``None`` for none).

    Raises:
        ValueError: labels for an unconditional model (``num_classes=None``), no labels for a
            conditional one, labels that are not an integer tensor of shape ``(N,)`` aligned with
            ``data_name``, or labels outside ``[0, num_classes)``.
    """
    if labels is None:
        if num_classes is not None:
            raise ValueError(f"the model is class-conditional (num_classes={num_classes}) but {name} is None; pass "
                             f"{name}=<integer tensor ({num_examples},)> aligned with {data_name}, or build the net "
                             "without num_classes for an unconditional model")
        return None
    if num_classes is None:
        raise ValueError(f"{name} was given, but the model is unconditional (its net has num_classes=None); "
                         f"build the net with num_classes=K to train on labels, or pass {name}=None")
    if not isinstance(labels, Tensor) or labels.dtype == torch.bool or labels.is_floating_point() \
            or labels.is_complex():
        got = f"a {labels.dtype} tensor" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be an integer tensor of class indices, got {got}")
    if labels.shape != (num_examples,):
        raise ValueError(f"{name} must have shape ({num_examples},), one label per example of {data_name}, "
                         f"got {tuple(labels.shape)}")
    labels = labels.detach().to(device="cpu", dtype=torch.int64)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes}) for a net with num_classes={num_classes}, "
                         f"got values in [{low}, {high}] (the null class {num_classes} is drawn by p_uncond)")
    return labels


def finite_parameters(module: nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite, with one reduction (the sum of L1 norms)."""
    params = [p.detach() for p in module.parameters()]
    return not params or all_finite(torch.stack(torch._foreach_norm(params, 1)))
