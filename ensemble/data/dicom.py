"""DICOM, the format images leave the scanner in, decoded to the same uint8 arrays as every other image.

pydicom (``pip install "ens[dicom]"``) reads the file and its pixel data. What the pixels mean comes from
the file, as a DICOM viewer shows them (PS3.3 C.11):

1. the modality LUT: *Rescale Slope* and *Intercept* (Hounsfield units for CT), or a Modality LUT Sequence;
2. the VOI window that maps those values to grey levels, chosen by ``--dicom-window`` (recorded in the
   member's recipe, so ``ens predict`` shows its inputs to the member the same way):

   * ``file`` (the default): the file's own *Window Center*/*Width* (the first pair, with its VOI LUT
     Function), else its VOI LUT Sequence, else the image's own range;
   * ``minmax``: the image's own range, whatever the file says;
   * ``C,W`` or a named CT window (``lung`` is -600,1500): one window in modality units for every file;
3. *MONOCHROME1* (high values dark), or an *INVERSE* Presentation LUT Shape, is inverted, so bright means
   the same in every file.

Colour DICOM (RGB, YBR, palette) is taken as colour, unwindowed. A file with several frames (a cine loop,
a 3D volume) is refused naming it: ens reads 2D images. Files are DICOM by their suffix (``.dcm``,
``.dicom``) or, without an image suffix (``IM0001``, ``1.2.840...1``), by the ``DICM`` mark at byte 128.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import DataError, first_line

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
MAGIC_OFFSET, MAGIC = 128, b"DICM"
PIXEL_ELEMENTS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
INSTALL = 'pip install "ens[dicom]"'


def has_magic(path: Path) -> bool:
    """The DICOM Part 10 mark (``DICM`` after a 128-byte preamble); an unreadable file has none."""
    try:
        with open(path, "rb") as f:
            f.seek(MAGIC_OFFSET)
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def pydicom_module(path: Path | str) -> ModuleType:
    """pydicom, or one line naming the file that needs it and the install line."""
    try:
        import pydicom
    except ImportError:
        raise DataError(f"{path} is a DICOM file; reading DICOM needs pydicom: {INSTALL}") from None
    return pydicom


def _read(path: Path, *, pixels: bool) -> Any:
    """The parsed file (``force`` for a ``.dcm`` written without the Part 10 preamble, as old exports are)."""
    pydicom = pydicom_module(path)
    try:
        ds = pydicom.dcmread(path, force=path.suffix.lower() in DICOM_SUFFIXES, stop_before_pixels=not pixels)
    except Exception as err:  # InvalidDicomError, a truncated header, a non-DICOM file named .dcm
        raise DataError(f"cannot read DICOM {path}: {first_line(err, 200)}") from None
    if getattr(ds, "preamble", None) is None and "SOPClassUID" not in ds and "Rows" not in ds:  # forced: nothing found
        raise DataError(f"cannot read DICOM {path}: not a DICOM file (no DICM mark, no image elements)")
    return ds


def dicom_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header (no pixel data read): what a mask of this image must match."""
    ds = _read(path, pixels=False)
    try:
        return int(ds.Columns), int(ds.Rows)
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"DICOM {path} has no image size (Rows/Columns): it holds no image") from None


def _stored_pixels(path: Path, ds: Any) -> np.ndarray:
    """The decoded pixel data of a single-frame image, as stored (before any LUT)."""
    if not any(name in ds for name in PIXEL_ELEMENTS):
        modality = f"; modality {ds.Modality}" if ds.get("Modality") else ""
        raise DataError(
            f"DICOM {path} holds no image (no Pixel Data{modality}): a report, a series index, or a truncated file?"
        )
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise DataError(
            f"DICOM {path} holds {frames} frames (a cine loop or a volume); ens reads 2D images: save one file "
            "per frame or slice"
        )
    try:
        return np.asarray(ds.pixel_array)
    except Exception as err:  # no decoder for its transfer syntax, or damaged pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed:
            raise DataError(
                f"cannot decode DICOM {path}: its pixel data is {syntax.name} ({syntax}); {INSTALL} adds the JPEG, "
                f"JPEG-LS and JPEG 2000 decoders ({first_line(err, 120)})"
            ) from None
        raise DataError(f"cannot decode the pixel data of DICOM {path}: {first_line(err, 200)}") from None


def _first(value: Any) -> float:
    """A DS element's first value (Window Center/Width may hold several alternative windows)."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0]
    return float(value)


def _linear(values: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing to grey levels 0..255, by pydicom's implementation (an 8-bit unsigned
    output range is what makes its ``y_min``/``y_max`` 0 and 255)."""
    from pydicom import Dataset
    from pydicom.pixels import apply_windowing

    target = Dataset()
    target.PhotometricInterpretation = "MONOCHROME2"
    target.BitsStored, target.PixelRepresentation = 8, 0
    target.WindowCenter, target.WindowWidth, target.VOILUTFunction = centre, width, function
    return apply_windowing(values.astype(np.float64), target)


def own_range(values: np.ndarray) -> np.ndarray:
    """Grey levels 0..255 from the image's own minimum and maximum (a constant image is 0)."""
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    return np.zeros(values.shape) if hi <= lo else (values - lo) * (255.0 / (hi - lo))


def _file_window(path: Path, ds: Any, values: np.ndarray) -> np.ndarray:
    """``--dicom-window file``: the file's window, else its VOI LUT Sequence, else the image's own range."""
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            return _linear(values, centre, width, str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper())
        except (TypeError, ValueError, IndexError) as err:
            raise DataError(
                f"DICOM {path}: its window (Window Center {ds.WindowCenter}, Width {ds.WindowWidth}) cannot be "
                f"applied ({first_line(err, 120)}); give --dicom-window minmax or C,W"
            ) from None
    if ds.get("VOILUTSequence"):
        from pydicom.pixels import apply_voi

        try:
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            mapped = apply_voi(np.round(values).astype(np.int64), ds)
        except Exception as err:  # a malformed LUT
            raise DataError(f"DICOM {path}: its VOI LUT cannot be applied ({first_line(err, 120)})") from None
        return mapped.astype(np.float64) * (255.0 / (2**bits - 1))
    return own_range(values)


def parse_window(window: str) -> tuple[float, float] | None:
    """``C,W`` as numbers; None for ``file`` and ``minmax`` (the canonical spellings the recipe records)."""
    if window in ("file", "minmax"):
        return None
    centre, width = window.split(",")
    return float(centre), float(width)


def read_dicom(path: Path, window: str = "file") -> np.ndarray:
    """Decode a DICOM image under ``window`` (see the module): (H, W) grey uint8, or (H, W, 3) colour as
    stored (scaled to 8 bits by :func:`ensemble.data.images.prepare`, as any other colour image)."""
    fixed = parse_window(window)
    ds = _read(path, pixels=True)
    stored = _stored_pixels(path, ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        stored = apply_color_lut(stored, ds)
    if stored.ndim == 3:  # colour: a window is a grey-level mapping, which colour images do not have
        if fixed is not None:
            raise DataError(f"DICOM {path} is a colour image ({photometric}); --dicom-window {window} is for grey ones")
        return stored
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if fixed is not None:
        grey = _linear(values, *fixed)
    else:
        grey = own_range(values) if window == "minmax" else _file_window(path, ds, values)
    if (photometric == "MONOCHROME1") != (str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"):
        grey = 255.0 - grey  # MONOCHROME1, or an INVERSE presentation LUT: high values are shown dark
    return np.clip(np.round(grey), 0, 255).astype(np.uint8)


def read_dicom_mask(path: Path) -> np.ndarray:
    """A mask stored as DICOM: its stored values as they are (a label map has no window)."""
    ds = _read(path, pixels=True)
    return _stored_pixels(path, ds)
