"""Where a command may write: every ``--out`` (and ``--masks``) is checked here, before any work runs.

One place for the rules, so ``ens export``, ``ens predict`` and ``ens report`` refuse the same things
the same way, with one line naming the path:

* never inside the member store (a report or a prediction there would read as a label or a run and break
  ``ens train`` and ``ens report``), unless the command writes the store;
* never a system folder (``/`` itself, ``/proc``, ``/sys``, ``/dev``, ``/etc``, ``/usr``, ... and what is
  under them);
* never over an existing file unless the caller allows it;
* the nearest existing ancestor must be a writable folder, so the parents can be created;
* the free space there must hold what the command expects to write (:func:`check_free_space`).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .errors import EnsError, UsageError

# top-level folders of the operating system; "/" itself is refused on its own (its other children are the
# user's: /tmp, /home, /data, /work ...)
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/boot")
SPACE_MARGIN = 1.2  # what a command expects to write, times this, must be free (filesystems round up)


class NoSpace(EnsError):
    """The disk is (or would be) full: an environment fault, said in one line and never retried."""


def _resolved(path: Path) -> Path:
    """``path`` made absolute with every existing link followed (what the write would really reach)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def system_folder(path: Path) -> str | None:
    """The system folder ``path`` is (or lies in), or None."""
    real = _resolved(path)
    if real == Path("/"):
        return "/"
    for name in SYSTEM_FOLDERS:
        if _under(real, Path(name)):
            return name
    return None


def existing_ancestor(path: Path) -> Path:
    """The nearest folder above ``path`` (or ``path`` itself) that exists."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output(
    path: Path,
    *,
    what: str = "--out",
    kind: str = "file",
    stores: Iterable[Path] = (),
    overwrite: bool = False,
    must_be_new: bool = False,
    expected_bytes: int = 0,
) -> Path:
    """Refuse an output path before any work (see the module's rules); returns it unchanged.

    ``kind`` is ``file`` or ``folder``; ``stores`` are member stores the command reads and must not write
    into; ``must_be_new``: a folder that may not exist yet (an export); ``overwrite``: an existing file may
    be replaced.
    """
    path = Path(path)
    where = system_folder(path)
    if where is not None:
        at = "the root folder /" if where == "/" else f"the system folder {where}"
        raise UsageError(f"{what} {path}: refusing to write into {at}; choose a folder of your own")
    real = _resolved(path)
    for store in stores:
        if store is not None and _under(real, _resolved(Path(store))):
            raise UsageError(
                f"{what} {path}: lies inside the member store {store}; write outputs outside it "
                "(the store holds only members)"
            )
    if path.exists() or path.is_symlink():
        if kind == "file":
            if path.is_dir():
                raise UsageError(f"{what} {path}: is a folder; give a file name")
            if not path.is_file():
                raise UsageError(f"{what} {path}: exists and is not a regular file")
            if not overwrite:
                raise UsageError(
                    f"{what} {path}: already exists; remove it or choose another name (nothing overwritten)"
                )
        elif not path.is_dir():
            raise UsageError(f"{what} {path}: exists and is not a folder")
        elif must_be_new:
            raise UsageError(f"{what} {path}: already exists; it is never overwritten, choose a new folder")
    base = existing_ancestor(path.parent if kind == "file" else path)
    if _resolved(base) == Path("/"):
        raise UsageError(f"{what} {path}: would be created in the root folder /; choose a folder of your own")
    if not base.is_dir():
        raise UsageError(f"{what} {path}: cannot be created, {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: cannot be created, {base} is not writable")
    if expected_bytes:
        check_free_space(base, expected_bytes, what=f"{what} {path}")
    return path


def check_free_space(path: Path, expected_bytes: int, *, what: str) -> None:
    """Refuse to start work that would fill the disk holding ``path`` (one line: needed and free)."""
    base = existing_ancestor(path)
    try:
        free = shutil.disk_usage(base).free
    except OSError:
        return  # a filesystem that will not say: the write itself will tell
    needed = int(expected_bytes * SPACE_MARGIN)
    if needed > free:
        raise NoSpace(
            f"{what}: needs about {_size(needed)} of disk space, {base} has {_size(free)} free; "
            "free some space or write elsewhere (nothing was started)"
        )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def is_no_space(err: BaseException) -> bool:
    """A write failed because the disk (or the user's quota) is full."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def environment_fault(err: OSError) -> str | None:
    """One line for an OS error that is the environment's, not a bug (full disk, read-only, no permission)."""
    where = f" writing {err.filename}" if getattr(err, "filename", None) else ""
    if is_no_space(err):
        return f"no space left on the device{where}; free some space and rerun (finished work is kept)"
    if err.errno == errno.EROFS:
        return f"read-only file system{where}"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where.replace(' writing', ' on')}"
    return None
