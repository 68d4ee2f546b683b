"""Training score models: the :class:`Trainer`.

The trainer runs AdamW with a linear warm-up (optionally a cosine decay), gradient clipping, an
exponential moving average (EMA) of the weights -- the EMA weights are what is validated, saved
for sampling and returned -- a tqdm bar, a JSONL metrics log (``out_dir/metrics.jsonl``) and
atomic, resumable checkpoints (their layout and readers are in :mod:`sdediff.checkpoint`).

Randomness. Two CPU ``torch.Generator``\\ s, seeded from ``seed``, drive everything: one the data
order (an epoch-wise permutation), one the per-example times ``t`` and noises ``z``. Both draw for
the *global* batch, on every process alike; each process then takes its own contiguous slice. So
a run on ``W`` processes sees exactly the same examples, times and noises as a run on one process,
and since DDP averages the gradients of the per-process mean losses, the update equals the
one-process update of the global-batch mean (up to floating-point summation order). The generator
states (and torch's global RNG state, for dropout) are checkpointed, so a resumed run continues
exactly as the uninterrupted one. Dropout masks are the one thing that differs between a
one-process and a multi-process run.

Time budgets. ``max_seconds`` bounds the training time of the run, summed over ``train()`` calls
and carried across ``resume()``. The cosine schedule (the default with a budget) anneals to
whichever of ``steps`` and the budget comes first: its progress is the larger of the two
fractions. Runs without a budget depend on the step count only and resume bit for bit.

Safety. A non-finite loss, gradient norm or updated weight stops training with a
``FloatingPointError`` naming the step; no checkpoint with non-finite weights is written. SIGINT
and SIGTERM during ``train()`` finish the step, write a checkpoint, then reach the previous handler.

Distributed: under ``torchrun --nproc_per_node=N`` (or with a process group already initialized)
the trainer wraps the model in ``DistributedDataParallel`` (gloo on CPU, NCCL on CUDA); the global
``batch_size`` must be divisible by the number of processes; process 0 writes the log and the
checkpoints, and its clock drives the time budget on every process.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import numbers
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ._checks import all_finite
from .checkpoint import (architecture_mismatch, latest_checkpoint, load_checkpoint, load_state_checked,
                         model_to_config, optimizer_to_files, read_checkpoint_meta, read_checkpoint_state,
                         write_checkpoint)
from .losses import WEIGHTINGS, ddpm_loss, dsm_loss, sample_time
from .parameterization import DiscreteScoreModel, ScoreModel
from .sde import LinearSDE

__all__ = ["Trainer", "latest_checkpoint", "load_checkpoint", "read_checkpoint_meta"]

_LR_SCHEDULES = ("constant", "cosine")
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


# ------------------------------------------------------------------------- checks
def _check(name: str, value: Any, low: float, high: float = math.inf, *, integer: bool = False,
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


def _finite_parameters(module: nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite, with one reduction (the sum of L1 norms)."""
    params = [p.detach() for p in module.parameters()]
    return not params or all_finite(torch.stack(torch._foreach_norm(params, 1)))


# ---------------------------------------------------------------------- signals
class _SignalCatcher:
    """While active (main thread only), SIGINT/SIGTERM set ``signum`` instead of interrupting; a
    second signal goes straight on (press Ctrl-C twice to abort at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def active(self) -> Iterator[_SignalCatcher]:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                before = signal.getsignal(sig)
                if before is not None and before != signal.SIG_IGN:  # else: not ours to handle
                    self.previous[sig] = before
                    signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, before in self.previous.items():
                signal.signal(sig, before)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            signal.signal(signum, self.previous[signum])
            self.deliver(signum)
        self.signum = signum

    def deliver(self, signum: int | None = None) -> None:
        """Pass the caught signal on to the previous handler (SIG_DFL: KeyboardInterrupt / end the process)."""
        signum = self.signum if signum is None else signum
        handler = self.previous.get(signum, signal.SIG_DFL)
        if callable(handler):
            handler(signum, None)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


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
        lr: peak learning rate of AdamW (finite, > 0).
        batch_size: the global batch size (split across processes).
        steps: total optimizer steps.
        warmup: linear warm-up steps of the learning rate (int >= 0).
        lr_schedule: ``"constant"`` after warm-up, or ``"cosine"`` decay to 0 at ``steps`` or at the
            time budget, whichever comes first. Default: ``"cosine"`` with ``max_seconds``, else
            ``"constant"``.
        weight_decay: AdamW's decoupled weight decay (finite, >= 0).
        grad_clip: clip the global gradient norm to this (finite, > 0; ``None``: no clipping).
        ema_decay: EMA decay in ``[0, 1)``; the effective decay is ``min(ema_decay, (1 + k) / (10 + k))``
            at step ``k`` so early averages are not dominated by the initialization.
        weighting: DSM weighting, one of :data:`sdediff.losses.WEIGHTINGS`.
        importance_sampling: draw ``t ∝ g^2/s^2`` (with ``weighting="likelihood"``).
        eps: the smallest training time, in ``(0, T)``.
        out_dir: where the metrics log and checkpoints go (``None``: nothing is written).
        checkpoint_every: steps between checkpoints (a checkpoint is also written at the end).
        keep_checkpoints: how many checkpoints to keep.
        log_every: steps between metrics records (loss averaged over the window).
        seed: seeds the data-order and noise generators.
        val_data: validation data ``(M, *dims)`` (never the test split) for early stopping.
        val_every: steps between validations (int >= 1; default ``log_every``).
        val_weighting: weighting of the validation loss (default ``weighting``); it uses fixed
            times and noises, so successive values are comparable.
        early_stopping: stop after this many validations without improvement (int >= 1; ``None``: never).
        max_seconds: the run's training-time budget in seconds, summed over ``train()`` calls and
            kept across ``resume()`` (finite, > 0; ``None``: no limit). The cosine schedule anneals to it.
        max_time: deprecated alias of ``max_seconds`` (that keeps the ``"constant"`` default schedule).
        progress: show a tqdm bar (process 0 only).
        device: where to train (default: the model's device).

    Raises:
        ValueError: a hyper-parameter out of its range (named), data of the wrong shape for the
            network (found by a forward pass on one example), an unknown weighting or schedule, or a
            batch size that the data or the number of processes cannot provide.
    """

    def __init__(self, model: ScoreModel, sde: LinearSDE | None = None, data: Tensor | None = None, *,
                 lr: float = 1e-3, batch_size: int = 256, steps: int = 10_000, warmup: int = 100,
                 lr_schedule: str | None = None, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                 ema_decay: float = 0.999, weighting: str = "score", importance_sampling: bool = False,
                 eps: float = 1e-5, out_dir: str | os.PathLike | None = None, checkpoint_every: int = 1000,
                 keep_checkpoints: int = 2, log_every: int = 100, seed: int = 0,
                 val_data: Tensor | None = None, val_every: int | None = None, val_weighting: str | None = None,
                 early_stopping: int | None = None, max_seconds: float | None = None,
                 max_time: float | None = None, progress: bool = True, device=None):
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
        if lr_schedule is None:  # the deprecated max_time keeps its old default, "constant"
            lr_schedule = "cosine" if max_seconds is not None else "constant"
        if max_time is not None:
            warnings.warn("Trainer(max_time=...) is deprecated; use max_seconds=...", DeprecationWarning, 2)
            if max_seconds is not None:
                raise ValueError("pass max_seconds or its deprecated alias max_time, not both")
            max_seconds = max_time
        if lr_schedule not in _LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {_LR_SCHEDULES}, got {lr_schedule!r}")
        for name, val in (("batch_size", batch_size), ("steps", steps), ("checkpoint_every", checkpoint_every),
                          ("log_every", log_every), ("keep_checkpoints", keep_checkpoints)):
            _check(name, val, 1, integer=True, closed=True)
        for name, val in (("val_every", val_every), ("early_stopping", early_stopping)):
            _check(name, val, 1, integer=True, closed=True, optional=True)
        _check("warmup", warmup, 0, integer=True, closed=True)
        _check("seed", seed, -math.inf, integer=True)
        _check("lr", lr, 0.0)
        _check("grad_clip", grad_clip, 0.0, optional=True)
        _check("max_seconds", max_seconds, 0.0, optional=True)
        _check("weight_decay", weight_decay, 0.0, closed=True)
        _check("ema_decay", ema_decay, 0.0, 1.0, closed=True)
        _check("eps", eps, 0.0, float(self.sde.T) if self.sde is not None else 1.0)
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
        self.weight_decay = float(weight_decay)
        self.weighting, self.importance_sampling, self.eps = weighting, bool(importance_sampling), float(eps)
        self.val_weighting = val_weighting
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every, self.keep_checkpoints, self.log_every = checkpoint_every, keep_checkpoints, log_every
        self.val_every = val_every or log_every
        self.early_stopping, self.progress, self.seed = early_stopping, progress, seed
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.elapsed = 0.0  # seconds spent in train() so far (restored by resume)

        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay,
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

    @property
    def max_time(self) -> float | None:
        """Deprecated: the seconds left of the budget (``max_seconds - elapsed``)."""
        warnings.warn("Trainer.max_time is deprecated; use max_seconds (the run's budget)", DeprecationWarning,
                      stacklevel=2)
        return None if self.max_seconds is None else self.max_seconds - self.elapsed

    @max_time.setter
    def max_time(self, seconds: float | None) -> None:
        """Deprecated: train at most ``seconds`` more (sets ``max_seconds = elapsed + seconds``)."""
        warnings.warn("Trainer.max_time is deprecated; set max_seconds (the run's budget, summed over train() "
                      "calls) instead", DeprecationWarning, stacklevel=2)
        _check("max_time", seconds, 0.0, optional=True)
        self.max_seconds = None if seconds is None else self.elapsed + float(seconds)

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
    def learning_rate(self, step: int, elapsed: float | None = None) -> float:
        """The learning rate of optimizer step ``step`` (0-based) ``elapsed`` seconds into the run
        (default: :attr:`elapsed`): linear warm-up, then constant, or cosine decay to 0 at ``steps``
        or at ``max_seconds``, whichever comes first."""
        lr = self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else self.lr
        if self.lr_schedule == "cosine" and step >= self.warmup:
            progress = (step - self.warmup) / max(1, self.steps - self.warmup)
            if self.max_seconds is not None:
                progress = max(progress, (self.elapsed if elapsed is None else elapsed) / self.max_seconds)
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
        """Run optimizer steps up to ``until`` (default ``steps``) or the time budget; returns the metrics
        records of the run (unchanged when no step is left to do).

        SIGINT / SIGTERM (main thread): the current step finishes, a checkpoint is written (with
        ``out_dir``), then the signal goes to the previous handler (SIGINT: ``KeyboardInterrupt``).

        Raises:
            FloatingPointError: the loss, the gradient norm or the updated weights are NaN/inf (the
                message names the step); no checkpoint is written for that step, the last one stays current.
        """
        from tqdm.auto import tqdm

        until = self.steps if until is None else min(int(until), self.steps)
        if self.step >= until or self.stopped_early or self._out_of_time():
            return self.history
        bar = tqdm(total=self.steps, initial=self.step, disable=not self.progress or self.rank != 0,
                   desc="train", dynamic_ncols=True)
        start, elapsed0 = time.perf_counter(), self.elapsed
        window: list[float] = []
        catcher = _SignalCatcher()
        self.model.train()
        try:
            with catcher.active():
                while self.step < until and not self.stopped_early:
                    loss_value, grad_norm, lr, interrupted = self._train_step(catcher.signum is not None)
                    window.append(loss_value)
                    self.step += 1
                    self.elapsed = self._shared_elapsed(elapsed0 + time.perf_counter() - start)
                    bar.update(1)
                    if self.step % 10 == 0:
                        bar.set_postfix(loss=f"{loss_value:.4g}")
                    record: dict[str, Any] | None = None
                    if self.step % self.log_every == 0 or self.step == until:
                        record = {"step": self.step, "loss": sum(window) / len(window), "lr": lr,
                                  "grad_norm": grad_norm, "time": self.elapsed}
                        window = []
                    if self.val_data is not None and (self.step % self.val_every == 0 or self.step == until):
                        record = record or {"step": self.step, "time": self.elapsed}
                        record["val_loss"] = self._validate()
                    if record is not None:
                        self.history.append(record)
                        self._log(record)
                    interrupted = interrupted or (not self.distributed and catcher.signum is not None)
                    stop = self._out_of_time() or interrupted
                    if self.out_dir is not None and (self.step % self.checkpoint_every == 0 or self.step == until
                                                     or self.stopped_early or stop):
                        self.save_checkpoint()
                    if stop:
                        break
        finally:
            bar.close()
            self.model.eval()
        if catcher.signum is not None:
            catcher.deliver()
        return self.history

    def _out_of_time(self) -> bool:
        return self.max_seconds is not None and self.elapsed >= self.max_seconds

    def _shared_elapsed(self, elapsed: float) -> float:
        """Process 0's ``elapsed`` on every process (the lr and the stop must agree), when there is a budget."""
        if not self.distributed or self.max_seconds is None:
            return elapsed
        import torch.distributed as dist
        t = torch.tensor([elapsed], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return float(t.item())

    def _train_step(self, stop_requested: bool) -> tuple[float, float, float, bool]:
        """One optimizer step; returns the (global) loss, the gradient norm, the lr and whether any
        process asked to stop (a signal; agreed in the loss's all-reduce)."""
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
            packed = torch.stack([loss_value, torch.tensor(float(stop_requested), dtype=loss_value.dtype,
                                                           device=loss_value.device)])
            dist.all_reduce(packed)
            loss_value, stop_requested = packed[0] / self.world_size, bool(packed[1] > 0)
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
        if not _finite_parameters(self.model):  # the same on every process: the update is the same
            raise FloatingPointError(
                f"the weights became NaN/inf in the update of step {self.step + 1} (lr={lr:.3g}); the EMA "
                "weights are intact and no checkpoint was written for it: resume() from the last checkpoint "
                "with a smaller lr")
        self._update_ema()
        self.losses.append(loss_value)
        return loss_value, grad_norm, lr, stop_requested

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
            "step": self.step, "architecture": self.architecture, "dtype": str(self.dtype).replace("torch.", ""),
            "trainer": {"lr": self.lr, "batch_size": self.batch_size, "steps": self.steps, "warmup": self.warmup,
                        "lr_schedule": self.lr_schedule, "grad_clip": self.grad_clip, "ema_decay": self.ema_decay,
                        "weight_decay": self.weight_decay, "weighting": self.weighting,
                        "importance_sampling": self.importance_sampling, "eps": self.eps, "seed": self.seed,
                        "world_size": self.world_size, "max_seconds": self.max_seconds},
            "position": self.position, "elapsed": self.elapsed,
            "best_val": self.best_val if math.isfinite(self.best_val) else None,
            "best_step": self.best_step, "bad_validations": self.bad_validations,
            "stopped_early": self.stopped_early,
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step atomically (process 0 only); returns its folder.

        Raises:
            FloatingPointError: the weights hold NaN/inf (nothing is written).
            OSError: a file could not be written (the previous checkpoint stays current).
        """
        if self.out_dir is None:
            raise ValueError("save_checkpoint needs out_dir")
        folder = None
        if self.rank == 0:
            if self.architecture is None:
                raise ValueError("the network has no net_name/config; use a network from sdediff.nets")
            for name, module in (("model", self.model), ("EMA", self.ema)):
                if not _finite_parameters(module):
                    raise FloatingPointError(f"the {name} weights hold NaN/inf at step {self.step}; "
                                             "no checkpoint is written")
            meta = self._meta()
            opt_tensors, meta["optimizer"] = optimizer_to_files(self.optimizer.state_dict())
            rng = {"data_generator": self.data_generator.get_state(),
                   "noise_generator": self.noise_generator.get_state(),
                   "torch_rng": torch.get_rng_state(), "permutation": self.permutation}
            if self.device.type == "cuda":
                rng["cuda_rng"] = torch.cuda.get_rng_state(self.device)
            tensors = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                       "optimizer": opt_tensors, "state": rng}
            if self.best_ema_state is not None:
                tensors["best_ema"] = self.best_ema_state
            folder = write_checkpoint(self.out_dir / "checkpoints", self.step, meta, tensors, self.keep_checkpoints)
        if self.distributed:
            import torch.distributed as dist
            dist.barrier()
        return folder

    def resume(self, path: str | os.PathLike | None = None) -> int:
        """Load the state of a checkpoint (default: the latest in ``out_dir``) to continue training.

        The metrics records up to the checkpoint's step are read back from ``out_dir/metrics.jsonl``
        into :attr:`history` (a torn last line, from a run killed mid-write, is dropped with a warning).

        Returns:
            The step the checkpoint was written at.

        Raises:
            ValueError: the checkpoint was written for another architecture (the message lists every
                difference), with another global batch size or data set size, or a file is damaged (named).
            OSError: a file cannot be read (``FileNotFoundError``: no checkpoint there).
        """
        path = path if path is not None else self.out_dir
        if path is None:
            raise ValueError("resume needs a path or out_dir")
        ckpt = read_checkpoint_state(path, self.device, num_examples=self.data.shape[0])
        folder, meta = ckpt.folder, ckpt.meta
        problems = architecture_mismatch(meta["architecture"], self.architecture)
        if problems:
            raise ValueError(f"checkpoint {folder} was written for another architecture: " + "; ".join(problems))
        if meta["trainer"]["batch_size"] != self.batch_size:
            raise ValueError(f"checkpoint {folder} was trained with batch_size={meta['trainer']['batch_size']}, "
                             f"this trainer has {self.batch_size}; resuming would change the data order")
        load_state_checked(self.model, ckpt.model, str(folder / "model.safetensors"))
        load_state_checked(self.ema, ckpt.ema, str(folder / "ema.safetensors"))
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
            self.data_generator.set_state(ckpt.rng["data_generator"])
            self.noise_generator.set_state(ckpt.rng["noise_generator"])
            torch.set_rng_state(ckpt.rng["torch_rng"])
            if "cuda_rng" in ckpt.rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(ckpt.rng["cuda_rng"], self.device)
        except (KeyError, RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"checkpoint {folder}: the optimizer or generator state does not fit "
                             f"(optimizer.safetensors / state.safetensors): {err}") from err
        if ckpt.best_ema is not None and set(ckpt.best_ema) != set(self.ema.state_dict()):
            raise ValueError(f"the weights in {folder / 'best_ema.safetensors'} do not match the architecture")
        self.best_ema_state = ckpt.best_ema
        self.permutation = ckpt.rng["permutation"]
        self.position = meta["position"]
        self.step = meta["step"]
        self.elapsed = float(meta.get("elapsed") or 0.0)
        self.best_val = meta["best_val"] if meta["best_val"] is not None else math.inf
        self.best_step, self.bad_validations = meta["best_step"], meta["bad_validations"]
        self.stopped_early = meta["stopped_early"]
        self.history = self._truncate_log()
        return self.step

    def _truncate_log(self) -> list[dict[str, Any]]:
        """Drop metrics records written after the resumed step (by the interrupted run), and a torn last
        line; returns the records kept."""
        path = None if self.out_dir is None else self.out_dir / "metrics.jsonl"
        if path is None or self.rank != 0 or not path.is_file():
            return []
        lines = [ln for ln in path.read_text(errors="replace").split("\n") if ln.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError("not a metrics record")
            except ValueError:
                where = "a partially written last line" if i == len(lines) - 1 else f"an unreadable line {i + 1}"
                warnings.warn(f"{path}: dropping {where} ({line[:60]!r}) on resume", stacklevel=3)
                continue
            if record["step"] <= self.step:
                records.append(record)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, path)
        return records
