"""``ens data fetch``: download a dataset from its official source, verify it, unpack it.

pooch does the download: streamed into a temporary file beside the target, the length
checked against the server's Content-Length (urllib3 refuses a short body), the checksum
verified, two retries -- and only then moved to its name. Archives are checked before
anything is unpacked: no member may leave the target (absolute paths, ``..``, links), and
the unpacked size is limited. The dataset appears at ``<data-dir>/<name>`` (MedMNIST:
``<data-dir>/medmnist/<name>.npz``) by one rename, so a partial download is never visible
as a dataset. Offline, the error is one line that says where to put the files by hand.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..errors import DataError, UsageError, first_line
from .catalog import Source

if TYPE_CHECKING:
    from .sources import DatasetRef

MAX_UNPACKED_BYTES = 50 * 2**30  # no catalogue dataset is near this; a zip bomb is
_HEX = {"md5": 32, "sha1": 40, "sha256": 64}


def parse_checksum(text: str) -> str:
    """``md5:HEX``, ``sha1:HEX`` or ``sha256:HEX``, checked; the one place a checksum is read."""
    algo, sep, digest = text.partition(":")
    algo, digest = algo.lower(), digest.lower()
    if not sep or algo not in _HEX or not re.fullmatch(f"[0-9a-f]{{{_HEX[algo]}}}", digest):
        raise UsageError(
            f"checksum {text!r} is not ALGO:HEX with ALGO one of {', '.join(_HEX)} "
            f"(e.g. sha256:{'0' * 8}...; {_HEX.get(algo, 64)} hex digits)"
        )
    return f"{algo}:{digest}"


class _Progress:
    """The tqdm-like object pooch's HTTPDownloader reports to, forwarding to a callback."""

    def __init__(self, on_progress: Callable[[int, int], None]) -> None:
        self.on_progress, self.total, self.n = on_progress, 0, 0

    def update(self, n: int) -> None:
        self.n += n
        self.on_progress(self.n, self.total or 0)

    def reset(self) -> None:
        self.n = 0

    def close(self) -> None:
        pass


def download(url: str, dest: Path, checksum: str | None, on_progress: Callable[[int, int], None] | None = None) -> None:
    """``url`` to ``dest`` through pooch: length and checksum verified, two retries."""
    import pooch
    import requests

    if not re.match(r"https?://", url):
        raise UsageError(f"--url {url!r}: only http:// and https:// addresses are downloaded")
    progress = _Progress(on_progress) if on_progress else False
    pooch.get_logger().setLevel("WARNING")  # its "Downloading ..." lines would tear our progress bar
    fetcher = pooch.create(
        path=dest.parent, base_url="", registry={dest.name: checksum}, urls={dest.name: url}, retry_if_failed=2
    )
    try:
        fetcher.fetch(dest.name, downloader=pooch.HTTPDownloader(progressbar=progress, timeout=30))
    except ValueError as err:  # pooch's hash mismatch
        raise DataError(f"checksum mismatch for {url}: {first_line(err, 200)}; nothing was installed") from None
    except requests.exceptions.RequestException as err:
        raise DataError(f"cannot download {url} ({first_line(err, 200)}); nothing was installed") from None


def _check_members(archive: Path, names_sizes: list[tuple[str, int, bool]], limit: int) -> None:
    """Refuse an archive whose members would leave the target or unpack to more than ``limit`` bytes."""
    total = 0
    for name, size, is_link in names_sizes:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if not parts or name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", name) or is_link:
            raise DataError(
                f"{archive}: member {name!r} would be written outside the dataset folder; nothing was installed"
            )
        total += size
    if total > limit:
        raise DataError(
            f"{archive} would unpack to {total / 2**30:.1f} GiB, over the limit of "
            f"{limit / 2**30:.1f} GiB; nothing was installed"
        )


def _unpack(archive: Path, target: Path, limit: int = MAX_UNPACKED_BYTES) -> None:
    """Unpack a zip or tar archive into ``target``; a single top folder is flattened away."""
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as z:
                    _check_members(
                        archive,
                        [
                            (i.filename, i.file_size, (i.external_attr >> 16) & 0o170000 == 0o120000)
                            for i in z.infolist()
                        ],
                        limit,
                    )
                    z.extractall(tmp)
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as t:
                    members = t.getmembers()
                    _check_members(
                        archive, [(m.name, m.size, m.issym() or m.islnk() or m.isdev()) for m in members], limit
                    )
                    t.extractall(tmp, filter="data")
            else:
                raise DataError(f"{archive} is neither a zip nor a tar archive; nothing was installed")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
            raise DataError(f"{archive}: damaged archive ({first_line(err, 200)}); nothing was installed") from None
        entries = [p for p in tmp.iterdir() if not p.name.startswith(("__MACOSX", "."))]
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        root.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(
    ref: DatasetRef,
    *,
    source: Source | None = None,
    limit: int = MAX_UNPACKED_BYTES,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download and install ``ref``; an existing copy is never overwritten."""
    if not ref.info.sources and source is None and ref.info.no_source:
        raise UsageError(ref.info.no_source)  # before any network
    if not ref.info.sources and source is None:
        raise UsageError(f"{ref.spec} has no download source (folder: datasets are yours; digits is built in)")
    source = source or ref.info.sources[0]
    checksum = parse_checksum(source.checksum) if source.checksum else None
    target = ref.path
    if target.exists():
        raise UsageError(f"{target} already exists; remove it first to fetch {ref.spec} again")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmpdir:
        part = Path(tmpdir) / source.filename
        try:
            download(source.url, part, checksum, on_progress)
        except DataError as err:
            if "checksum" in str(err):
                raise
            raise DataError(
                f"{err}; offline? download it elsewhere and put it by hand at {target} "
                f"({ref.info.layout} layout, see `ens data list`)"
            ) from None
        if ref.info.layout == "npz":
            part.rename(target)
        else:
            _unpack(part, target, limit)
    return target
