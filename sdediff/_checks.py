"""Small checks shared by the samplers and the likelihood."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` is finite, usually with one reduction.

    A NaN/inf entry makes the sum non-finite; only a finite sum that overflows falls
    through to the (slower) elementwise check.
    """
    return math.isfinite(float(x.detach().sum())) or bool(torch.isfinite(x).all())
