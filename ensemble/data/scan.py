"""Listing what a dataset holds, without decoding it: ids, labels, folds.

Five layouts on disk (SPEC §4, §7):

* classes -- ``ROOT/<class>/<image>``;
* folds   -- ``ROOT/<fold>/<class>/<image>`` (predefined folds, e.g. LAR);
* npz     -- MedMNIST's ``NAME.npz`` with ``{train,val,test}_{images,labels}``;
* seg     -- ``ROOT/images/<name>`` and ``ROOT/masks/<name>`` (same names; ``seg:PATH``);
* csv     -- a manifest of image paths, labels, patients and splits (:mod:`.manifest`; ``csv:PATH``).

Sample ids are paths relative to ROOT (POSIX form), ``split/index`` for arrays, or a manifest's ``path``
values as written.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError
from .catalog import MEDMNIST_CLASSES
from .images import count_dicom, image_size, image_stem, is_image

if TYPE_CHECKING:
    from .sources import DatasetRef


@dataclass
class Listing:
    """What a dataset holds. ``groups`` is the predefined fold or split of each sample (or None);
    ``patients`` the group (patient) each sample belongs to, which no two folds' test sets share (or None)."""

    ids: list[str]
    labels: np.ndarray
    classes: list[str]
    groups: list[str] | None = None
    files: list[Path] | None = None  # for image folders: the file behind each id
    pixels: np.ndarray | None = None  # for array datasets: every image, in id order
    masks: list[Path] | None = None  # for segmentation folders: the mask behind each id
    patients: list[str] | None = None  # a manifest's patient (any group id) of each sample
    warnings: list[str] = field(default_factory=list)
    dicom: int = 0  # how many of ``files`` are DICOM (decoded through their window, :mod:`.dicom`)


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and is_image(p))


def _check_folder(root: Path) -> None:
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")


def scan_seg(root: Path) -> Listing:
    """List a segmentation folder: every image of ``images/`` needs a mask of the same name and size in
    ``masks/`` (any image suffix: ``a.jpg`` may have ``a.png``). Checked here, before any work starts."""
    _check_folder(root)
    folders = {name: root / name for name in ("images", "masks")}
    for name, folder in folders.items():
        if not folder.is_dir():
            raise DataError(
                f"{root} is not a segmentation folder: it has no {name}/ folder "
                "(expected images/<name> and masks/<name>)"
            )
    images = _images(folders["images"])
    if not images:
        raise DataError(f"{folders['images']} holds no images")
    masks_by_stem: dict[str, Path] = {}
    for m in _images(folders["masks"]):
        if image_stem(m) in masks_by_stem:
            raise DataError(
                f"masks {masks_by_stem[image_stem(m)]} and {m.name} have the same name but for the suffix: a mask is "
                "matched to its image by name, so keep one of them"
            )
        masks_by_stem[image_stem(m)] = m
    masks, warnings = [], []
    for img in images:
        mask = masks_by_stem.pop(image_stem(img), None)
        if mask is None:
            raise DataError(f"image {img} has no mask in {folders['masks']} (expected {folders['masks'] / img.name})")
        if image_size(mask) != image_size(img):
            (w, h), (mw, mh) = image_size(img), image_size(mask)
            raise DataError(f"mask {mask} is {mw}x{mh} but its image {img} is {w}x{h}")
        masks.append(mask)
    if masks_by_stem:
        warnings.append(
            f"{len(masks_by_stem)} mask(s) in {folders['masks']} have no image and are ignored "
            f"(e.g. {sorted(masks_by_stem.values())[0].name})"
        )
    ids = [p.name for p in images]
    # classes come from the masks' values when they are decoded (see dataset.load_masks)
    return Listing(ids, np.zeros(len(ids), dtype=np.int64), [], None, files=images, masks=masks, warnings=warnings)


def scan_folder(root: Path) -> Listing:
    """List an image-folder dataset, detecting the classes or folds layout."""
    _check_folder(root)
    top = _subdirs(root)
    if not top:
        raise DataError(f"{root} has no class folders (expected {root}/<class>/<image files>)")
    if {d.name for d in top} == {"images", "masks"}:
        raise DataError(f"{root} holds images/ and masks/: it is a segmentation dataset; use seg:{root}")
    # folds layout: the top folders hold folders, not images
    is_folds = all(_subdirs(d) and not _images(d) for d in top)
    if is_folds:
        classes = sorted({c.name for fold in top for c in _subdirs(fold)})
        entries = []
        for fold in top:
            present = {c.name for c in _subdirs(fold)}
            missing = [c for c in classes if c not in present]
            if missing:
                raise DataError(f"fold folder {fold} has no folder for class(es) {', '.join(missing)}")
            for c in classes:
                entries += [(p, classes.index(c), fold.name) for p in _class_images(fold / c)]
        groups = [g for _, _, g in entries]
        class_dirs = [fold / c for fold in top for c in classes]
    else:
        classes = [d.name for d in top]
        entries = [(p, i, None) for i, d in enumerate(top) for p in _class_images(d)]
        groups = None
        class_dirs = top
    files = [p for p, _, _ in entries]
    ids = [p.relative_to(root).as_posix() for p in files]
    labels = np.array([y for _, y, _ in entries], dtype=np.int64)
    warnings = [w for d in class_dirs for w in _nested_images(d)]
    return Listing(ids, labels, classes, groups, files=files, warnings=warnings)


def _nested_images(folder: Path) -> list[str]:
    """A warning per sub-folder of a class folder that holds images: ens reads the class folder's own images
    only, so those are left out of training and testing."""
    out = []
    for sub in _subdirs(folder):
        n = sum(
            1
            for p in sub.rglob("*")
            if p.is_file() and is_image(p) and not any(part.startswith(".") for part in p.relative_to(sub).parts)
        )
        if n:
            out.append(
                f"{sub}: {n} image(s) in this sub-folder of class folder {folder.name!r} are not read "
                "(ens reads the images directly in a class folder); move them up to use them"
            )
    return out


def _class_images(folder: Path) -> list[Path]:
    images = _images(folder)
    if not images:
        others = [p.name for p in folder.iterdir() if not p.name.startswith(".")][:3]
        hint = f" (found {', '.join(others)})" if others else ""
        raise DataError(f"class folder {folder} holds no images{hint}")
    return images


def scan_npz(path: Path, dataset: str, *, classes: str | None = None, multilabel: bool = False) -> Listing:
    """List a MedMNIST ``.npz``: labels may be shaped (N,) or (N, 1), or (N, L) 0/1 for a ``multilabel`` set
    (ChestMNIST). ``classes`` is the MedMNIST name whose class names to use (``dataset``, the store name,
    without its prefix, if not given)."""
    if not path.exists():
        raise DataError(f"{path} does not exist")
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    ids, labels, groups, images = [], [], [], []
    for split in ("train", "val", "test"):
        xk, yk = f"{split}_images", f"{split}_labels"
        if xk not in arrays or yk not in arrays:
            if split == "val":
                continue
            raise DataError(f"{path} has no {xk}/{yk} arrays (found {', '.join(sorted(arrays))})")
        x, y = arrays[xk], np.asarray(arrays[yk])
        if multilabel:
            if y.ndim != 2 or not np.isin(y, (0, 1)).all():
                raise DataError(f"{path}: {yk} of a multi-label set must be (N, labels) 0/1, found {y.dtype} {y.shape}")
            y = y.astype(np.uint8)
        elif y.ndim == 2 and y.shape[1] != 1:
            raise DataError(
                f"{path}: {yk} has shape {y.shape}: a multi-label dataset, which ens reads for MedMNIST's "
                "multi-label sets (ChestMNIST) and csv: manifests (labels=a,b,c), not for this one"
            )
        else:
            y = y.reshape(-1).astype(np.int64)
        if len(x) != len(y):
            raise DataError(f"{path}: {xk} has {len(x)} images but {yk} has {len(y)} labels")
        images.append(x)
        ids += [f"{split}/{i}" for i in range(len(y))]
        labels.append(y)
        groups += [split] * len(y)
    labels_arr = np.concatenate(labels)
    n_classes = labels_arr.shape[1] if labels_arr.ndim == 2 else int(labels_arr.max()) + 1
    name = classes or dataset.removeprefix("medmnist-")
    names = list(MEDMNIST_CLASSES.get(name, [str(i) for i in range(n_classes)]))
    return Listing(ids, labels_arr, names, groups, pixels=np.concatenate(images))


def scan_digits() -> Listing:
    """scikit-learn's bundled digits: 1797 grey 8x8 images, 10 classes (values 0..16)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    ids = [str(i) for i in range(len(images))]
    return Listing(ids, digits.target.astype(np.int64), [str(c) for c in digits.target_names], None, pixels=images)


def scan(ref: DatasetRef) -> Listing:
    """List ``ref`` (its kind knows how) and check it against the published counts (differences warn)."""
    listing = ref.kind.scan(ref)
    check_names(listing)
    listing.warnings += check_counts(ref, listing)
    listing.dicom = count_dicom(listing.files or [])
    return listing


def check_names(listing: Listing) -> None:
    """Every sample's file name is text: ids reach fingerprints, fold files, tables and reports as UTF-8, so a
    name with bytes that are not UTF-8 (0xff from another system) is refused naming the file."""
    for path in [*(listing.files or []), *(listing.masks or []), *map(str, listing.ids)]:
        check_utf8_name(path)


def check_utf8_name(path: Path | str, what: str = "") -> None:
    """A file name that is text (see :func:`check_names`), or one line naming it with its odd bytes escaped."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
        raise DataError(f"{what}{shown}: the file name is not valid UTF-8; rename the file") from None


def missing_message(ref: DatasetRef) -> str:
    how = f"run `ens data fetch {ref.spec}`, or " if ref.info.sources else ""
    return f"dataset {ref.spec!r} not found at {ref.path}: {how}put the files there by hand (see `ens data list`)"


def check_counts(ref: DatasetRef, listing: Listing) -> list[str]:
    """Compare the images per class (and the total) with the catalog's published figures."""
    expected = ref.info.counts
    if not expected:
        return []
    out = []
    counts = {c: int((listing.labels == i).sum()) for i, c in enumerate(listing.classes)}
    for cls, n in expected.items():
        if cls == "_total":
            if len(listing.ids) != n:
                out.append(f"{ref.name}: {len(listing.ids)} images in all, the published count is {n}")
        elif cls.startswith("_"):  # a split's size
            split = cls[1:]
            got = sum(1 for g in listing.groups or [] if g == split)
            if got != n:
                out.append(f"{ref.name}: {got} {split} images, the published count is {n}")
        elif cls in counts and counts[cls] != n:
            out.append(f"{ref.name}/{cls}: {counts[cls]} images, the published count is {n}")
        elif cls not in counts:
            out.append(f"{ref.name}: no class {cls!r} (published with {n} images)")
    return out
