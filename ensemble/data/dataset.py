"""A loaded dataset: decoded images (cached on disk), labels, ids, folds and fingerprint.

Each dataset is decoded once into resized uint8 arrays and cached, keyed by the
content of its listing and the image size, in the user's cache directory (never in
the dataset folder, which may be read-only). No epoch opens an image file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .catalog import DatasetRef, resolve
from .images import prepare, read_image
from .scan import Listing, scan
from .splits import Fold, make_folds

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$ENS_CACHE_DIR`` or the per-user cache directory of this OS."""
    env = os.environ.get("ENS_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("ens"))


@dataclass
class Dataset:
    """Everything a member trainer needs, with every array in sample order."""

    name: str
    spec: str
    classes: list[str]
    ids: np.ndarray  # (N,) str
    labels: np.ndarray  # (N,) int64
    images: np.ndarray  # (N, size, size, 3) uint8, possibly memory-mapped
    folds: list[Fold]
    fingerprint: str
    protocol: str
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.ids)


def fingerprint(ids: list[str], labels: np.ndarray, classes: list[str], folds: list[Fold]) -> str:
    """Hash of sorted (relative path, label, test fold) -- SPEC §4; members that differ here never mix."""
    test_fold = {}
    for fold in folds:
        for i in fold.test:
            test_fold[int(i)] = fold.index
    lines = sorted(f"{ids[i]}\t{classes[labels[i]]}\t{test_fold.get(i, -1)}" for i in range(len(ids)))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _content_key(ref: DatasetRef, listing: Listing, size: int) -> str:
    """Cache key: what the decoded arrays depend on (files' names, sizes, mtimes; arrays' bytes)."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{ref.name}|{size}".encode())
    if listing.files is not None:
        for f in listing.files:
            st = f.stat()
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    else:
        h.update(np.ascontiguousarray(listing.pixels).tobytes())
    return h.hexdigest()[:20]


def _decode(listing: Listing, size: int, workers: int, progress: bool) -> np.ndarray:
    """Decode every image of ``listing`` to (N, size, size, 3) uint8, in parallel threads."""
    from joblib import Parallel, delayed

    if listing.files is not None:
        jobs = [delayed(read_image)(f, size) for f in listing.files]
    else:
        jobs = [delayed(prepare)(img, size) for img in listing.pixels]
    if progress and len(jobs) > 200:
        from rich.progress import track

        # joblib returns results in order; a generator lets the bar follow them
        out = Parallel(n_jobs=max(workers, 1), prefer="threads", return_as="generator")(jobs)
        results = list(track(out, total=len(jobs), description="decoding images", transient=True))
    else:
        results = Parallel(n_jobs=max(workers, 1), prefer="threads")(jobs)
    return np.stack(results) if results else np.zeros((0, size, size, 3), np.uint8)


def load_images(ref: DatasetRef, listing: Listing, size: int, cache_dir: Path | None,
                workers: int = 2, progress: bool = False) -> np.ndarray:
    """The decoded images, from the cache when there (memory-mapped), else decoded and cached."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = cache_dir / "decoded" / f"{ref.name}-{size}px-{_content_key(ref, listing, size)}"
    target = entry / "images.npy"
    if target.exists():
        try:
            images = np.load(target, mmap_mode="r")
            if images.shape == (len(listing.ids), size, size, 3):
                return images
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    images = _decode(listing, size, workers, progress)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        np.save(tmp / "images.npy", images)
        (tmp / "meta.json").write_text(json.dumps({"dataset": ref.name, "ids": len(listing.ids), "size": size}))
        try:
            os.rename(tmp, entry)
        except OSError:  # another process cached it first, or a stale entry is in the way
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(tmp, entry)
    except OSError:
        pass  # an unwritable cache only costs speed
    return images


def load(spec: str, *, data_dir: Path | str = "datasets", size: int = 224, cache_dir: Path | None = None,
         workers: int = 2, progress: bool = False) -> Dataset:
    """Resolve, scan, decode (or read the cache) and split a dataset."""
    ref = resolve(spec, data_dir)
    listing = scan(ref)
    folds = make_folds(ref.info.protocol, listing)
    images = load_images(ref, listing, size, cache_dir, workers, progress)
    return Dataset(
        name=ref.name,
        spec=spec,
        classes=listing.classes,
        ids=np.array(listing.ids),
        labels=listing.labels,
        images=images,
        folds=folds,
        fingerprint=fingerprint(listing.ids, listing.labels, listing.classes, folds),
        protocol=folds[0].protocol if folds else ref.info.protocol,
        warnings=listing.warnings,
    )
