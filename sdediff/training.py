"""Training score models: the :class:`Trainer` and its checkpoints.

The trainer runs AdamW with a linear warm-up (optionally a cosine decay), gradient clipping, an
exponential moving average (EMA) of the weights -- the EMA weights are what is validated, saved
for sampling and returned -- a tqdm bar, a JSONL metrics log and atomic, resumable checkpoints.

Randomness. Two CPU ``torch.Generator``\\ s, seeded from ``seed``, drive everything: one the data
order (an epoch-wise permutation), one the per-example times ``t`` and noises ``z``. Both draw for
the *global* batch, on every process alike; each process then takes its own contiguous slice. So
a run on ``W`` processes sees exactly the same examples, times and noises as a run on one process,
and since DDP averages the gradients of the per-process mean losses, the update equals the
one-process update of the global-batch mean (up to floating-point summation order). The generator
states (and torch's global RNG state, for dropout) are checkpointed, so a resumed run continues
exactly as the uninterrupted one. Dropout masks are the one thing that differs between a
one-process and a multi-process run.

Checkpoints (``out_dir/checkpoints/step_XXXXXXXX/``)::

    meta.json               format, step, the net's build_net name + config, the parameterization,
                            the SDE (type + parameters) or DDPM chain, trainer settings, counters
    model.safetensors       the trained weights
    ema.safetensors         the EMA weights (what load_checkpoint returns by default)
    best_ema.safetensors    the EMA weights with the best validation loss (with val_data)
    optimizer.safetensors   AdamW moments and step counts (param_groups are in meta.json)
    state.safetensors       generator states, torch RNG state, the current data permutation

Nothing is ever unpickled: tensors are read with safetensors, everything else from JSON. A
checkpoint is written into a temporary directory that is renamed (``os.replace``) when complete;
``checkpoints/latest.json`` is then replaced atomically to point at it. A crash mid-write leaves a
stray temporary directory and the previous checkpoint still current and loadable.

Distributed: under ``torchrun --nproc_per_node=N`` (or with a process group already initialized)
the trainer wraps the model in ``DistributedDataParallel`` (gloo on CPU, NCCL on CUDA); the global
``batch_size`` must be divisible by the number of processes; process 0 writes the log and the
checkpoints.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .ddpm import DDPM
from .losses import WEIGHTINGS, ddpm_loss, dsm_loss, sample_time
from .parameterization import DiscreteScoreModel, ScoreModel
from .sde import LinearSDE, SubVPSDE, VESDE, VPSDE

__all__ = ["Trainer", "load_checkpoint", "read_checkpoint_meta", "latest_checkpoint",
           "sde_to_config", "sde_from_config", "model_to_config"]

CHECKPOINT_FORMAT = 1
_LR_SCHEDULES = ("constant", "cosine")
_WHICH = ("ema", "model", "best")


# --------------------------------------------------------------------------- configs
def sde_to_config(sde: LinearSDE) -> dict[str, Any]:
    """A JSON description of a built-in SDE (``type`` + parameters); other SDEs by ``repr`` only."""
    kind = type(sde)
    if kind in (VPSDE, SubVPSDE):
        return {"type": kind.__name__, "beta_min": sde.beta_min, "beta_max": sde.beta_max, "T": sde.T}
    if kind is VESDE:
        return {"type": "VESDE", "sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max, "T": sde.T}
    return {"type": kind.__name__, "repr": repr(sde), "T": sde.T}


def sde_from_config(config: dict[str, Any]) -> LinearSDE:
    """Rebuild a built-in SDE from :func:`sde_to_config`.

    Raises:
        ValueError: the SDE is not a built-in one (pass the SDE object to the loader instead).
    """
    kinds = {"VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "VESDE": VESDE}
    kind = kinds.get(config.get("type"))
    if kind is None:
        raise ValueError(f"the checkpoint's SDE {config.get('repr', config.get('type'))!r} is not one of "
                         f"{tuple(kinds)} and cannot be rebuilt from JSON; pass sde=... to load_checkpoint")
    return kind(**{k: v for k, v in config.items() if k != "type"})


def _ddpm_config(ddpm: DDPM) -> dict[str, Any]:
    cfg = {"num_steps": ddpm.num_steps, "schedule": ddpm.schedule}
    if ddpm.schedule == "linear":
        cfg.update(beta_start=ddpm.beta_start, beta_end=ddpm.beta_end)
    return cfg


def model_to_config(model: ScoreModel) -> dict[str, Any]:
    """Everything needed to rebuild ``model``'s architecture: net name + config, wrapper, SDE/DDPM.

    Raises:
        ValueError: the net has no ``net_name``/``config`` (it cannot be rebuilt by ``build_net``).
    """
    net = model.net
    name, config = getattr(net, "net_name", None), getattr(net, "config", None)
    if name is None or not isinstance(config, dict):
        raise ValueError(f"the network {type(net).__name__} has no net_name/config, so a checkpoint "
                         "could not rebuild it; use a network from sdediff.nets")
    out = {"net": {"name": name, "config": json.loads(json.dumps(config))}, "model": model.config()}
    if isinstance(model, DiscreteScoreModel):
        out["ddpm"] = _ddpm_config(model.ddpm)
    else:
        out["sde"] = sde_to_config(model.sde)
    return out


def _architecture_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two :func:`model_to_config` results."""
    problems = []
    if saved["net"]["name"] != current["net"]["name"]:
        problems.append(f"net {saved['net']['name']!r} in the checkpoint vs {current['net']['name']!r} here")
    else:
        a, b = saved["net"]["config"], current["net"]["config"]
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                problems.append(f"net {key}={a.get(key)!r} in the checkpoint vs {b.get(key)!r} here")
    for part in ("model", "sde", "ddpm"):
        if saved.get(part) != current.get(part):
            problems.append(f"{part} {saved.get(part)} in the checkpoint vs {current.get(part)} here")
    return problems


# ------------------------------------------------------------------- safetensors I/O
def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path))


def _load_tensors(path: Path, device=None) -> dict[str, Tensor]:
    from safetensors.torch import load_file
    return load_file(str(path), device=str(device) if device is not None else "cpu")


def _write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True))


def _optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, val in entry.items():
            if isinstance(val, Tensor):
                tensors[f"{idx}.{key}"] = val
            else:
                scalars[f"{idx}.{key}"] = val
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, val in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    return {"state": state, "param_groups": meta["param_groups"]}


def latest_checkpoint(path: str | os.PathLike) -> Path:
    """Resolve ``path`` (a run's ``out_dir``, its ``checkpoints/`` folder, or a checkpoint folder).

    Raises:
        FileNotFoundError: no complete checkpoint there.
    """
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    for folder in (path, path / "checkpoints"):
        pointer = folder / "latest.json"
        if pointer.is_file():
            target = folder / json.loads(pointer.read_text())["dir"]
            if (target / "meta.json").is_file():
                return target
            raise FileNotFoundError(f"{pointer} points to {target}, which is not a complete checkpoint")
    raise FileNotFoundError(f"no checkpoint at {path} (expected meta.json, latest.json or checkpoints/latest.json)")


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta.json`` of a checkpoint (see :func:`latest_checkpoint` for ``path``)."""
    return json.loads((latest_checkpoint(path) / "meta.json").read_text())


def load_checkpoint(path: str | os.PathLike, which: str = "ema", *, sde: LinearSDE | None = None,
                    device=None, dtype: torch.dtype | None = None) -> ScoreModel:
    """Rebuild a trained model from a checkpoint (never unpickles: safetensors + JSON).

    Args:
        path: a run's ``out_dir``, its ``checkpoints/`` folder, or one checkpoint folder.
        which: ``"ema"`` (the EMA weights, default), ``"model"`` (the raw trained weights) or
            ``"best"`` (the EMA weights with the best validation loss; falls back to ``"ema"``
            when the run had no validation data).
        sde: the SDE, required only when the checkpoint's SDE is not a built-in one.
        device, dtype: where to put the model (default: CPU, the saved dtype).

    Returns:
        The :class:`ScoreModel` (or :class:`DiscreteScoreModel`), in eval mode.

    Raises:
        ValueError: unknown ``which``, a non-built-in SDE without ``sde=``, or weights that do not
            fit the recorded architecture.
        FileNotFoundError: no checkpoint at ``path``.
    """
    from .nets import build_net

    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    folder = latest_checkpoint(path)
    meta = json.loads((folder / "meta.json").read_text())
    arch = meta["architecture"]
    net = build_net(arch["net"]["name"], **arch["net"]["config"])
    wrapper = arch["model"]
    if wrapper["kind"] == "discrete":
        model: ScoreModel = DiscreteScoreModel(net, DDPM(**arch["ddpm"]), wrapper["parameterization"],
                                                   wrapper.get("index_scale", 1.0))
    else:
        the_sde = sde if sde is not None else sde_from_config(arch["sde"])
        model = ScoreModel(net, the_sde, wrapper["parameterization"], wrapper["time_input"],
                           wrapper.get("sigma_data"))
    name = {"ema": "ema", "model": "model", "best": "best_ema"}[which]
    if not (folder / f"{name}.safetensors").is_file():
        name = "ema"
    state = _load_tensors(folder / f"{name}.safetensors")
    _load_state_checked(model, state, f"{folder / name}.safetensors")
    model = model.to(device=device, dtype=dtype or next(iter(state.values())).dtype)
    return model.eval()


def _load_state_checked(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} saved vs {tuple(own[k].shape)} here"
              for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or extra or shapes:
        raise ValueError(f"the weights in {source} do not match the architecture: "
                         f"missing {missing[:5]}, unexpected {extra[:5]}, shape mismatches {shapes[:5]}")
    model.load_state_dict(state)


# ---------------------------------------------------------------------- distributed
def _dist_info() -> tuple[bool, int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def _maybe_init_distributed(device: torch.device) -> None:
    """Initialize the default process group under ``torchrun`` (``WORLD_SIZE > 1`` in the environment)."""
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


# --------------------------------------------------------------------------- trainer
class Trainer:
    """Train a score model by denoising score matching (or DDPM's loss for a discrete model).

    Args:
        model: a :class:`ScoreModel` (DSM loss) or :class:`DiscreteScoreModel` (DDPM loss).
        sde: the SDE of the DSM loss; defaults to ``model.sde``.
        data: training data ``(N, *dims)``; moved to the model's device and dtype.
        lr: peak learning rate of AdamW.
        batch_size: the global batch size (split across processes).
        steps: total optimizer steps.
        warmup: linear warm-up steps of the learning rate.
        lr_schedule: ``"constant"`` after warm-up, or ``"cosine"`` decay to 0 at ``steps``.
        weight_decay: AdamW's decoupled weight decay.
        grad_clip: clip the global gradient norm to this (``None``: no clipping).
        ema_decay: EMA decay; the effective decay is ``min(ema_decay, (1 + k) / (10 + k))`` at step
            ``k`` so early averages are not dominated by the initialization.
        weighting: DSM weighting, one of :data:`sdediff.losses.WEIGHTINGS`.
        importance_sampling: draw ``t ∝ g^2/s^2`` (with ``weighting="likelihood"``).
        eps: the smallest training time.
        out_dir: where the metrics log and checkpoints go (``None``: nothing is written).
        checkpoint_every: steps between checkpoints (a checkpoint is also written at the end).
        keep_checkpoints: how many checkpoints to keep.
        log_every: steps between metrics records (loss averaged over the window).
        seed: seeds the data-order and noise generators.
        val_data: validation data ``(M, *dims)`` (never the test split) for early stopping.
        val_every: steps between validations (default ``log_every``).
        val_weighting: weighting of the validation loss (default ``weighting``); it uses fixed
            times and noises, so successive values are comparable.
        early_stopping: stop after this many validations without improvement (``None``: never).
        max_time: stop after this many seconds of training (``None``: no limit).
        progress: show a tqdm bar (process 0 only).
        device: where to train (default: the model's device).

    Raises:
        ValueError: data of the wrong shape for the network (found by a forward pass on one
            example), an unknown weighting or schedule, or a batch size that the data or the
            number of processes cannot provide.
    """

    def __init__(self, model: ScoreModel, sde: LinearSDE | None = None, data: Tensor | None = None, *,
                 lr: float = 1e-3, batch_size: int = 256, steps: int = 10_000, warmup: int = 100,
                 lr_schedule: str = "constant", weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                 ema_decay: float = 0.999, weighting: str = "score", importance_sampling: bool = False,
                 eps: float = 1e-5, out_dir: str | os.PathLike | None = None, checkpoint_every: int = 1000,
                 keep_checkpoints: int = 2, log_every: int = 100, seed: int = 0,
                 val_data: Tensor | None = None, val_every: int | None = None, val_weighting: str | None = None,
                 early_stopping: int | None = None, max_time: float | None = None, progress: bool = True,
                 device=None):
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be a ScoreModel or DiscreteScoreModel, got {type(model).__name__}")
        self.discrete = isinstance(model, DiscreteScoreModel)
        self.sde = sde if sde is not None else model.sde
        if not self.discrete and not isinstance(self.sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE, got {type(self.sde).__name__}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        val_weighting = weighting if val_weighting is None else val_weighting
        if val_weighting not in WEIGHTINGS:
            raise ValueError(f"val_weighting must be one of {WEIGHTINGS}, got {val_weighting!r}")
        if lr_schedule not in _LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {_LR_SCHEDULES}, got {lr_schedule!r}")
        for name, val in (("batch_size", batch_size), ("steps", steps), ("checkpoint_every", checkpoint_every),
                          ("log_every", log_every), ("keep_checkpoints", keep_checkpoints)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay!r}")
        if importance_sampling and weighting != "likelihood":
            raise ValueError("importance_sampling=True needs weighting='likelihood'")

        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        _maybe_init_distributed(self.device)
        self.distributed, self.rank, self.world_size = _dist_info()
        if self.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
        self.dtype = param.dtype
        if batch_size % self.world_size:
            raise ValueError(f"batch_size={batch_size} must be divisible by the number of processes "
                             f"({self.world_size}): each process takes an equal slice of the global batch")

        self.model = model.to(self.device)
        self.data = self._check_data("data", data)
        if batch_size > self.data.shape[0]:
            raise ValueError(f"batch_size={batch_size} exceeds the number of training examples "
                             f"({self.data.shape[0]})")
        self.val_data = None if val_data is None else self._check_data("val_data", val_data)
        self.architecture = model_to_config(model) if hasattr(model.net, "net_name") else None

        self.lr, self.batch_size, self.steps, self.warmup = float(lr), batch_size, steps, int(warmup)
        self.lr_schedule, self.grad_clip, self.ema_decay = lr_schedule, grad_clip, float(ema_decay)
        self.weighting, self.importance_sampling, self.eps = weighting, bool(importance_sampling), float(eps)
        self.val_weighting = val_weighting
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every, self.keep_checkpoints, self.log_every = checkpoint_every, keep_checkpoints, log_every
        self.val_every = val_every or log_every
        self.early_stopping, self.max_time, self.progress, self.seed = early_stopping, max_time, progress, seed

        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=weight_decay,
                                           foreach=True)
        self.train_module: nn.Module = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_module = DistributedDataParallel(self.model, device_ids=ids)

        self.data_generator = torch.Generator().manual_seed(2 * int(seed))
        self.noise_generator = torch.Generator().manual_seed(2 * int(seed) + 1)
        self.permutation = torch.randperm(self.data.shape[0], generator=self.data_generator)
        self.position = 0
        self.step = 0
        self.losses: list[float] = []
        self.history: list[dict[str, Any]] = []
        self.best_val = math.inf
        self.best_step: int | None = None
        self.bad_validations = 0
        self.best_ema_state: dict[str, Tensor] | None = None
        self.stopped_early = False
        self._val_draws = self._validation_draws() if self.val_data is not None else None

    # ------------------------------------------------------------------- checks
    def _check_data(self, name: str, data: Tensor | None) -> Tensor:
        if not isinstance(data, Tensor):
            raise TypeError(f"{name} must be a tensor of shape (N, *dims), got {type(data).__name__}")
        if data.dim() < 2 or data.shape[0] < 1:
            raise ValueError(f"{name} must have shape (N, *dims) with N >= 1, got {tuple(data.shape)}")
        data = data.to(device=self.device, dtype=self.dtype)
        if not bool(torch.isfinite(data).all()):
            raise ValueError(f"{name} contains NaN or inf")
        dims = tuple(data.shape[1:])
        net = self.model.net
        net_desc = f"{getattr(net, 'net_name', type(net).__name__)} {getattr(net, 'config', '')}"
        t = torch.full((1,), 0.5, dtype=self.dtype, device=self.device)
        try:
            with torch.no_grad():
                out = self.model(data[:1], t)
        except (ValueError, RuntimeError, TypeError) as err:
            raise ValueError(f"{name} has examples of shape {dims}, which the network ({net_desc}) does "
                             f"not accept: {err}") from err
        if tuple(out.shape[1:]) != dims:
            raise ValueError(f"{name} has examples of shape {dims} but the network ({net_desc}) returns "
                             f"{tuple(out.shape[1:])}")
        return data

    # ----------------------------------------------------------------- schedule
    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant/cosine."""
        lr = self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else self.lr
        if self.lr_schedule == "cosine" and step >= self.warmup:
            progress = (step - self.warmup) / max(1, self.steps - self.warmup)
            lr = self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return lr

    # ------------------------------------------------------------- randomness
    def _next_indices(self) -> Tensor:
        """The next global batch of example indices (epoch-wise permutations, last partial batch dropped)."""
        if self.position + self.batch_size > self.permutation.numel():
            self.permutation = torch.randperm(self.data.shape[0], generator=self.data_generator)
            self.position = 0
        idx = self.permutation[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    def _draw(self, batch: int, dims: tuple[int, ...], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Times (or DDPM indices) and noises for ``batch`` examples, drawn on the CPU."""
        if self.discrete:
            when = torch.randint(1, self.model.ddpm.num_steps + 1, (batch,), generator=generator)
        else:
            when = sample_time(self.sde, batch, eps=self.eps, importance_sampling=self.importance_sampling,
                               generator=generator, dtype=torch.float64)
        noise = torch.randn((batch, *dims), generator=generator, dtype=self.dtype)
        return when, noise

    def _loss(self, module: nn.Module, x0: Tensor, when: Tensor, noise: Tensor, weighting: str,
              importance_sampling: bool, reduction: str = "mean") -> Tensor:
        noise = noise.to(self.device)
        if self.discrete:
            return ddpm_loss(module, self.model.ddpm, x0, reduction=reduction, n=when.to(self.device), noise=noise)
        return dsm_loss(module, self.sde, x0, weighting, importance_sampling, self.eps, reduction=reduction,
                        t=when.to(device=self.device, dtype=self.dtype), noise=noise)

    def _validation_draws(self) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(10_007 * (int(self.seed) + 1))
        is_val = self.val_weighting == "likelihood"
        if self.discrete:
            return self._draw(self.val_data.shape[0], tuple(self.val_data.shape[1:]), gen)
        t = sample_time(self.sde, self.val_data.shape[0], eps=self.eps, importance_sampling=is_val,
                        generator=gen, dtype=torch.float64)
        noise = torch.randn(self.val_data.shape, generator=gen, dtype=self.dtype)
        return t, noise

    @torch.no_grad()
    def validation_loss(self, model: nn.Module | None = None, chunk: int = 1024) -> float:
        """The validation loss of ``model`` (default: the EMA model) with fixed times and noises."""
        if self.val_data is None:
            raise ValueError("validation_loss needs val_data")
        model = self.ema if model is None else model
        when, noise = self._val_draws
        is_val = self.val_weighting == "likelihood"
        total = 0.0
        for i in range(0, self.val_data.shape[0], chunk):
            sl = slice(i, i + chunk)
            total += float(self._loss(model, self.val_data[sl], when[sl], noise[sl], self.val_weighting,
                                      is_val, reduction="sum"))
        return total / self.val_data.shape[0]

    # -------------------------------------------------------------- train loop
    def train(self, until: int | None = None) -> list[dict[str, Any]]:
        """Run optimizer steps up to ``until`` (default ``steps``); returns the metrics records.

        Raises:
            FloatingPointError: the loss or the gradient norm is NaN/inf (the message names the step);
                no weights are updated and no checkpoint is written for that step.
        """
        from tqdm.auto import tqdm

        until = self.steps if until is None else min(int(until), self.steps)
        bar = tqdm(total=self.steps, initial=self.step, disable=not self.progress or self.rank != 0,
                   desc="train", dynamic_ncols=True)
        start = time.perf_counter()
        window: list[float] = []
        self.model.train()
        while self.step < until and not self.stopped_early:
            loss_value, grad_norm = self._train_step()
            window.append(loss_value)
            self.step += 1
            bar.update(1)
            if self.step % 10 == 0:
                bar.set_postfix(loss=f"{loss_value:.4g}")
            record: dict[str, Any] | None = None
            if self.step % self.log_every == 0 or self.step == until:
                record = {"step": self.step, "loss": sum(window) / len(window), "lr": self.learning_rate(self.step - 1),
                          "grad_norm": grad_norm, "time": time.perf_counter() - start}
                window = []
            if self.val_data is not None and (self.step % self.val_every == 0 or self.step == until):
                record = record or {"step": self.step, "time": time.perf_counter() - start}
                record["val_loss"] = self._validate()
            if record is not None:
                self.history.append(record)
                self._log(record)
            timed_out = self.max_time is not None and self._agree(time.perf_counter() - start > self.max_time)
            if self.out_dir is not None and (self.step % self.checkpoint_every == 0 or self.step == until
                                             or self.stopped_early or timed_out):
                self.save_checkpoint()
            if timed_out:
                break
        bar.close()
        self.model.eval()
        return self.history

    def _agree(self, flag: bool) -> bool:
        """``flag`` on any process (so that all processes stop together)."""
        if not self.distributed:
            return flag
        import torch.distributed as dist
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _train_step(self) -> tuple[float, float]:
        idx = self._next_indices()
        when, noise = self._draw(self.batch_size, tuple(self.data.shape[1:]), self.noise_generator)
        local = slice(self.rank * self.batch_size // self.world_size,
                      (self.rank + 1) * self.batch_size // self.world_size)
        x0 = self.data[idx[local].to(self.device)]
        lr = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(self.train_module, x0, when[local], noise[local], self.weighting, self.importance_sampling)
        loss.backward()  # DDP averages the gradients over the processes here
        loss_value = loss.detach().clone()
        if self.distributed:
            import torch.distributed as dist
            dist.all_reduce(loss_value)
            loss_value /= self.world_size
        loss_value = float(loss_value)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the training loss is {loss_value} at step {self.step + 1}; training "
                                     "stopped before updating the weights (the last checkpoint is intact)")
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.grad_clip if self.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm):
            raise FloatingPointError(f"the gradient norm is {grad_norm} at step {self.step + 1}; training "
                                     "stopped before updating the weights (the last checkpoint is intact)")
        self.optimizer.step()
        self._update_ema()
        self.losses.append(loss_value)
        return loss_value, grad_norm

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.ema_decay, (1 + self.step) / (10 + self.step))
        ema_params = list(self.ema.parameters())
        params = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - decay)  # e <- decay e + (1 - decay) p
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    def _validate(self) -> float:
        val = self.validation_loss()
        if val < self.best_val:
            self.best_val, self.best_step, self.bad_validations = val, self.step, 0
            self.best_ema_state = {k: v.detach().clone() for k, v in self.ema.state_dict().items()}
        else:
            self.bad_validations += 1
            if self.early_stopping is not None and self.bad_validations >= self.early_stopping:
                self.stopped_early = True
        return val

    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    # ---------------------------------------------------------------- models
    @property
    def ema_model(self) -> ScoreModel:
        """The EMA model (what should be evaluated and sampled)."""
        return self.ema

    @property
    def best_model(self) -> ScoreModel:
        """The EMA weights with the best validation loss (the EMA model when there is no validation)."""
        if self.best_ema_state is None:
            return self.ema
        best = copy.deepcopy(self.ema)
        best.load_state_dict(self.best_ema_state)
        return best

    # ------------------------------------------------------------ checkpoints
    def _meta(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "step": self.step, "architecture": self.architecture,
            "dtype": str(self.dtype).replace("torch.", ""),
            "trainer": {"lr": self.lr, "batch_size": self.batch_size, "steps": self.steps, "warmup": self.warmup,
                        "lr_schedule": self.lr_schedule, "grad_clip": self.grad_clip, "ema_decay": self.ema_decay,
                        "weighting": self.weighting, "importance_sampling": self.importance_sampling,
                        "eps": self.eps, "seed": self.seed, "world_size": self.world_size},
            "position": self.position, "best_val": self.best_val if math.isfinite(self.best_val) else None,
            "best_step": self.best_step, "bad_validations": self.bad_validations,
            "stopped_early": self.stopped_early,
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step atomically (process 0 only); returns its folder."""
        if self.out_dir is None:
            raise ValueError("save_checkpoint needs out_dir")
        folder = None
        if self.rank == 0:
            if self.architecture is None:
                raise ValueError("the network has no net_name/config; use a network from sdediff.nets")
            folder = self._write_checkpoint()
        if self.distributed:
            import torch.distributed as dist
            dist.barrier()
        return folder

    def _write_checkpoint(self) -> Path:
        root = self.out_dir / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # left by an interrupted write
            shutil.rmtree(stale, ignore_errors=True)
        name = f"step_{self.step:08d}"
        tmp = root / f".tmp-{name}-{os.getpid()}"
        tmp.mkdir()
        try:
            meta = self._meta()
            opt_tensors, opt_meta = _optimizer_to_files(self.optimizer)
            meta["optimizer"] = opt_meta
            _save_tensors(self.model.state_dict(), tmp / "model.safetensors")
            _save_tensors(self.ema.state_dict(), tmp / "ema.safetensors")
            if self.best_ema_state is not None:
                _save_tensors(self.best_ema_state, tmp / "best_ema.safetensors")
            _save_tensors(opt_tensors, tmp / "optimizer.safetensors")
            rng = {"data_generator": self.data_generator.get_state(),
                   "noise_generator": self.noise_generator.get_state(),
                   "torch_rng": torch.get_rng_state(), "permutation": self.permutation}
            if self.device.type == "cuda":
                rng["cuda_rng"] = torch.cuda.get_rng_state(self.device)
            _save_tensors(rng, tmp / "state.safetensors")
            _write_json(meta, tmp / "meta.json")  # written last: its presence marks a complete folder
            final = root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        pointer_tmp = root / f".latest-{os.getpid()}.json"
        _write_json({"dir": name, "step": self.step}, pointer_tmp)
        os.replace(pointer_tmp, root / "latest.json")
        kept = sorted(p for p in root.glob("step_*") if p.is_dir())
        for old in kept[:-self.keep_checkpoints]:
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def resume(self, path: str | os.PathLike | None = None) -> int:
        """Load the state of a checkpoint (default: the latest in ``out_dir``) to continue training.

        Returns:
            The step the checkpoint was written at.

        Raises:
            ValueError: the checkpoint was written for another architecture (the message lists every
                difference) or with another global batch size.
            FileNotFoundError: no checkpoint there.
        """
        path = path if path is not None else self.out_dir
        if path is None:
            raise ValueError("resume needs a path or out_dir")
        folder = latest_checkpoint(path)
        meta = json.loads((folder / "meta.json").read_text())
        problems = _architecture_mismatch(meta["architecture"], self.architecture)
        if problems:
            raise ValueError(f"checkpoint {folder} was written for another architecture: " + "; ".join(problems))
        if meta["trainer"]["batch_size"] != self.batch_size:
            raise ValueError(f"checkpoint {folder} was trained with batch_size={meta['trainer']['batch_size']}, "
                             f"this trainer has {self.batch_size}; resuming would change the data order")
        _load_state_checked(self.model, _load_tensors(folder / "model.safetensors", self.device), str(folder))
        _load_state_checked(self.ema, _load_tensors(folder / "ema.safetensors", self.device), str(folder))
        if (folder / "best_ema.safetensors").is_file():
            self.best_ema_state = _load_tensors(folder / "best_ema.safetensors", self.device)
        opt_state = _optimizer_from_files(_load_tensors(folder / "optimizer.safetensors", self.device),
                                          meta["optimizer"])
        self.optimizer.load_state_dict(opt_state)
        rng = _load_tensors(folder / "state.safetensors")
        self.data_generator.set_state(rng["data_generator"])
        self.noise_generator.set_state(rng["noise_generator"])
        torch.set_rng_state(rng["torch_rng"])
        if "cuda_rng" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda_rng"], self.device)
        self.permutation = rng["permutation"]
        self.position = meta["position"]
        self.step = meta["step"]
        self.best_val = meta["best_val"] if meta["best_val"] is not None else math.inf
        self.best_step, self.bad_validations = meta["best_step"], meta["bad_validations"]
        self.stopped_early = meta["stopped_early"]
        self._truncate_log()
        return self.step

    def _truncate_log(self) -> None:
        """Drop metrics records written after the resumed step (by the interrupted run)."""
        if self.out_dir is None or self.rank != 0 or not (self.out_dir / "metrics.jsonl").is_file():
            return
        path = self.out_dir / "metrics.jsonl"
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= self.step]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(ln + "\n" for ln in lines))
        os.replace(tmp, path)
