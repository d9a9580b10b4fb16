"""What a dataset's samples hold: the sha256 of every image's bytes, so a changed image is seen.

The fingerprint (SPEC §4) hashes names, labels and folds only, and members keep it as part of their
recipe: changing an image's pixels without renaming it leaves it unchanged. The content record is
kept beside it -- never in it, so committed members keep their hashes -- and the store compares it
before training more members of a dataset (:meth:`ensemble.store.Store.record_content`).

Hashing reads every file once: a cache in the ens cache directory, keyed by (path, size, mtime_ns),
makes a second run read nothing that is unchanged. Array datasets (MedMNIST's ``.npz``) hash each
image array's bytes (with its shape and dtype), cached by the ``.npz`` file's own (path, size, mtime_ns).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import atomic_write_json
from .scan import Listing

CACHE_VERSION = 1
_CHUNK = 1 << 20


@dataclass
class Content:
    """sha256 per sample id, and where each sample lives (for messages: a file, or ``file.npz[train/3]``)."""

    hashes: dict[str, str] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)

    def changed(self, recorded: dict[str, str]) -> list[str]:
        """Ids whose bytes differ from ``recorded`` (or that are new, or gone), in id order as listed here."""
        out = [i for i, h in self.hashes.items() if recorded.get(i) != h]
        return out + sorted(set(recorded) - set(self.hashes))


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks (the one place a file is hashed: tests count calls)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    return h.hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """The sha256 of one image array: its dtype and shape, then its bytes."""
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(array.tobytes())
    return h.hexdigest()


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _cache_file(cache_dir: Path, name: str, source: Path | None) -> Path:
    where = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    return cache_dir / "content" / f"{name}-{where}.json"


def _read_cache(path: Path) -> dict:
    """The cache (untrusted, like anything on disk): a damaged one is simply rebuilt."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(obj, dict) or obj.get("version") != CACHE_VERSION or not isinstance(obj.get("files"), dict):
        return {}
    return obj["files"]


def dataset_content(listing: Listing, *, name: str, source: Path | None, cache_dir: Path) -> Content:
    """Every sample's sha256: of its file (image folders, manifests, segmentation images and masks), or of
    its array (``.npz`` and built-in datasets). Unchanged files are read from the cache, not hashed."""
    cache_path = _cache_file(cache_dir, name, source)
    cache = _read_cache(cache_path)
    fresh: dict[str, list] = {}

    def cached(path: Path, compute: Callable[[], str]) -> str:
        key = str(path)
        stat = _stat_key(path)
        hit = cache.get(key)
        if stat is not None and isinstance(hit, list) and len(hit) == 3 and hit[:2] == stat and isinstance(hit[2], str):
            fresh[key] = hit
            return str(hit[2])
        digest = compute()
        if stat is not None:
            fresh[key] = [*stat, digest]
        return digest

    content = Content()
    if listing.files is not None:
        masks = listing.masks or [None] * len(listing.files)
        for sample, file, mask in zip(listing.ids, listing.files, masks):
            digest = cached(file, lambda f=file: file_sha256(f))
            if mask is not None:  # a segmentation sample is its image and its mask
                digest = hashlib.sha256(f"{digest}{cached(mask, lambda m=mask: file_sha256(m))}".encode()).hexdigest()
            content.hashes[sample] = digest
            content.where[sample] = str(file) if mask is None else f"{file} (or its mask {mask.name})"
    else:
        hit = cache.get(str(source)) if source is not None else None
        stat = _stat_key(source) if source is not None else None
        if (
            stat is not None
            and isinstance(hit, list)
            and len(hit) == 3
            and hit[:2] == stat
            and isinstance(hit[2], list)
            and len(hit[2]) == len(listing.ids)
        ):
            digests = [str(d) for d in hit[2]]
        else:
            digests = [array_sha256(a) for a in listing.pixels]
        if stat is not None:
            fresh[str(source)] = [*stat, digests]
        label = str(source) if source is not None else name
        for sample, digest in zip(listing.ids, digests):
            content.hashes[sample] = digest
            content.where[sample] = f"{label}[{sample}]"
    if fresh != cache:
        with contextlib.suppress(OSError):  # an unwritable cache only costs time
            atomic_write_json(cache_path, {"version": CACHE_VERSION, "files": fresh})
    return content
