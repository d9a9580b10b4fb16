"""``ens data fetch``: download a dataset from its official source, verify it, unpack it.

Everything lands in ``<data-dir>/<name>`` (MedMNIST: ``<data-dir>/medmnist/<name>.npz``).
Offline, the error is one line that says where to put the files by hand.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..errors import DataError, UsageError
from .catalog import DatasetRef, Source


def checksum_ok(path: Path, checksum: str | None) -> tuple[bool, str]:
    """Compare ``path`` with ``"md5:HEX"``/``"sha256:HEX"``; returns (ok, actual)."""
    algo, _, expected = (checksum or "sha256:").partition(":")
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    actual = h.hexdigest()
    return (not expected or actual == expected.lower()), f"{algo}:{actual}"


def download(url: str, dest: Path, on_progress: Callable[[int, int], None] | None = None) -> None:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if on_progress:
                    on_progress(done, total)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(f"cannot download {url} ({reason})") from None


def _unpack(archive: Path, target: Path) -> None:
    """Unpack a zip or tar archive into ``target``; a single top folder is flattened away."""
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")
        else:
            raise DataError(f"{archive} is neither a zip nor a tar archive")
        entries = [p for p in tmp.iterdir() if not p.name.startswith(("__MACOSX", "."))]
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        root.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(ref: DatasetRef, *, source: Source | None = None,
          on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Download and install ``ref``; an existing copy is never overwritten."""
    if not ref.info.sources and source is None:
        raise UsageError(f"{ref.spec} has no download source (folder: datasets are yours; digits is built in)")
    source = source or ref.info.sources[0]
    target = ref.path
    if target.exists():
        raise UsageError(f"{target} already exists; remove it first to fetch {ref.spec} again")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmpdir:
        part = Path(tmpdir) / source.filename
        try:
            download(source.url, part, on_progress)
        except DataError as err:
            raise DataError(f"{err}; offline? download it elsewhere and put it by hand at {target} "
                            f"({ref.info.layout} layout, see `ens data list`)") from None
        ok, actual = checksum_ok(part, source.checksum)
        if not ok:
            raise DataError(f"checksum mismatch for {source.url}: expected {source.checksum}, got {actual}")
        if ref.info.layout == "npz":
            part.rename(target)
        else:
            _unpack(part, target)
    return target
