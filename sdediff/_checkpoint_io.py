"""Checkpoint file I/O: safetensors and JSON files written durably (flushed to disk) and read back
checked, every failure naming the file: bad content is a ``ValueError``, an I/O failure an
``OSError`` that keeps its errno. What the files hold is :mod:`sdediff.checkpoint`'s business."""
from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = ["os_error", "fsync", "save_tensors", "load_tensors", "write_json", "read_json"]


def os_error(err: OSError, message: str) -> OSError:
    """``err`` re-raised with ``message`` (which names the file); the errno (and subclass) is kept."""
    return OSError(err.errno, f"{message}: {err.strerror or err}") if err.errno else OSError(f"{message}: {err}")


def fsync(path: Path) -> None:
    """Flush a file (or a directory's entries) to disk, where the OS and file system can.

    Raises:
        OSError: the flush failed (a full disk, an I/O error), naming the file.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. directories on Windows
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise os_error(err, f"could not write checkpoint file {path}") from err
    finally:
        os.close(fd)


def save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """Write ``tensors`` to a safetensors file and flush it to disk.

    Raises:
        OSError: the file could not be written (a full disk, ...), naming it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    try:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path))
    except OSError as err:
        raise os_error(err, f"could not write checkpoint file {path}") from err
    except SafetensorError as err:  # safetensors reports its I/O errors as "... (os error N)"
        code = re.search(r"os error (\d+)", str(err))
        raise OSError(int(code.group(1)) if code else errno.EIO,
                      f"could not write checkpoint file {path}: {err}") from err
    fsync(path)


def load_tensors(path: Path, device=None, required: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """Read a safetensors file, checking it.

    Raises:
        ValueError: the file is empty, truncated or not a safetensors file, or lacks ``required`` keys.
        OSError: the file is missing or cannot be read.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        if path.stat().st_size == 0:
            raise ValueError(f"checkpoint {path} is empty (written by a run that died mid-write?)")
        tensors = load_file(str(path), device=str(device) if device is not None else "cpu")
    except OSError as err:
        raise os_error(err, f"could not read checkpoint {path}") from err
    except SafetensorError as err:
        if re.search(r"os error \d+", str(err)):
            raise OSError(errno.EIO, f"could not read checkpoint {path}: {err}") from err
        raise ValueError(f"checkpoint {path} is truncated or not a safetensors file ({err})") from err
    missing = [k for k in required if k not in tensors]
    if missing:
        raise ValueError(f"checkpoint {path} lacks the tensors {missing} (it holds {sorted(tensors)[:8]})")
    return tensors


def write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as JSON and flush it to disk.

    Raises:
        OSError: the file could not be written, naming it.
    """
    try:
        with open(path, "w") as fh:
            fh.write(json.dumps(obj, indent=1, sort_keys=True))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise os_error(err, f"could not write checkpoint file {path}") from err


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, checking it.

    Raises:
        ValueError: the file is empty, truncated, not JSON or not a JSON object.
        OSError: the file is missing or cannot be read.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise os_error(err, f"could not read checkpoint {path}") from err
    if not raw.strip():
        raise ValueError(f"checkpoint {path} is empty (written by a run that died mid-write?)")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint {path} is truncated or not JSON ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path} holds a JSON {type(obj).__name__}, not an object")
    return obj
