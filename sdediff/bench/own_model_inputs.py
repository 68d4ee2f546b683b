"""What :mod:`sdediff.bench.own_model` takes in: the user's model (``--model MODULE:FUNCTION``) and data files."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import torch

from ..sde import SDE

__all__ = ["load_model_function", "load_array", "probe"]


def load_model_function(spec: str) -> tuple[Callable, SDE]:
    """``(score_fn, sde)`` from ``module:function``; the module is a dotted import path or a ``.py`` file.

    Raises:
        ValueError: ``spec`` is not ``module:function``.
        ImportError: the module does not import, or has no such function.
        TypeError: the function does not return ``(score_fn, sde)`` with a callable score and an sdediff SDE.
    """
    module_name, sep, fn_name = spec.rpartition(":")
    if not sep or not module_name or not fn_name:
        raise ValueError(f"--model must be MODULE:FUNCTION (a dotted module or a .py file), got {spec!r}")
    try:
        if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise FileNotFoundError(f"--model {spec}: no file {module_name}")
            loader = importlib.util.spec_from_file_location(f"_sdediff_user_model_{path.stem}", path)
            module = importlib.util.module_from_spec(loader)
            sys.path.insert(0, str(path.resolve().parent))  # the file may import its neighbours
            try:
                loader.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.resolve().parent))
        else:
            module = importlib.import_module(module_name)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to import is the user's module failing
        raise ImportError(f"--model {spec}: cannot import {module_name!r}: {type(err).__name__}: {err}") from err
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ImportError(f"--model {spec}: module {module_name!r} has no function {fn_name!r}")
    got = fn()
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        raise TypeError(f"--model {spec}: {fn_name}() must return (score_fn, sde), got {type(got).__name__}")
    score_fn, sde = got
    if not callable(score_fn):
        raise TypeError(f"--model {spec}: the score_fn {fn_name}() returned is not callable")
    if not isinstance(sde, SDE):
        raise TypeError(f"--model {spec}: the sde {fn_name}() returned must be an sdediff SDE "
                        f"(e.g. sdediff.VPSDE()), got {type(sde).__name__}")
    return score_fn, sde


def load_array(path: str) -> torch.Tensor:
    """Examples from a ``.npy`` file or a ``.npz`` file (its only array, or the one named ``x`` / ``data``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable file, several unnamed arrays, or not a finite numeric array
            ``(examples, ...)``.
    """
    import numpy as np

    if not Path(path).is_file():
        raise FileNotFoundError(f"--data {path}: no such file (give a data set name or a .npy/.npz file)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"--data {path}: not a readable .npy/.npz file ({err})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = list(loaded.keys())
        key = keys[0] if len(keys) == 1 else next((k for k in ("x", "data") if k in keys), None)
        if key is None:
            raise ValueError(f"--data {path}: holds arrays {keys}; name the examples 'x' or 'data'")
        loaded = loaded[key]
    if loaded.dtype.kind not in "fiu" or loaded.ndim < 2:
        raise ValueError(f"--data {path}: need a numeric array of examples (N, ...), got dtype {loaded.dtype} "
                         f"and shape {loaded.shape}")
    x = torch.from_numpy(np.asarray(loaded, dtype=np.float64))
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"--data {path}: holds NaN or inf")
    return x


def probe(score_fn, sde: SDE, x: torch.Tensor, what: str) -> None:
    """Call the score once on two data examples: a wrong example shape fails here, in one line."""
    t = torch.full((x.shape[0],), 0.5 * sde.T, dtype=x.dtype)
    try:
        with torch.no_grad():
            s = score_fn(x, t)
    except Exception as err:  # noqa: BLE001 - the user's score failing on the data's shape
        raise ValueError(f"{what} fails on examples of shape {tuple(x.shape[1:])} from --data: "
                         f"{type(err).__name__}: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"{what} returns {got} for examples of shape {tuple(x.shape)} from --data; "
                         "the data do not fit the model")
