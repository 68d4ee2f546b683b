"""diffusers models: a ``UNet2DModel`` (or any ``unet(x, timesteps).sample``) and its scheduler.

The scheduler's ``alphas_cumprod`` (``N`` entries) define a :class:`~sdediff.sde.DiscreteVPSDE`,
exact at every training noise level: diffusers' timestep ``k = 0..N-1`` is the DDPM index
``n = k + 1``, the time ``t = (k + 1) / N``, and the network sees the continuous timestep
``k = N t - 1`` (rounded only with ``quantize=True``). Its output, by
``scheduler.config.prediction_type``, becomes the noise ``eps`` of ``x = a x0 + s z``:

==================  ======================  ============================
prediction_type     the network predicts    ``eps``
==================  ======================  ============================
``"epsilon"``       ``eps``                 ``out``
``"sample"``        ``x0``                  ``(x - a out) / s``
``"v_prediction"``  ``v = a eps - s x0``    ``s x + a out`` (``a^2 + s^2 = 1``)
==================  ======================  ============================

and the score is ``-eps / s``. diffusers is needed only to load a saved folder; a model object
is used through its call alone.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..sde import DiscreteVPSDE
from ._base import AdaptedScoreModel, NetworkDtype, check_output, like

__all__ = ["DiffusersScoreModel", "from_diffusers", "PREDICTION_TYPES"]

#: ``scheduler.config.prediction_type`` values understood by :func:`from_diffusers`.
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample", "v_prediction")

_INSTALL = 'pip install "sdediff[diffusers]"  (or: pip install diffusers)'


class DiffusersScoreModel(AdaptedScoreModel):
    """A diffusers network and schedule as a score model (see the module notes).

    Args:
        unet: called as ``unet(x, timesteps, **unet_kwargs)``, returning an object with
            ``.sample``, a tuple whose first entry is the output, or the output tensor.
        alphas_cumprod: the scheduler's ``alphas_cumprod`` (``N`` entries).
        prediction_type: one of :data:`PREDICTION_TYPES`.
        quantize: round the network's timestep to the nearest training step.
        unet_kwargs: extra keyword arguments of every call (e.g. ``class_labels``).
    """

    def __init__(self, unet, alphas_cumprod, prediction_type: str = "epsilon", quantize: bool = False,
                 unet_kwargs: dict | None = None):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type (scheduler.config.prediction_type) must be one of "
                             f"{PREDICTION_TYPES}, got {prediction_type!r}")
        super().__init__(DiscreteVPSDE(alphas_cumprod=alphas_cumprod))
        if not callable(unet):
            raise TypeError(f"unet must be callable as unet(x, timesteps), got {type(unet).__name__}")
        self.unet = unet
        self.prediction_type = prediction_type
        self.quantize = bool(quantize)
        self.unet_kwargs = dict(unet_kwargs or {})
        self.num_train_timesteps = self.sde.num_steps
        self._dtype = NetworkDtype(unet)

    def timestep_of(self, t: Tensor) -> Tensor:
        """The network's timestep ``k = N t / T - 1`` of time ``t`` (float64; rounded if ``quantize``)."""
        k = torch.as_tensor(t, dtype=torch.float64).mul(self.num_train_timesteps / self.sde.T).sub_(1)
        return k.round_() if self.quantize else k

    def time_of(self, timesteps) -> Tensor:
        """The time ``t = (k + 1) T / N`` of diffusers timesteps ``k`` (float64)."""
        k = torch.as_tensor(timesteps).to(torch.float64)
        return (k + 1) * self.sde.T / self.num_train_timesteps

    def _eps(self, x: Tensor, t: Tensor, a: Tensor, s: Tensor) -> Tensor:
        dtype = self._dtype(x)
        out = self.unet(x.to(dtype), self.timestep_of(t).to(dtype), **self.unet_kwargs)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        out = check_output(out, x, "unet", allow_learned_variance=True)
        if self.prediction_type == "epsilon":
            return out
        a, s = like(a, x), like(s, x)
        if self.prediction_type == "sample":  # x = a x0 + s eps
            return (x - a * out) / s
        return s * x + a * out  # v = a eps - s x0 and a^2 + s^2 = 1

    def extra_repr(self) -> str:
        return f"prediction_type={self.prediction_type!r}, quantize={self.quantize}, N={self.num_train_timesteps}"


def from_diffusers(unet, scheduler=None, *, quantize: bool = False, unet_kwargs: dict | None = None,
                   torch_dtype: torch.dtype | None = None) -> DiffusersScoreModel:
    """A diffusers model as a score model ``score(x, t)`` with ``.sde`` and ``.time_of``.

    Args:
        unet: a ``UNet2DModel`` (or any module called as ``unet(x, timesteps).sample``), a
            pipeline with ``.unet`` and ``.scheduler``, or the path of a local folder written by
            ``save_pretrained``: either a model folder (``config.json`` and its weights, with the
            scheduler's ``scheduler_config.json`` beside them) or a pipeline folder (``unet/``
            and ``scheduler/``). Folders are read offline: nothing is ever downloaded.
        scheduler: any diffusers scheduler (anything with ``alphas_cumprod`` and
            ``config.prediction_type``); read from the folder or pipeline when omitted.
        quantize: round the network's timestep ``N t - 1`` to an integer.
        unet_kwargs: extra keyword arguments of every network call (e.g. ``class_labels``).
        torch_dtype: the dtype to load a folder's weights in.

    Returns:
        A :class:`DiffusersScoreModel`; ``.sde`` is the :class:`~sdediff.sde.DiscreteVPSDE` of
        ``scheduler.alphas_cumprod``, ``.time_of(k) = (k + 1) / N``.

    Raises:
        ImportError: a folder was given and diffusers is not installed.
        FileNotFoundError: the folder has no model (or no scheduler config, and none was given).
        TypeError: ``scheduler`` missing or without ``alphas_cumprod``.
        ValueError: an unknown ``prediction_type``.
    """
    if isinstance(unet, (str, os.PathLike)):
        unet, loaded = _load_folder(Path(unet), need_scheduler=scheduler is None, torch_dtype=torch_dtype)
        scheduler = scheduler if scheduler is not None else loaded
    elif scheduler is None and hasattr(unet, "unet") and hasattr(unet, "scheduler"):
        unet, scheduler = unet.unet, unet.scheduler  # a pipeline
    if scheduler is None:
        raise TypeError("from_diffusers needs a scheduler (with alphas_cumprod), e.g. "
                        "from_diffusers(unet, DDPMScheduler())")
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise TypeError(f"scheduler must have alphas_cumprod (a discrete VP schedule), "
                        f"got {type(scheduler).__name__} without it")
    config = getattr(scheduler, "config", None)
    prediction_type = getattr(config, "prediction_type", None)
    if prediction_type is None and isinstance(config, dict):
        prediction_type = config.get("prediction_type")
    prediction_type = prediction_type or getattr(scheduler, "prediction_type", "epsilon")
    return DiffusersScoreModel(unet, alphas_cumprod, prediction_type, quantize=quantize,
                               unet_kwargs=unet_kwargs)


def _import_diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise ImportError(f"loading a diffusers folder needs the diffusers package: {_INSTALL}") from err
    return diffusers


def _class_of(diffusers, config_path: Path, default: str):
    name = json.loads(config_path.read_text()).get("_class_name", default)
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"{config_path} names the class {name!r}, which diffusers "
                         f"{diffusers.__version__} does not have")
    return cls


def _load_folder(folder: Path, need_scheduler: bool, torch_dtype) -> tuple[nn.Module, object]:
    """The network and scheduler of a ``save_pretrained`` folder (model or pipeline layout), offline."""
    diffusers = _import_diffusers()
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder} (from_diffusers reads local folders only)")
    if (folder / "unet" / "config.json").is_file():  # pipeline layout
        model_dir, scheduler_dir = folder / "unet", folder / "scheduler"
    elif (folder / "config.json").is_file():  # model layout, scheduler config beside it
        model_dir, scheduler_dir = folder, folder
    else:
        raise FileNotFoundError(f"{folder} holds no diffusers model: expected config.json (a model folder) "
                                "or unet/config.json (a pipeline folder)")
    kwargs = {"local_files_only": True, "low_cpu_mem_usage": False}  # (no accelerate needed, or nagged for)
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    unet = _class_of(diffusers, model_dir / "config.json", "UNet2DModel").from_pretrained(model_dir, **kwargs)
    unet.eval()
    scheduler = None
    config = scheduler_dir / "scheduler_config.json"
    if config.is_file():
        cls = _class_of(diffusers, config, "DDPMScheduler")
        scheduler = cls.from_pretrained(scheduler_dir, local_files_only=True)
    elif need_scheduler:
        raise FileNotFoundError(f"{scheduler_dir} has no scheduler_config.json; save the scheduler there "
                                "(scheduler.save_pretrained(folder)) or pass scheduler=")
    return unet, scheduler
