"""Decoding one image file or array into a resized uint8 RGB array.

Real collections mix PNG, JPEG (``.JPG``/``.jpeg``), 8- and 16-bit TIFF, grey and RGB:
everything ends up as ``(size, size, 3)`` uint8. 16-bit (and float) images are scaled to
8 bits by their own range, not clipped; grey images are replicated to 3 channels. DICOM files
(:mod:`ensemble.data.dicom`) go through their rescale and window first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .dicom import DICOM_SUFFIXES, dicom_size, has_magic, own_range, pydicom_module, read_dicom, read_dicom_mask

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm"})
# files of a dataset folder that are never images: not opened to look for the DICOM mark
NOT_IMAGES = frozenset({".txt", ".csv", ".tsv", ".json", ".md", ".xml", ".yaml", ".yml", ".npz", ".npy", ".zip"})


def is_image(path: Path) -> bool:
    """An image file by its suffix, or a DICOM file (by suffix, or by its mark when it has no image suffix)."""
    return not path.name.startswith(".") and (path.suffix.lower() in IMAGE_SUFFIXES or is_dicom_file(path))


def is_dicom_file(path: Path) -> bool:
    """Read by :func:`read_dicom`, not PIL: a ``.dcm``/``.dicom`` file, or one without an image suffix that
    carries the DICOM mark (scanners write names like ``IM0001`` or ``1.2.840...1``)."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    return suffix not in IMAGE_SUFFIXES and suffix not in NOT_IMAGES and has_magic(path)


def image_stem(path: Path) -> str:
    """The name without its image suffix: ``a.png`` -> ``a``, but a scanner's ``1.2.840.5.1`` (DICOM found by
    its mark) keeps its whole name, or its images 1 and 2 would share one."""
    suffix = path.suffix.lower()
    return path.stem if suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES else path.name


def count_dicom(files: list[Path]) -> int:
    """How many of ``files`` are DICOM; with any, pydicom must be there (else one line naming a DICOM file and
    the install), checked before any work."""
    dicom = [f for f in files if is_dicom_file(f)]
    if dicom:
        pydicom_module(dicom[0])
    return len(dicom)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header (nothing decoded); unreadable is a DataError naming it."""
    if is_dicom_file(path):
        return dicom_size(path)
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError... for bad files
        raise DataError(f"cannot read image {path}: {err}") from None


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any numeric image to uint8 by its own range (a constant image becomes 0)."""
    if array.dtype == np.uint8:
        return array
    return np.round(own_range(array)).astype(np.uint8)


def to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:  # drop alpha
        return array[:, :, :3]
    if array.shape[2] == 2:  # grey + alpha
        return np.repeat(array[:, :, :1], 3, axis=2)
    return array


def resize(array: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an (H, W, 3) uint8 array to (size, size, 3)."""
    if array.shape[0] == size and array.shape[1] == size:
        return np.ascontiguousarray(array)
    return np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BILINEAR))


def prepare(array: np.ndarray, size: int) -> np.ndarray:
    """Any decoded image array -> (size, size, 3) uint8."""
    return resize(to_rgb(to_uint8(np.asarray(array))), size)


def read_image(path: Path, size: int, dicom_window: str = "file") -> np.ndarray:
    """Decode ``path`` to (size, size, 3) uint8; an unreadable file is a DataError naming it. ``dicom_window``
    is how a DICOM file's values become grey levels (:func:`ensemble.data.dicom.read_dicom`)."""
    if is_dicom_file(path):
        array = read_dicom(path, dicom_window)
        if array.size == 0:
            raise DataError(f"empty image {path}")
        return prepare(array, size)
    try:
        with Image.open(path) as img:
            img.load()  # a truncated file fails here, not later
            if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
            array = np.asarray(img)
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError... for bad files
        raise DataError(f"cannot read image {path}: {err}") from None
    if array.size == 0:
        raise DataError(f"empty image {path}")
    return prepare(array, size)


MAX_LABELS = 64  # a mask whose values are neither 0/255 nor below this is not a label map


def read_mask(path: Path, size: int) -> np.ndarray:
    """Decode a mask to (size, size) uint8 values as stored (nearest-neighbour resize, so no value is
    invented); colour masks must be grey in all channels. Unreadable is a DataError naming the file."""
    try:
        if is_dicom_file(path):
            array = read_dicom_mask(path)
        else:
            with Image.open(path) as img:
                img.load()
                if img.mode == "1":
                    img = img.convert("L")
                array = np.asarray(img)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot read mask {path}: {err}") from None
    if array.ndim == 3:
        if array.shape[2] in (2, 4):
            array = array[:, :, :-1]
        if not (array == array[:, :, :1]).all():
            raise DataError(f"mask {path} has colours; a mask is grey (0/255) or a label map of class indices")
        array = array[:, :, 0]
    if array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise DataError(f"mask {path} has values outside 0..255")
        array = array.astype(np.uint8)
    if array.shape != (size, size):
        array = np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.NEAREST))
    return array


def mask_classes(values: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """The masks' stored values -> (lookup table value -> class index, class names), background class 0.

    Values in {0, 255} (or {0, 1}) are binary masks; otherwise values below :data:`MAX_LABELS` are class
    indices of a label map. ``where`` names the dataset in the error.
    """
    present = set(np.flatnonzero(values).tolist())
    lut = np.zeros(256, dtype=np.uint8)
    if present <= {0, 255} or present <= {0, 1}:
        lut[255] = lut[1] = 1
        return lut, ["background", "foreground"]
    top = max(present)
    if top >= MAX_LABELS:
        raise DataError(
            f"{where}: masks hold values up to {top} besides 0/255; a mask must be binary (0/255) "
            f"or a label map of class indices below {MAX_LABELS}"
        )
    lut[: top + 1] = np.arange(top + 1)
    return lut, ["background", *(f"class {k}" for k in range(1, top + 1))]
