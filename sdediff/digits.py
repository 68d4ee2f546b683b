"""The scikit-learn digits as tensors: 8x8 images, 17 grey levels, a fixed train/val/test split.

:func:`load_digits_tensors` wraps :func:`sklearn.datasets.load_digits` (1,797 images bundled
with scikit-learn, nothing is downloaded); :mod:`sdediff.datasets` re-exports every name.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch

from .quantization import levels_to_range

__all__ = ["DIGITS_NUM_LEVELS", "DIGITS_NUM_CLASSES", "DIGITS_SPLIT_SIZES", "digits_split_indices",
           "load_digits_tensors"]


# --------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------

#: Grey levels of the digits images: integers ``0..16``.
DIGITS_NUM_LEVELS = 17

#: Classes of the digits: the labels ``0..9`` (``load_digits_tensors(..., return_labels=True)``).
DIGITS_NUM_CLASSES = 10

#: Sizes of the fixed split of the 1,797 digits (train and val together form the training pool).
DIGITS_SPLIT_SIZES: dict[str, int] = {"train": 1297, "val": 200, "test": 300}

_DIGITS_TOTAL = 1797
_DIGITS_SPLITS = ("train", "val", "test", "trainval")


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn; nothing is downloaded

    bunch = load_digits()
    images = np.rint(bunch.images).astype(np.int64)  # (1797, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)
    if images.shape[0] != _DIGITS_TOTAL:
        raise RuntimeError(f"expected {_DIGITS_TOTAL} digits from scikit-learn, got {images.shape[0]}")
    return images, labels


@functools.lru_cache(maxsize=1)
def _digits_permutation() -> tuple[int, ...]:
    # Sort indices by a cryptographic hash: a fixed permutation that no library version can change.
    key = lambda i: hashlib.sha256(f"sdediff-digits-{i}".encode()).digest()  # noqa: E731
    return tuple(sorted(range(_DIGITS_TOTAL), key=key))


def digits_split_indices(split: str = "train") -> torch.Tensor:
    """Indices (into ``sklearn.datasets.load_digits()`` order) of a fixed digits split.

    The 1,797 images are ordered by a fixed pseudo-random permutation (indices sorted by the
    SHA-256 hash of ``"sdediff-digits-{i}"``, independent of any RNG or library version).
    The first 300 form ``"test"``; the remaining 1,497 form the training pool ``"trainval"``,
    of which the first 200 are ``"val"`` and the last 1,297 are ``"train"``. Test images never
    enter the training pool, and ``"val"`` is carved out of it.

    Args:
        split: ``"train"`` (1,297), ``"val"`` (200), ``"test"`` (300) or ``"trainval"`` (1,497).

    Returns:
        Sorted ``int64`` tensor of indices.

    Raises:
        ValueError: If ``split`` is unknown.
    """
    if split not in _DIGITS_SPLITS:
        raise ValueError(f"split must be one of {_DIGITS_SPLITS}, got {split!r}")
    perm = _digits_permutation()
    n_test, n_val = DIGITS_SPLIT_SIZES["test"], DIGITS_SPLIT_SIZES["val"]
    chosen = {
        "test": perm[:n_test],
        "val": perm[n_test : n_test + n_val],
        "train": perm[n_test + n_val :],
        "trainval": perm[n_test:],
    }[split]
    return torch.tensor(sorted(chosen), dtype=torch.int64)


def load_digits_tensors(
    split: str = "train",
    *,
    output: str = "levels",
    low: float = -1.0,
    high: float = 1.0,
    dtype: torch.dtype = torch.float32,
    return_labels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The scikit-learn digits as tensors of shape ``(n, 1, 8, 8)``.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"``; see :func:`digits_split_indices`.
        output: ``"levels"`` for the integer grey levels ``0..16`` (``int64``), or ``"range"`` for
            the bin centres in ``[low, high]`` (:func:`levels_to_range`). For likelihoods, load
            levels and :func:`dequantize` them.
        low: Lower end of the continuous range (``output="range"``).
        high: Upper end of the continuous range (``output="range"``).
        dtype: Floating dtype for ``output="range"``.
        return_labels: Also return the class labels ``0..9`` (``int64``, shape ``(n,)``).

    Returns:
        The images, or ``(images, labels)`` when ``return_labels`` is true.

    Raises:
        ValueError: If ``split`` or ``output`` is unknown, or ``low >= high``.
    """
    if output not in ("levels", "range"):
        raise ValueError(f"output must be one of ('levels', 'range'), got {output!r}")
    index = digits_split_indices(split).numpy()
    images, labels = _digits_arrays()
    levels = torch.from_numpy(images[index].copy()).unsqueeze(1)
    x = levels if output == "levels" else levels_to_range(levels, DIGITS_NUM_LEVELS, low, high, dtype=dtype)
    if return_labels:
        return x, torch.from_numpy(labels[index].copy())
    return x
