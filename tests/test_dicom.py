"""DICOM images: rescale slope/intercept, then the window (the file's, the image's range, or --dicom-window),
MONOCHROME1 inverted; read everywhere images are (folders, manifests, segmentation, predict, export); the
window recorded in the recipe. Expected grey levels are computed here from the DICOM formula, not by pydicom."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import invoke_main, run_cli, tiny

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid  # noqa: E402

from ensemble.data.images import image_size, image_stem, is_image, read_image, read_mask  # noqa: E402
from ensemble.errors import DataError  # noqa: E402

TINY = tiny(1)


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple | None = None,
    photometric: str = "MONOCHROME2",
    syntax: str = ExplicitVRLittleEndian,
    preamble: bool = True,
    **elements,
) -> Path:
    """A single-frame CT-like DICOM file of ``stored`` values (int16/uint16 grey, or uint8 RGB)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    bits = 8 if stored.dtype == np.uint8 else 16
    ds.set_pixel_data(stored, "RGB" if stored.ndim == 3 else photometric, bits)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for name, value in elements.items():
        setattr(ds, name, value)
    if syntax == RLELossless:
        ds.compress(RLELossless)
    elif syntax != ExplicitVRLittleEndian:  # a compressed syntax no decoder here reads: its bytes as one frame
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([ds.PixelData])
        ds.file_meta.TransferSyntaxUID = syntax
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    return path


def linear_window(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255, written out here."""
    c, w = centre - 0.5, width - 1
    y = ((x - c) / w + 0.5) * 255
    return np.round(np.where(x <= c - w / 2, 0, np.where(x > c + w / 2, 255, y))).astype(np.uint8)


def ct_slice(seed: int = 0, shape=(12, 10)) -> np.ndarray:
    """Stored CT values (HU + 1024) from air (-1000 HU) to bone (+1400 HU)."""
    return np.random.default_rng(seed).integers(24, 2424, size=shape).astype(np.int16)


def grey(path: Path, window: str = "file") -> np.ndarray:
    """read_image of a square file at its own size (no resize): channel 0 (grey is replicated to RGB)."""
    width, height = image_size(path)
    assert width == height
    return read_image(path, width, window)[:, :, 0]


def test_rescale_then_the_files_window(tmp_path):
    stored = ct_slice(shape=(10, 10))
    path = write_dicom(tmp_path / "ct.dcm", stored, slope=1, intercept=-1024, window=(40, 400))
    hu = stored.astype(np.float64) - 1024
    np.testing.assert_array_equal(grey(path), linear_window(hu, 40, 400))
    rgb = read_image(path, 10)
    assert rgb.shape == (10, 10, 3) and (rgb == rgb[:, :, :1]).all()


def test_a_recipe_window_slope_and_a_named_ct_window(tmp_path):
    stored = ct_slice(1, shape=(8, 8))
    path = write_dicom(tmp_path / "ct.dcm", stored, slope=2, intercept=-100, window=(40, 400))
    values = stored.astype(np.float64) * 2 - 100
    np.testing.assert_array_equal(grey(path, "100,200"), linear_window(values, 100, 200))  # the file's is ignored
    np.testing.assert_array_equal(grey(path, "-600,1500"), linear_window(values, -600, 1500))


def test_minmax_and_no_window_in_the_file_use_the_images_range(tmp_path):
    stored = ct_slice(2, shape=(8, 8))
    own = np.round((stored - stored.min()) * (255.0 / (stored.max() - stored.min()))).astype(np.uint8)
    with_window = write_dicom(tmp_path / "w.dcm", stored, slope=1, intercept=-1024, window=(40, 400))
    without = write_dicom(tmp_path / "n.dcm", stored, slope=1, intercept=-1024)
    np.testing.assert_array_equal(grey(with_window, "minmax"), own)
    np.testing.assert_array_equal(grey(without, "file"), own)


def test_monochrome1_is_inverted_and_colour_stays_colour(tmp_path):
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8) * 16
    mono1 = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    mono2 = write_dicom(tmp_path / "m2.dcm", stored)
    np.testing.assert_array_equal(grey(mono1), 255 - grey(mono2))
    inverse = write_dicom(tmp_path / "inv.dcm", stored, PresentationLUTShape="INVERSE")
    np.testing.assert_array_equal(grey(inverse), grey(mono1))
    rgb = np.random.default_rng(3).integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    colour = write_dicom(tmp_path / "rgb.dcm", rgb)
    np.testing.assert_array_equal(read_image(colour, 8), rgb)
    with pytest.raises(DataError, match=r"rgb\.dcm is a colour image .*--dicom-window 40,400 is for grey ones"):
        read_image(colour, 8, "40,400")


def test_rle_compressed_pixels_decode_as_the_uncompressed(tmp_path):
    stored = ct_slice(4, shape=(8, 8))
    plain = write_dicom(tmp_path / "plain.dcm", stored, window=(1024, 2000))
    rle = write_dicom(tmp_path / "rle.dcm", stored, window=(1024, 2000), syntax=RLELossless)
    np.testing.assert_array_equal(read_image(rle, 8), read_image(plain, 8))


@pytest.mark.parametrize(
    ("syntax", "pil_format", "save"),
    [("JPEGBaseline8Bit", "JPEG", {"quality": 95}), ("JPEG2000Lossless", "JPEG2000", {"irreversible": False})],
)
def test_jpeg_compressed_pixels_decode(tmp_path, syntax, pil_format, save):
    """JPEG and JPEG 2000 streams in a DICOM file (Pillow's decoders, or pylibjpeg's with the [dicom] extra)."""
    import pydicom.uid
    from pydicom.encaps import encapsulate

    ramp = (np.add.outer(np.arange(32), np.arange(32)) * 4).astype(np.uint8)
    plain = write_dicom(tmp_path / "plain.dcm", ramp)
    ds = pydicom.dcmread(plain)
    stream = io.BytesIO()
    Image.fromarray(ramp).save(stream, format=pil_format, **save)
    ds.PixelData = encapsulate([stream.getvalue()])
    ds.file_meta.TransferSyntaxUID = getattr(pydicom.uid, syntax)
    ds.save_as(tmp_path / "compressed.dcm")
    decoded = read_image(tmp_path / "compressed.dcm", 32).astype(int)
    assert np.abs(decoded - read_image(plain, 32)).max() <= (0 if "2000" in syntax else 8)


def test_files_without_a_suffix_are_found_by_their_mark(tmp_path):
    name = tmp_path / "1.2.840.113619.2.55.1"  # as scanners name them (its "suffix" is ".1")
    write_dicom(name, ct_slice(shape=(6, 6)))
    (tmp_path / "IM0001").write_bytes(b"x" * 200)  # no mark: not an image
    (tmp_path / "notes.txt").write_text("DICM" * 60)
    assert is_image(name) and not is_image(tmp_path / "IM0001") and not is_image(tmp_path / "notes.txt")
    no_preamble = write_dicom(tmp_path / "old.dcm", ct_slice(shape=(6, 6)), preamble=False)
    assert read_image(no_preamble, 6).shape == (6, 6, 3) and image_size(name) == (6, 6)
    # a predicted mask is named after its image without the image's suffix, and a scanner's dotted name whole
    assert [image_stem(Path(n)) for n in ("a.PNG", "b.dcm", name.name)] == ["a", "b", "1.2.840.113619.2.55.1"]


def _truncated(path: Path, keep: float) -> None:
    data = write_dicom(path, ct_slice(shape=(16, 16))).read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: write_dicom(p, ct_slice(shape=(4, 4)), NumberOfFrames=3), r"holds 3 frames .* one file per frame"),
        (lambda p: p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00"), r"bad\.dcm holds no image \(no Pixel Data\)"),
        (lambda p: _truncated(p, 0.6), r"cannot decode the pixel data of DICOM .*bad\.dcm: .*less than expected"),
        (lambda p: p.write_text("not a dicom file at all"), r"cannot read DICOM .*bad\.dcm: not a DICOM file"),
        (
            lambda p: write_dicom(p, ct_slice(shape=(4, 4)), syntax="1.2.840.10008.1.2.4.100"),
            r"bad\.dcm: its pixel data is MPEG2 .*\(1\.2\.840\.10008\.1\.2\.4\.100\); pip install \"ens\[dicom\]\"",
        ),
        (
            lambda p: write_dicom(p, ct_slice(shape=(4, 4)), window=(40, 0.5)),
            r"bad\.dcm: its window .*cannot be applied .*--dicom-window minmax or C,W",
        ),
    ],
    ids=["frames", "header-only", "truncated", "text", "no-decoder", "bad-window"],
)
def test_bad_dicom_is_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "bad.dcm"
    make(path)
    with pytest.raises(DataError, match=message):
        read_image(path, 8)


def test_a_dicom_without_pixels_names_what_it_is(tmp_path):
    path = tmp_path / "sr.dcm"
    ds = pydicom.dcmread(write_dicom(path, ct_slice(shape=(4, 4))))
    del ds.PixelData
    ds.Modality = "SR"
    ds.save_as(path)
    with pytest.raises(DataError, match=r"sr\.dcm holds no image \(no Pixel Data; modality SR"):
        read_image(path, 4)


def test_without_pydicom_a_dicom_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    from ensemble.data.dataset import load

    folder = _dicom_classes(tmp_path / "d", per_class=5)
    monkeypatch.setitem(__import__("sys").modules, "pydicom", None)
    with pytest.raises(
        DataError, match=r"/d/cyst/\S+ is a DICOM file; reading DICOM needs pydicom: pip install \"ens\[dicom\]\""
    ):
        load(f"folder:{folder}", size=8)


def _dicom_classes(root: Path, per_class: int = 6, size: int = 12) -> Path:
    """Two classes of DICOM slices that differ in brightness (so a member can learn them), mixed suffixes."""
    rng = np.random.default_rng(0)
    for c, (cls, base) in enumerate((("cyst", 900), ("mass", 1500))):
        for i in range(per_class):
            stored = (base + rng.integers(-200, 200, size=(size, size))).astype(np.int16)
            name = f"{cls}{i}.dcm" if i % 2 else f"IM{c}{i:03d}"  # half without a suffix
            write_dicom(root / cls / name, stored, slope=1, intercept=-1024, window=(40, 400))
    return root


def _member(members: Path, dataset: str) -> dict:
    return json.loads((members / dataset / "SGD" / "000" / "member.json").read_text())


def test_training_records_the_window_and_predict_applies_it(tmp_path, capsys):
    folder = _dicom_classes(tmp_path / "ct")
    members = tmp_path / "M"
    common = ["--dataset", f"folder:{folder}", "--opt", "sgd", "--n", "1", *TINY, "--members-dir", str(members)]
    assert invoke_main("train", *common) == 0
    assert _member(members, "ct")["recipe"]["dicom"] == {"window": "file"}
    assert invoke_main("train", *common, "--dicom-window", "lung", "--name", "ct_lung") == 0
    lung = _member(members, "ct_lung")
    assert lung["recipe"]["dicom"] == {"window": "-600,1500"}
    assert "--dicom-window -600,1500" in lung["command"]

    # each fold model, applied by `ens predict` to its test images, gives back its stored probabilities:
    # only with the member's own window (lung here; the files' own 40,400 would show other pixels)
    with np.load(members / "ct_lung" / "SGD" / "000" / "fold-1.npz") as z:
        ids, stored = list(z["ids"]), z["probs"]
    assert any((read_image(folder / i, 16) != read_image(folder / i, 16, "-600,1500")).any() for i in ids)
    capsys.readouterr()
    code, out, err = run_cli(
        capsys, "predict", "--dataset", "ct_lung", "SGD1", *[str(folder / i) for i in ids], "--fold", "1",
        "--device", "cpu", "--members-dir", str(members),
    )  # fmt: skip
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out))
    np.testing.assert_allclose(table[["cyst", "mass"]].to_numpy(), stored, atol=1e-4)

    import torch

    from ensemble.prediction import Inputs, StoredMember, member_probs
    from ensemble.store import read_member

    member = StoredMember(read_member(members / "ct_lung" / "SGD" / "000"))

    class UnderTheFilesWindow(StoredMember):
        dicom_window = "file"

    inputs = Inputs(ids, files=[folder / i for i in ids])
    apply = {"device": torch.device("cpu"), "batch_size": 8, "tta": False, "fold": 1}
    np.testing.assert_allclose(member_probs(member, inputs, **apply), stored, atol=1e-4)
    assert np.abs(member_probs(UnderTheFilesWindow(member.member), inputs, **apply) - stored).max() > 1e-3


def test_dicom_window_on_a_dataset_without_dicom_is_refused(tmp_path, capsys):
    from tests.conftest import make_folder

    folder = make_folder(tmp_path / "png", per_class=5)
    code, _, err = run_cli(
        capsys, "train", "--dataset", f"folder:{folder}", "--opt", "sgd", *TINY, "--dicom-window", "40,400",
        "--members-dir", str(tmp_path / "M"),
    )  # fmt: skip
    assert code == 2 and "--dicom-window 40,400" in err and "has no DICOM images" in err
    assert not (tmp_path / "M").exists() or not any((tmp_path / "M").rglob("member.json"))


@pytest.mark.parametrize(
    ("value", "message"),
    [("40", "is not a window"), ("40,0.5", "width must be at least 1"), ("nan,400", "is not a window")],
)
def test_dicom_window_values_are_checked_as_parsed(value, message, capsys):
    code, _, err = run_cli(capsys, "train", "--dataset", "folder:nowhere", "--opt", "sgd", "--dicom-window", value)
    assert code == 2 and message in err and "--dicom-window" in err


def test_segmentation_reads_dicom_images_and_masks(tmp_path):
    from ensemble.data.dataset import load

    root = tmp_path / "seg"
    rng = np.random.default_rng(5)
    (root / "masks").mkdir(parents=True)
    for i in range(6):
        stored = rng.integers(0, 4000, size=(12, 12)).astype(np.uint16)
        name = f"s{i}.dcm" if i < 5 else "s5.1.2.840"  # the last as a scanner names it; its mask s5.1.2.840.png
        write_dicom(root / "images" / name, stored, window=(2000, 4000))
        mask = np.zeros((12, 12), np.uint8)
        mask[2:6, 3 : 3 + i + 1] = 255
        if i % 2:
            Image.fromarray(mask).save(root / "masks" / f"{Path(name).stem if i < 5 else name}.png")
        else:
            write_dicom(root / "masks" / f"s{i}.dcm", mask.astype(np.uint16))
    ds = load(f"seg:{root}", size=12)
    assert ds.dicom == 6 and ds.masks.shape == (6, 12, 12)
    assert [int(m.sum()) for m in ds.masks] == [4 * (i + 1) for i in range(6)]
    np.testing.assert_array_equal(read_mask(root / "masks" / "s0.dcm", 12), ds.masks[0] * 255)

    write_dicom(root / "images" / "s0.dcm", np.zeros((9, 12), np.uint16))  # no longer its mask's size
    with pytest.raises(DataError, match=r"mask \S+s0\.dcm is 12x12 but its image \S+s0\.dcm is 12x9"):
        load(f"seg:{root}", size=12)


def test_an_export_records_the_window(tmp_path, capsys):
    folder = _dicom_classes(tmp_path / "ct", per_class=5)
    members = tmp_path / "M"
    common = ["--dataset", f"folder:{folder}", "--opt", "sgd", "--n", "1", *TINY, "--members-dir", str(members)]
    assert invoke_main("train", *common, "--dicom-window", "bone") == 0
    out = tmp_path / "export"
    code, _, err = run_cli(
        capsys, "export", "--dataset", "ct", "SGD1", "--out", str(out), "--members-dir", str(members)
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["members"][0]["preprocessing"]["dicom_window"] == "400,1800"

    manifest["members"][0]["preprocessing"]["dicom_window"] = "wide"
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "predict", "--from", str(out), str(folder / "cyst" / "cyst1.dcm"))
    assert code != 0 and "preprocessing.dicom_window" in err and "'wide' is not a window" in err
