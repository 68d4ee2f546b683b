"""Checkpoints: safetensors + JSON, atomic writes, validated reads, never unpickled.

A run's checkpoints live in ``out_dir/checkpoints/``::

    latest.json                 {"dir": "step_XXXXXXXX", "step": ...}: the current checkpoint
    step_XXXXXXXX/
        meta.json               format, step, the net's build_net name + config, the parameterization,
                                the SDE (type + parameters) or DDPM chain, trainer settings, counters
        model.safetensors       the trained weights
        ema.safetensors         the EMA weights (what load_checkpoint returns by default)
        best_ema.safetensors    the EMA weights with the best validation loss (runs with val_data only)
        optimizer.safetensors   AdamW moments and step counts (param_groups are in meta.json)
        state.safetensors       generator states, torch RNG state, the current data permutation

Nothing is ever unpickled: tensors are read with safetensors, everything else from JSON. A
checkpoint is written into a temporary directory (each file flushed to disk) that is renamed
(``os.replace``) when complete; ``latest.json`` is then replaced atomically to point at it. A
crash or a full disk mid-write leaves a stray temporary directory and the previous checkpoint
current and loadable.

Every file a reader touches is checked: bad content (empty, truncated, random bytes, missing keys,
an unknown ``format``) raises ``ValueError`` and an I/O failure ``OSError``, both naming the file
and what is wrong (the file-level reads and writes are in :mod:`sdediff._checkpoint_io`).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._checkpoint_io import fsync as _fsync
from ._checkpoint_io import load_tensors as _load_tensors
from ._checkpoint_io import read_json as _read_json
from ._checkpoint_io import save_tensors as _save_tensors
from ._checkpoint_io import write_json as _write_json
from ._checks import all_finite
from .ddpm import DDPM
from .parameterization import DiscreteScoreModel, ScoreModel
from .sde import LinearSDE, SubVPSDE, VESDE, VPSDE

__all__ = ["CHECKPOINT_FORMAT", "WHICH", "CheckpointState", "architecture_mismatch", "latest_checkpoint",
           "load_checkpoint", "load_state_checked", "model_to_config", "optimizer_from_files",
           "optimizer_to_files", "read_checkpoint_meta", "read_checkpoint_state", "sde_from_config",
           "sde_to_config", "write_checkpoint"]

CHECKPOINT_FORMAT = 1
#: The weights :func:`load_checkpoint` can return, and the file each is read from.
WHICH = {"ema": "ema", "model": "model", "best": "best_ema"}
_TENSOR_FILES = ("model", "ema", "best_ema", "optimizer", "state")
_STATE_KEYS = ("data_generator", "noise_generator", "torch_rng", "permutation")


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


def architecture_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two :func:`model_to_config` results (empty: they agree)."""
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


# ------------------------------------------------------------------------ checks
def _field(obj: dict[str, Any], key: str, kinds: type | tuple[type, ...], path: Path) -> Any:
    """``obj[a][b]...`` for ``key = "a.b..."``, checked to be one of ``kinds``."""
    value: Any = obj
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"checkpoint {path} lacks {'.'.join(parts[:i + 1])!r}; it is damaged or was not "
                             "written by sdediff")
        value = value[part]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        raise ValueError(f"checkpoint {path} has {key}={value!r}, expected "
                         f"{' or '.join(k.__name__ for k in _as_tuple(kinds))}")
    return value


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _check_meta(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check the format and the keys every reader needs (the architecture)."""
    fmt = meta.get("format")
    if fmt != CHECKPOINT_FORMAT:
        what = "has no 'format'" if fmt is None else f"has format {fmt!r}"
        raise ValueError(f"checkpoint {path} {what}; this version of sdediff reads format {CHECKPOINT_FORMAT} "
                         "(a newer sdediff may have written it)")
    _field(meta, "step", int, path)
    _field(meta, "architecture.net.name", str, path)
    _field(meta, "architecture.net.config", dict, path)
    kind = _field(meta, "architecture.model.kind", str, path)
    _field(meta, "architecture.model.parameterization", str, path)
    _field(meta, "architecture." + ("ddpm" if kind == "discrete" else "sde"), dict, path)
    return meta


def optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict()`` into tensors (safetensors) and JSON (param groups, scalars)."""
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, val in entry.items():
            if isinstance(val, Tensor):
                tensors[f"{idx}.{key}"] = val
            else:
                scalars[f"{idx}.{key}"] = val
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, Tensor], meta: dict[str, Any], source: str = "the checkpoint"
                         ) -> dict[str, Any]:
    """The optimizer ``state_dict()`` back from :func:`optimizer_to_files`.

    Raises:
        ValueError: malformed entries (named with ``source``).
    """
    state: dict[int, dict[str, Any]] = {}
    try:
        for name, val in list(tensors.items()) + list(meta["scalars"].items()):
            idx, key = name.split(".", 1)
            state.setdefault(int(idx), {})[key] = val
        groups = meta["param_groups"]
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise TypeError("param_groups is not a list of objects")
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"the optimizer state in {source} is malformed: {err!r}") from err
    return {"state": state, "param_groups": groups}


def load_state_checked(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` after checking names, shapes and finiteness.

    Raises:
        ValueError: missing or unexpected tensors, shape mismatches or NaN/inf weights (named with ``source``).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} saved vs {tuple(own[k].shape)} here"
              for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or extra or shapes:
        raise ValueError(f"the weights in {source} do not match the architecture: "
                         f"missing {missing[:5]}, unexpected {extra[:5]}, shape mismatches {shapes[:5]}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not all_finite(v)]
    if bad:
        raise ValueError(f"the weights in {source} hold NaN or inf (in {bad[:5]})")
    model.load_state_dict(state)


# ------------------------------------------------------------------------- readers
def latest_checkpoint(path: str | os.PathLike) -> Path:
    """Resolve ``path`` (a run's ``out_dir``, its ``checkpoints/`` folder, or a checkpoint folder).

    Raises:
        FileNotFoundError: no complete checkpoint there.
        ValueError: ``latest.json`` is damaged (the message says which folders could be passed instead).
    """
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    for folder in (path, path / "checkpoints"):
        pointer = folder / "latest.json"
        if pointer.is_file():
            name = _read_json(pointer).get("dir")
            if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
                found = sorted(p.name for p in folder.glob("step_*") if (p / "meta.json").is_file())
                raise ValueError(f"checkpoint {pointer} has dir={name!r}, not a checkpoint folder name; "
                                 f"pass one of the folders {found[-3:]} in {folder} instead")
            target = folder / name
            if (target / "meta.json").is_file():
                return target
            raise FileNotFoundError(errno.ENOENT, f"{pointer} points to {target}, which is not a complete checkpoint")
    raise FileNotFoundError(errno.ENOENT, f"no checkpoint at {path} (expected meta.json, latest.json or "
                                          "checkpoints/latest.json)")


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The checked ``meta.json`` of a checkpoint (see :func:`latest_checkpoint` for ``path``).

    Raises:
        ValueError: the file is damaged, lacks a key readers need or has an unknown ``format``.
        OSError: it cannot be read (``FileNotFoundError``: no checkpoint there).
    """
    meta_path = latest_checkpoint(path) / "meta.json"
    return _check_meta(_read_json(meta_path), meta_path)


def load_checkpoint(path: str | os.PathLike, which: str = "ema", *, sde: LinearSDE | None = None,
                    device=None, dtype: torch.dtype | None = None) -> ScoreModel:
    """Rebuild a trained model from a checkpoint (never unpickles: safetensors + JSON).

    Args:
        path: a run's ``out_dir``, its ``checkpoints/`` folder, or one checkpoint folder.
        which: ``"ema"`` (the EMA weights, default), ``"model"`` (the raw trained weights) or
            ``"best"`` (the EMA weights with the best validation loss; only runs with ``val_data``
            have them).
        sde: the SDE, required only when the checkpoint's SDE is not a built-in one.
        device, dtype: where to put the model (default: CPU, the saved dtype).

    Returns:
        The :class:`ScoreModel` (or :class:`DiscreteScoreModel`), in eval mode.

    Raises:
        ValueError: unknown ``which``, ``which="best"`` for a run without validation, a non-built-in
            SDE without ``sde=``, a damaged file (named), or weights that do not fit the architecture.
        OSError: a file cannot be read (``FileNotFoundError``: no checkpoint at ``path``).
    """
    from .nets import build_net

    if not isinstance(which, str) or which not in WHICH:
        raise ValueError(f"which must be one of {tuple(WHICH)}, got {which!r}")
    folder = latest_checkpoint(path)
    meta = _check_meta(_read_json(folder / "meta.json"), folder / "meta.json")
    weights = folder / f"{WHICH[which]}.safetensors"
    if which == "best" and not weights.is_file():
        raise ValueError(f"checkpoint {folder} has no best checkpoint (best_ema.safetensors): the run had no "
                         "val_data; load which='ema' instead")
    arch = meta["architecture"]
    try:
        net = build_net(arch["net"]["name"], **arch["net"]["config"])
        wrapper = arch["model"]
        if wrapper["kind"] == "discrete":
            model: ScoreModel = DiscreteScoreModel(net, DDPM(**arch["ddpm"]), wrapper["parameterization"],
                                                   wrapper.get("index_scale", 1.0))
        else:
            the_sde = sde if sde is not None else sde_from_config(arch["sde"])
            model = ScoreModel(net, the_sde, wrapper["parameterization"], wrapper.get("time_input", "t"),
                               wrapper.get("sigma_data"))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {folder / 'meta.json'}: the model cannot be rebuilt: {err}") from err
    state = _load_tensors(weights)
    if not state:
        raise ValueError(f"checkpoint {weights} holds no tensors")
    load_state_checked(model, state, str(weights))
    model = model.to(device=device, dtype=dtype or next(iter(state.values())).dtype)
    return model.eval()


@dataclass
class CheckpointState:
    """Everything a trainer needs to resume, read and checked by :func:`read_checkpoint_state`."""

    folder: Path
    meta: dict[str, Any]
    model: dict[str, Tensor]
    ema: dict[str, Tensor]
    best_ema: dict[str, Tensor] | None
    optimizer: dict[str, Any]
    rng: dict[str, Tensor]


def read_checkpoint_state(path: str | os.PathLike, device=None, num_examples: int | None = None
                          ) -> CheckpointState:
    """Read every file of a checkpoint (see :func:`latest_checkpoint` for ``path``) for resuming on
    ``num_examples`` training examples (checked against the saved data order).

    Raises:
        ValueError: a damaged file or missing key, named.
        OSError: a file cannot be read (``FileNotFoundError``: no checkpoint there).
    """
    folder = latest_checkpoint(path)
    meta_path = folder / "meta.json"
    meta = _check_meta(_read_json(meta_path), meta_path)
    for key, kinds in (("trainer.batch_size", int), ("position", int), ("best_val", (int, float, type(None))),
                       ("best_step", (int, type(None))), ("bad_validations", int), ("stopped_early", bool),
                       ("optimizer.param_groups", list), ("optimizer.scalars", dict)):
        _field(meta, key, kinds, meta_path)
    if "elapsed" in meta:  # checkpoints written before time budgets were carried over lack it
        _field(meta, "elapsed", (int, float), meta_path)
    rng = _load_tensors(folder / "state.safetensors", required=_STATE_KEYS)
    perm, n = rng["permutation"], num_examples
    if perm.dtype != torch.int64 or perm.dim() != 1 or (n is not None and perm.numel() != n) \
            or not 0 <= meta["position"] <= perm.numel():
        raise ValueError(f"checkpoint {folder / 'state.safetensors'} holds a data order for {perm.numel()} "
                         f"examples; this trainer has {n} (resume with the same data)")
    best, opt_path = folder / "best_ema.safetensors", folder / "optimizer.safetensors"
    return CheckpointState(
        folder=folder, meta=meta, rng=rng,
        model=_load_tensors(folder / "model.safetensors", device),
        ema=_load_tensors(folder / "ema.safetensors", device),
        best_ema=_load_tensors(best, device) if best.is_file() else None,
        optimizer=optimizer_from_files(_load_tensors(opt_path, device), meta["optimizer"],
                                       f"{opt_path} and {meta_path}"))


# ------------------------------------------------------------------------- writer
def write_checkpoint(root: str | os.PathLike, step: int, meta: dict[str, Any],
                     tensors: dict[str, dict[str, Tensor]], keep: int) -> Path:
    """Write ``root/step_XXXXXXXX`` atomically, point ``root/latest.json`` at it, keep the last ``keep``.

    Args:
        root: the ``checkpoints/`` folder (created if missing).
        step: the step the checkpoint is of (names the folder).
        meta: the JSON part (``format`` is set here).
        tensors: file stem (``model``, ``ema``, ``best_ema``, ``optimizer``, ``state``) -> tensors.
        keep: how many ``step_*`` folders to keep.

    Returns:
        The new checkpoint folder.

    Raises:
        OSError: a file could not be written (the previous checkpoint stays current).
    """
    unknown = set(tensors) - set(_TENSOR_FILES)
    if unknown:
        raise ValueError(f"unknown checkpoint files {sorted(unknown)}; expected some of {_TENSOR_FILES}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by an interrupted write
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    name = f"step_{step:08d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    pointer_tmp = root / f".tmp-latest-{os.getpid()}.json"
    final = root / name
    try:
        tmp.mkdir()
        for stem in _TENSOR_FILES:
            if stem in tensors:
                _save_tensors(tensors[stem], tmp / f"{stem}.safetensors")
        _write_json({**meta, "format": CHECKPOINT_FORMAT, "step": step}, tmp / "meta.json")  # last: marks it complete
        _fsync(tmp)
        old = None
        if final.exists():  # the same step written again (after a resume): move the old one aside first
            old = root / f".tmp-old-{name}-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _write_json({"dir": name, "step": step}, pointer_tmp)
        os.replace(pointer_tmp, root / "latest.json")
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        pointer_tmp.unlink(missing_ok=True)
        raise
    kept = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in kept[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final

