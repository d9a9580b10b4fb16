"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: lab stores are shared, mkstemp's 0600 is not


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n").encode())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` through a temporary file and a rename (checkpoints survive ``kill -9``)."""
    import io as _io

    import torch

    buf = _io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def check_regular_file(path: Path, what: str) -> Path:
    """An input file that exists and is a regular file (``/dev/zero``, a FIFO or a socket is refused by name:
    reading one never ends or blocks)."""
    import stat

    from .errors import UsageError

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except OSError as err:
        raise UsageError(f"{what} {path}: cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{what} {path}: is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise UsageError(f"{what} {path}: not a regular file (a device, pipe or socket)")
    return Path(path)


def read_text_file(path: Path, what: str) -> str:
    """A regular file's text as UTF-8, or one line naming the file and the first byte that is not text."""
    from .errors import UsageError

    data = check_regular_file(path, what).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"{what} {path}: not a text file (byte 0x{data[err.start]:02x} at offset {err.start} is not UTF-8)"
        ) from None
