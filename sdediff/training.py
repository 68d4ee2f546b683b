"""Training score models: the :class:`Trainer`.

The trainer runs AdamW with a linear warm-up (optionally a cosine decay), gradient clipping, an
exponential moving average (EMA) of the weights -- the EMA weights are what is validated, saved
for sampling and returned -- a tqdm bar, a JSONL metrics log (``out_dir/metrics.jsonl``) and
atomic, resumable checkpoints (their layout and readers are in :mod:`sdediff.checkpoint`, the
trainer's state in them in :mod:`sdediff._trainer_state`).

Labels (classifier-free guidance, Ho & Salimans 2022). A class-conditional model (its net built
with ``num_classes=K``) trains on ``labels`` aligned with ``data``: each example's label is replaced
by the null class ``K`` with probability ``p_uncond``, so one network learns the conditional and the
unconditional score; :func:`sdediff.classifier_free_guidance` then samples from it.

Randomness. Two CPU ``torch.Generator``\\ s, seeded from ``seed``, drive everything: one the data
order (an epoch-wise permutation), one the per-example times ``t``, noises ``z`` and label drops.
Both draw for the *global* batch, on every process alike; each process then takes its own
contiguous slice. So a run on ``W`` processes sees exactly the same examples, times, noises and
labels as a run on one process, and since DDP averages the gradients of the per-process mean
losses, the update equals the one-process update of the global-batch mean (up to floating-point
summation order). The generator states (and torch's global RNG state, for dropout) are
checkpointed, so a resumed run continues exactly as the uninterrupted one. Dropout masks are the
one thing that differs between a one-process and a multi-process run.

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

import copy
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import _trainer_ddp as ddp
from . import _trainer_state as state
from ._signals import SignalCatcher
from ._trainer_checks import (check_data, check_labels, check_number, check_probability, check_settings,
                              finite_parameters, resolve_options)
from .checkpoint import latest_checkpoint, load_checkpoint, model_to_config, read_checkpoint_meta
from .losses import ddpm_loss, drop_labels, dsm_loss, sample_time
from .parameterization import DiscreteScoreModel, ScoreModel
from .sde import LinearSDE

__all__ = ["Trainer", "latest_checkpoint", "load_checkpoint", "read_checkpoint_meta"]

class Trainer:
    """Train a score model by denoising score matching (or DDPM's loss for a discrete model).

    Args:
        model: a :class:`ScoreModel` (DSM loss) or :class:`DiscreteScoreModel` (DDPM loss).
        sde: the SDE of the DSM loss; defaults to ``model.sde``.
        data: training data ``(N, *dims)``; moved to the model's device and dtype.
        labels: class labels ``(N,)`` of ``data``, integers in ``[0, model.num_classes)``; required
            for a class-conditional model, refused for an unconditional one.
        p_uncond: probability of replacing a label by the null class (in ``[0, 1]``), drawn per
            example on the trainer's noise generator.
        lr: peak learning rate of AdamW (finite, > 0). The defaults (``lr=2e-3``, ``batch_size=512``,
            ``warmup=100``, ``ema_decay=0.999``, eps-matching) were measured best on the 2-D ring.
        batch_size: the global batch size (split across processes); default 512, or the number of
            examples when ``data`` has fewer.
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
        val_labels: labels ``(M,)`` of ``val_data`` (a class-conditional model needs them); the
            validation loss is the conditional one (no labels dropped).
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
            network (found by a forward pass on one example), labels that do not fit the data or the
            model, an unknown weighting or schedule, or a batch size that the data or the number of
            processes cannot provide.
    """

    def __init__(self, model: ScoreModel, sde: LinearSDE | None = None, data: Tensor | None = None, *,
                 labels: Tensor | None = None, p_uncond: float = 0.1,
                 lr: float = 2e-3, batch_size: int | None = None, steps: int = 10_000, warmup: int = 100,
                 lr_schedule: str | None = None, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                 ema_decay: float = 0.999, weighting: str = "score", importance_sampling: bool = False,
                 eps: float = 1e-5, out_dir: str | os.PathLike | None = None, checkpoint_every: int = 1000,
                 keep_checkpoints: int = 2, log_every: int = 100, seed: int = 0,
                 val_data: Tensor | None = None, val_labels: Tensor | None = None, val_every: int | None = None,
                 val_weighting: str | None = None, early_stopping: int | None = None,
                 max_seconds: float | None = None, max_time: float | None = None, progress: bool = True,
                 device=None):
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be a ScoreModel or DiscreteScoreModel, got {type(model).__name__}")
        self.discrete = isinstance(model, DiscreteScoreModel)
        self.sde = sde if sde is not None else model.sde
        if not self.discrete and not isinstance(self.sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE, got {type(self.sde).__name__}")
        val_weighting, lr_schedule, max_seconds = resolve_options(weighting, val_weighting, lr_schedule,
                                                                  max_seconds, max_time, importance_sampling)
        if batch_size is None:
            batch_size = min(512, data.shape[0]) if isinstance(data, Tensor) and data.dim() and len(data) else 512
        check_settings(batch_size=batch_size, steps=steps, checkpoint_every=checkpoint_every, log_every=log_every,
                       keep_checkpoints=keep_checkpoints, val_every=val_every, early_stopping=early_stopping,
                       warmup=warmup, seed=seed, lr=lr, grad_clip=grad_clip, max_seconds=max_seconds,
                       weight_decay=weight_decay, ema_decay=ema_decay)
        check_number("eps", eps, 0.0, float(self.sde.T) if self.sde is not None else 1.0)
        check_probability("p_uncond", p_uncond)

        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        ddp.maybe_init_distributed(self.device)
        self.distributed, self.rank, self.world_size = ddp.dist_info()
        if self.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
        self.dtype = param.dtype
        if batch_size % self.world_size:
            raise ValueError(f"batch_size={batch_size} must be divisible by the number of processes "
                             f"({self.world_size}): each process takes an equal slice of the global batch")

        self.model = model.to(self.device)
        self.data = check_data(self.model, "data", data, self.device, self.dtype)
        if batch_size > self.data.shape[0]:
            raise ValueError(f"batch_size={batch_size} exceeds the number of training examples "
                             f"({self.data.shape[0]})")
        self.labels = check_labels("labels", labels, model.num_classes, "data", self.data.shape[0])
        self.val_data = None if val_data is None else check_data(self.model, "val_data", val_data, self.device,
                                                                 self.dtype)
        if self.val_data is None and val_labels is not None:
            raise ValueError("val_labels was given without val_data")
        self.val_labels = None if self.val_data is None else check_labels(
            "val_labels", val_labels, model.num_classes, "val_data", self.val_data.shape[0])
        self.architecture = model_to_config(model) if hasattr(model.net, "net_name") else None

        self.lr, self.batch_size, self.steps, self.warmup = float(lr), batch_size, steps, int(warmup)
        self.lr_schedule, self.grad_clip, self.ema_decay = lr_schedule, grad_clip, float(ema_decay)
        self.weight_decay, self.p_uncond = float(weight_decay), float(p_uncond)
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
        self.train_module: nn.Module = ddp.wrap(self.model, self.device) if self.distributed else self.model

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
        check_number("max_time", seconds, 0.0, optional=True)
        self.max_seconds = None if seconds is None else self.elapsed + float(seconds)

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

    def _draw_labels(self, idx: Tensor, generator: torch.Generator) -> Tensor | None:
        """The labels of the global batch ``idx``, each replaced by the null class with probability
        ``p_uncond`` (one CPU draw per example, after the times and noises); ``None`` without labels."""
        if self.labels is None:
            return None
        return drop_labels(self.labels[idx], self.model.null_label, self.p_uncond, generator)

    def _loss(self, module: nn.Module, x0: Tensor, when: Tensor, noise: Tensor, weighting: str,
              importance_sampling: bool, reduction: str = "mean", y: Tensor | None = None) -> Tensor:
        noise = noise.to(self.device)
        y = None if y is None else y.to(self.device)
        if self.discrete:
            return ddpm_loss(module, self.model.ddpm, x0, reduction=reduction, n=when.to(self.device), noise=noise,
                             y=y)
        return dsm_loss(module, self.sde, x0, weighting, importance_sampling, self.eps, reduction=reduction,
                        t=when.to(device=self.device, dtype=self.dtype), noise=noise, y=y)

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
            y = None if self.val_labels is None else self.val_labels[sl]
            total += float(self._loss(model, self.val_data[sl], when[sl], noise[sl], self.val_weighting,
                                      is_val, reduction="sum", y=y))
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
        catcher = SignalCatcher()
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
                        state.append_log(self, record)
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
        return ddp.broadcast_float(elapsed, self.device)

    def _train_step(self, stop_requested: bool) -> tuple[float, float, float, bool]:
        """One optimizer step; returns the (global) loss, the gradient norm, the lr and whether any
        process asked to stop (a signal; agreed in the loss's all-reduce)."""
        idx = self._next_indices()
        when, noise = self._draw(self.batch_size, tuple(self.data.shape[1:]), self.noise_generator)
        y = self._draw_labels(idx, self.noise_generator)
        local = slice(self.rank * self.batch_size // self.world_size,
                      (self.rank + 1) * self.batch_size // self.world_size)
        x0 = self.data[idx[local].to(self.device)]
        lr = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(self.train_module, x0, when[local], noise[local], self.weighting, self.importance_sampling,
                          y=None if y is None else y[local])
        loss.backward()  # DDP averages the gradients over the processes here
        loss_value = loss.detach().clone()
        if self.distributed:
            loss_value, stop_requested = ddp.mean_and_any(loss_value, stop_requested, self.world_size)
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
        if not finite_parameters(self.model):  # the same on every process: the update is the same
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
    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step atomically (process 0 only); returns its folder.

        Raises:
            FloatingPointError: the weights hold NaN/inf (nothing is written).
            OSError: a file could not be written (the previous checkpoint stays current).
        """
        return state.save_checkpoint(self)

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
        return state.resume(self, path)
