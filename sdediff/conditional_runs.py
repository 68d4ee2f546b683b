"""Class-conditional runs on the command line: ``train --conditional``, ``sample --class --guidance``.

``sdediff train --data digits --conditional [--p-uncond 0.1]`` trains a class-conditional net
on the data set's labels (the digits' 0-9; a toy set's classes, see
:data:`sdediff.datasets.TOY_NUM_CLASSES`), dropping each label with probability ``p_uncond`` so
the same net also learns the unconditional score; ``run.json`` records ``num_classes``.

``sdediff sample --ckpt RUN --class 3 --guidance 2.0`` samples class 3 with classifier-free
guidance of weight ``w = 2`` (:func:`sdediff.classifier_free_guidance`:
``(1 + w) s(x, t, y) - w s(x, t, None)``; ``w = 0``, the default, is the plain conditional).
"""
from __future__ import annotations

import math
from typing import Any, Callable

from ._checks import arg_type
from .datasets import DIGITS_NUM_CLASSES, TOY_NUM_CLASSES

__all__ = ["TRAIN_OPTIONS", "SAMPLE_OPTIONS", "add_options", "data_num_classes", "guided_score",
           "guidance_title"]


_probability = arg_type(float, lambda v: 0.0 <= v < 1.0, "a probability in [0, 1)")
_class_label = arg_type(int, lambda v: v >= 0, "a class label (an integer >= 0)")
_finite_float = arg_type(float, math.isfinite, "a finite number")


#: ``sdediff train``'s conditional options: (flag, ``add_argument`` keywords).
TRAIN_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--conditional", dict(action="store_true",
                           help="train a class-conditional net on the data set's labels (digits: 0-9; toy sets: "
                                "their classes, e.g. the ring's 8 modes)")),
    ("--p-uncond", dict(type=_probability, default=0.1,
                        help="with --conditional: the probability of dropping a label, so the net also learns "
                             "the unconditional score that guidance needs (default: 0.1)")),
)

#: ``sdediff sample``'s conditional options.
SAMPLE_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--class", dict(dest="label", type=_class_label, default=None, metavar="K",
                     help="sample class K of a class-conditional checkpoint (trained with --conditional)")),
    ("--guidance", dict(type=_finite_float, default=0.0, metavar="W",
                        help="with --class: classifier-free guidance weight w, (1 + w) s(x|y) - w s(x); "
                             "0 = plain conditional (default: 0)")),
)


def add_options(opts, command: str) -> None:
    """Add ``command``'s conditional options through ``opts.add(flag, **keywords)``."""
    for flag, keywords in {"train": TRAIN_OPTIONS, "sample": SAMPLE_OPTIONS}[command]:
        opts.add(flag, **dict(keywords))


def data_num_classes(data: str) -> int:
    """The number of classes of a named data set, for ``--conditional``.

    Raises:
        ValueError: the data set has no labels (``swiss_roll``), naming the ones that do.
    """
    if data == "digits":
        return DIGITS_NUM_CLASSES
    if data in TOY_NUM_CLASSES:
        return TOY_NUM_CLASSES[data]
    raise ValueError(f"--conditional needs a labelled data set, and {data!r} has no classes; use one of "
                     f"digits, {', '.join(TOY_NUM_CLASSES)}")


def guided_score(model, label: int | None, guidance: float, ckpt: str = "the checkpoint") -> Callable:
    """The score ``sdediff sample`` runs: ``model`` itself, or class ``label`` with guidance weight ``guidance``.

    Raises:
        ValueError: ``--guidance`` without ``--class``; ``--class`` on an unconditional checkpoint
            or outside ``[0, num_classes)``.
    """
    from .guidance import classifier_free_guidance

    if label is None:
        if guidance != 0.0:
            raise ValueError(f"--guidance {guidance:g} needs --class K (the class to guide towards)")
        return model
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        raise ValueError(f"--class {label}: {ckpt} is unconditional (trained without --conditional); "
                         "drop --class, or train with 'sdediff train --conditional'")
    if not 0 <= label < num_classes:
        raise ValueError(f"--class {label} is outside [0, {num_classes}): {ckpt} has {num_classes} classes")
    return classifier_free_guidance(model, label, guidance)


def guidance_title(label: int | None, guidance: float) -> str:
    """`` class 3, w = 2`` for a picture's title (empty without a class)."""
    return "" if label is None else f", class {label}, w = {guidance:g}"
