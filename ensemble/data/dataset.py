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

from ..errors import DataError, UsageError
from .content import Content, dataset_content
from .images import MAX_LABELS, mask_classes, prepare, read_image, read_mask
from .scan import Listing, scan
from .sources import DatasetRef, resolve
from .splits import Fold, make_folds, read_splits

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
    labels: np.ndarray  # (N,) int64; (N, L) uint8 0/1, one column per label, for a multi-label dataset
    images: np.ndarray  # (N, size, size, 3) uint8, possibly memory-mapped
    folds: list[Fold]
    fingerprint: str
    protocol: str
    warnings: list[str] = field(default_factory=list)
    masks: np.ndarray | None = None  # (N, size, size) uint8 class index per pixel: a segmentation dataset
    patients: np.ndarray | None = None  # (N,) str: the group (patient) of each sample, kept apart by every split
    # the sha256 of every sample's bytes (never part of the fingerprint: the store keeps it beside the members)
    content: Content = field(default_factory=Content, repr=False)
    dicom: int = 0  # how many images are DICOM: their window (``--dicom-window``) is then part of the recipe

    @property
    def task(self) -> str:
        if self.masks is not None:
            return "segmentation"
        return "multilabel" if self.labels.ndim == 2 else "classification"

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.ids)


def fingerprint(ids: list[str], labels: np.ndarray, classes: list[str], folds: list[Fold]) -> str:
    """Hash of sorted (relative path, label, test fold) -- SPEC §4; members that differ here never mix. A
    multi-label image's label is its labels joined by ``|`` (the manifest's spelling)."""
    test_fold = {}
    for fold in folds:
        for i in fold.test:
            test_fold[int(i)] = fold.index
    if labels.ndim == 2:
        names = ["|".join(c for c, v in zip(classes, row) if v) for row in labels]
    else:
        names = [classes[y] for y in labels]
    lines = sorted(f"{ids[i]}\t{names[i]}\t{test_fold.get(i, -1)}" for i in range(len(ids)))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _content_key(ref: DatasetRef, listing: Listing, size: int, kind: str = "images", dicom_window: str = "file") -> str:
    """Cache key: what the decoded arrays depend on (files' names, sizes, mtimes; arrays' bytes; the DICOM
    window, when there are DICOM images)."""
    window = f"|dicom-window {dicom_window}" if listing.dicom and kind == "images" else ""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{ref.name}|{size}|{kind}{window}".encode())
    files = listing.masks if kind == "masks" else listing.files
    if files is not None:
        for f in files:
            st = f.stat()
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    else:
        h.update(np.ascontiguousarray(listing.pixels).tobytes())
    return h.hexdigest()[:20]


def _decode(
    listing: Listing, size: int, workers: int, progress: bool, kind: str = "images", dicom_window: str = "file"
) -> np.ndarray:
    """Decode every image (or mask) of ``listing`` to (N, size, size, 3) (or (N, size, size)) uint8, in
    parallel threads."""
    from joblib import Parallel, delayed

    if kind == "masks":
        jobs = [delayed(read_mask)(f, size) for f in listing.masks]
    elif listing.files is not None:
        jobs = [delayed(read_image)(f, size, dicom_window) for f in listing.files]
    else:
        jobs = [delayed(prepare)(img, size) for img in listing.pixels]
    if progress and len(jobs) > 200:
        from rich.progress import track

        # joblib returns results in order; a generator lets the bar follow them
        out = Parallel(n_jobs=max(workers, 1), prefer="threads", return_as="generator")(jobs)
        results = list(track(out, total=len(jobs), description="decoding images", transient=True))
    else:
        results = Parallel(n_jobs=max(workers, 1), prefer="threads")(jobs)
    shape = (0, size, size) if kind == "masks" else (0, size, size, 3)
    return np.stack(results) if results else np.zeros(shape, np.uint8)


def load_images(
    ref: DatasetRef,
    listing: Listing,
    size: int,
    cache_dir: Path | None,
    workers: int = 2,
    progress: bool = False,
    kind: str = "images",
    dicom_window: str = "file",
) -> np.ndarray:
    """The decoded images (or masks), from the cache when there (memory-mapped), else decoded and cached."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    suffix = "-masks" if kind == "masks" else ""
    key = _content_key(ref, listing, size, kind, dicom_window)
    entry = cache_dir / "decoded" / f"{ref.name}-{size}px{suffix}-{key}"
    target = entry / "images.npy"
    shape = (len(listing.ids), size, size) + (() if kind == "masks" else (3,))
    if target.exists():
        try:
            images = np.load(target, mmap_mode="r")
            if images.shape == shape:
                return images
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    images = _decode(listing, size, workers, progress, kind, dicom_window)
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(entry.parent).free < 2 * images.nbytes + 2**20:
            return images  # no room for the cache: it only costs speed, and must not fill the disk training needs
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        np.save(tmp / "images.npy", images)
        (tmp / "meta.json").write_text(json.dumps({"dataset": ref.name, "ids": len(listing.ids), "size": size}))
        try:
            os.rename(tmp, entry)
        except OSError:  # another process cached it first, or a stale entry is in the way
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(tmp, entry)
    except OSError:  # an unwritable (or full) cache only costs speed; no half-written entry is left
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return images


def load(
    spec: str | DatasetRef,
    *,
    data_dir: Path | str = "datasets",
    size: int = 224,
    cache_dir: Path | None = None,
    workers: int = 2,
    progress: bool = False,
    dicom_window: str | None = None,
) -> Dataset:
    """Resolve (a :class:`DatasetRef` is taken as it is), scan, decode (or read the cache) and split a
    dataset: by its protocol, or by your own folds (``?splits=FILE``), checked before anything is decoded.
    ``dicom_window`` (``--dicom-window``; None: the files' own) is refused for a dataset without DICOM images,
    where it would be recorded but change nothing."""
    ref = resolve(spec, data_dir)
    listing = scan(ref)
    if dicom_window is not None and not listing.dicom:
        raise UsageError(
            f"--dicom-window {dicom_window}: {ref.spec} has no DICOM images, so there is nothing to window"
        )
    folds = dataset_folds(ref, listing)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    content = dataset_content(listing, name=ref.name, source=ref.path, cache_dir=cache)
    images = load_images(ref, listing, size, cache_dir, workers, progress, dicom_window=dicom_window or "file")
    masks, classes = None, listing.classes
    if listing.masks is not None:
        masks, classes = load_masks(ref, listing, size, cache_dir, workers, progress)
    return Dataset(
        name=ref.name,
        spec=ref.spec,
        classes=classes,
        ids=np.array(listing.ids),
        labels=listing.labels,
        images=images,
        folds=folds,
        fingerprint=fingerprint(listing.ids, listing.labels, classes, folds),
        protocol=folds[0].protocol if folds else ref.info.protocol,
        warnings=listing.warnings,
        masks=masks,
        patients=np.array(listing.patients) if listing.patients is not None else None,
        content=content,
        dicom=listing.dicom,
    )


def dataset_folds(ref: DatasetRef, listing: Listing) -> list[Fold]:
    """The folds a dataset is trained on: your own (``ref.splits``) or its protocol's. A set of classes with
    one class present is refused: a classifier of one class is always right and learns nothing."""
    if listing.masks is None and len(np.unique(listing.labels)) < 2:
        only = listing.classes[int(listing.labels[0])] if len(listing.labels) else "none"
        raise DataError(
            f"{ref.spec}: every image is of one class ({only!r}, {len(listing.labels)} image(s)); "
            "a classifier needs at least two classes"
        )
    return read_splits(ref.splits, listing.ids) if ref.splits else make_folds(ref.info.protocol, listing)


def odd_mask(paths: list[Path], masks: np.ndarray) -> str | None:
    """The first mask whose values do not fit the others (binary 0/255 masks, or label maps of class indices
    below :data:`MAX_LABELS`: whichever most masks are), named with its odd values; None if none stands out."""
    values = [set(np.unique(m).tolist()) - {0} for m in masks]
    binary = sum(1 for v in values if v and v <= {255})
    labels = sum(1 for v in values if v and max(v) < MAX_LABELS)
    for path, v in zip(paths, values):
        odd = sorted(v - {255}) if binary >= labels else sorted(x for x in v if x >= MAX_LABELS)
        if odd:
            kind = "binary (0/255)" if binary >= labels else f"label maps of class indices below {MAX_LABELS}"
            return (
                f"mask {path} holds value(s) {', '.join(map(str, odd[:5]))}, but the other masks are {kind}; "
                f"a mask is binary (0/255) or a label map of class indices below {MAX_LABELS}"
            )
    return None


def load_masks(
    ref: DatasetRef, listing: Listing, size: int, cache_dir: Path | None, workers: int, progress: bool
) -> tuple[np.ndarray, list[str]]:
    """The masks as class indices (N, size, size) uint8, and the class names (background first)."""
    raw = np.asarray(load_images(ref, listing, size, cache_dir, workers, progress, kind="masks"))
    folder = listing.masks[0].parent if listing.masks else ref.path
    counts = np.bincount(raw.reshape(-1), minlength=256)
    if not counts[1:].any():
        raise DataError(
            f"every mask in {folder} is empty (background only, at {size} px): there is nothing to segment; "
            "a foreground pixel is any value above 0"
        )
    try:
        lut, classes = mask_classes(counts, str(folder))
    except DataError as err:
        raise DataError(odd_mask(listing.masks, raw) or str(err)) from None
    return lut[np.asarray(raw)], classes
