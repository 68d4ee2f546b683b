"""What a :class:`~sdediff.training.Trainer` keeps on disk: the ``meta.json`` record, writing a
checkpoint of its full state and resuming from one, and the metrics log (``metrics.jsonl``).

The state written (and restored) is everything the next step depends on: model, EMA and optimizer
tensors, the two generators, torch's global RNG state, the data permutation and position, the
step, the seconds spent, and the early-stopping counters. So a resumed run continues exactly as the
uninterrupted one (bit for bit without a time budget).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import _trainer_ddp as ddp
from ._trainer_checks import finite_parameters
from .checkpoint import (architecture_mismatch, load_state_checked, optimizer_to_files, read_checkpoint_state,
                         write_checkpoint)

if TYPE_CHECKING:
    from .training import Trainer

__all__ = ["trainer_meta", "save_checkpoint", "resume", "append_log", "truncate_log"]


def trainer_meta(tr: Trainer) -> dict[str, Any]:
    """The JSON part of a checkpoint: the architecture, the trainer's settings and its counters."""
    return {
        "step": tr.step, "architecture": tr.architecture, "dtype": str(tr.dtype).replace("torch.", ""),
        "trainer": {"lr": tr.lr, "batch_size": tr.batch_size, "steps": tr.steps, "warmup": tr.warmup,
                    "lr_schedule": tr.lr_schedule, "grad_clip": tr.grad_clip, "ema_decay": tr.ema_decay,
                    "weight_decay": tr.weight_decay, "weighting": tr.weighting,
                    "importance_sampling": tr.importance_sampling, "eps": tr.eps, "seed": tr.seed,
                    "world_size": tr.world_size, "max_seconds": tr.max_seconds,
                    "p_uncond": tr.p_uncond if tr.labels is not None else None},
        "position": tr.position, "elapsed": tr.elapsed,
        "best_val": tr.best_val if math.isfinite(tr.best_val) else None,
        "best_step": tr.best_step, "bad_validations": tr.bad_validations,
        "stopped_early": tr.stopped_early,
    }


def save_checkpoint(tr: Trainer) -> Path | None:
    """See :meth:`Trainer.save_checkpoint`."""
    if tr.out_dir is None:
        raise ValueError("save_checkpoint needs out_dir")
    folder = None
    if tr.rank == 0:
        if tr.architecture is None:
            raise ValueError("the network has no net_name/config; use a network from sdediff.nets")
        for name, module in (("model", tr.model), ("EMA", tr.ema)):
            if not finite_parameters(module):
                raise FloatingPointError(f"the {name} weights hold NaN/inf at step {tr.step}; "
                                         "no checkpoint is written")
        meta = trainer_meta(tr)
        opt_tensors, meta["optimizer"] = optimizer_to_files(tr.optimizer.state_dict())
        rng = {"data_generator": tr.data_generator.get_state(), "noise_generator": tr.noise_generator.get_state(),
               "torch_rng": torch.get_rng_state(), "permutation": tr.permutation}
        if tr.device.type == "cuda":
            rng["cuda_rng"] = torch.cuda.get_rng_state(tr.device)
        tensors = {"model": tr.model.state_dict(), "ema": tr.ema.state_dict(), "optimizer": opt_tensors,
                   "state": rng}
        if tr.best_ema_state is not None:
            tensors["best_ema"] = tr.best_ema_state
        folder = write_checkpoint(tr.out_dir / "checkpoints", tr.step, meta, tensors, tr.keep_checkpoints)
    if tr.distributed:
        ddp.barrier()
    return folder


def resume(tr: Trainer, path: str | os.PathLike | None = None) -> int:
    """See :meth:`Trainer.resume`."""
    path = path if path is not None else tr.out_dir
    if path is None:
        raise ValueError("resume needs a path or out_dir")
    ckpt = read_checkpoint_state(path, tr.device, num_examples=tr.data.shape[0])
    folder, meta = ckpt.folder, ckpt.meta
    problems = architecture_mismatch(meta["architecture"], tr.architecture)
    if problems:
        raise ValueError(f"checkpoint {folder} was written for another architecture: " + "; ".join(problems))
    if meta["trainer"]["batch_size"] != tr.batch_size:
        raise ValueError(f"checkpoint {folder} was trained with batch_size={meta['trainer']['batch_size']}, "
                         f"this trainer has {tr.batch_size}; resuming would change the data order")
    load_state_checked(tr.model, ckpt.model, str(folder / "model.safetensors"))
    load_state_checked(tr.ema, ckpt.ema, str(folder / "ema.safetensors"))
    try:
        tr.optimizer.load_state_dict(ckpt.optimizer)
        tr.data_generator.set_state(ckpt.rng["data_generator"])
        tr.noise_generator.set_state(ckpt.rng["noise_generator"])
        torch.set_rng_state(ckpt.rng["torch_rng"])
        if "cuda_rng" in ckpt.rng and tr.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt.rng["cuda_rng"], tr.device)
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {folder}: the optimizer or generator state does not fit "
                         f"(optimizer.safetensors / state.safetensors): {err}") from err
    if ckpt.best_ema is not None and set(ckpt.best_ema) != set(tr.ema.state_dict()):
        raise ValueError(f"the weights in {folder / 'best_ema.safetensors'} do not match the architecture")
    tr.best_ema_state = ckpt.best_ema
    tr.permutation = ckpt.rng["permutation"]
    tr.position = meta["position"]
    tr.step = meta["step"]
    tr.elapsed = float(meta.get("elapsed") or 0.0)
    tr.best_val = meta["best_val"] if meta["best_val"] is not None else math.inf
    tr.best_step, tr.bad_validations = meta["best_step"], meta["bad_validations"]
    tr.stopped_early = meta["stopped_early"]
    tr.history = truncate_log(tr)
    return tr.step


def append_log(tr: Trainer, record: dict[str, Any]) -> None:
    """Append one metrics record to ``out_dir/metrics.jsonl`` (process 0, with an ``out_dir``)."""
    if tr.out_dir is None or tr.rank != 0:
        return
    tr.out_dir.mkdir(parents=True, exist_ok=True)
    with open(tr.out_dir / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")


def truncate_log(tr: Trainer) -> list[dict[str, Any]]:
    """Drop metrics records written after the resumed step (by the interrupted run), and a torn last
    line; returns the records kept."""
    path = None if tr.out_dir is None else tr.out_dir / "metrics.jsonl"
    if path is None or tr.rank != 0 or not path.is_file():
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
            warnings.warn(f"{path}: dropping {where} ({line[:60]!r}) on resume", stacklevel=4)
            continue
        if record["step"] <= tr.step:
            records.append(record)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
    return records
