"""Small checks shared by the samplers, the likelihood and the command line."""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable

import torch
from torch import Tensor


def all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` is finite, usually with one reduction.

    A NaN/inf entry makes the sum non-finite; only a finite sum that overflows falls
    through to the (slower) elementwise check.
    """
    return math.isfinite(float(x.detach().sum())) or bool(torch.isfinite(x).all())


def arg_type(cast: Callable, accept: Callable, expected: str) -> Callable[[str], Any]:
    """An argparse ``type=`` that casts the text and checks it, naming what was expected."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse
