"""``ens predict --from`` a segmentation export writes the masks ``ens predict`` writes from the store."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image

from tests.conftest import run_cli
from tests.test_segmentation import make_seg_folder


def test_masks_from_an_export_equal_the_stores(tmp_path, capsys):
    data = make_seg_folder(tmp_path / "lesions", n=10)
    members = tmp_path / "M"
    args = ["--model", "lighter-unet@16", "--opt", "dgrad", "--n", "2", "--epochs", "1", "--size", "32"]
    code, _, err = run_cli(
        capsys,
        "train",
        "--dataset",
        f"seg:{data}",
        *args,
        "--device",
        "cpu",
        "--no-progress",
        "--members-dir",
        str(members),
    )
    assert code == 0, err
    out = tmp_path / "export"
    code, _, err = run_cli(
        capsys,
        "export",
        "--dataset",
        "lesions",
        "DGrad2",
        "--out",
        str(out),
        "--no-onnx",
        "--members-dir",
        str(members),
    )
    assert code == 0, err
    images = data / "images"
    code, text, err = run_cli(
        capsys,
        "predict",
        "--dataset",
        "lesions",
        "DGrad2",
        str(images),
        "--masks",
        str(tmp_path / "a"),
        "--members-dir",
        str(members),
    )
    assert code == 0, err
    store = pd.read_csv(io.StringIO(text))
    code, text, err = run_cli(capsys, "predict", "--from", str(out), str(images), "--masks", str(tmp_path / "b"))
    assert code == 0, err
    got = pd.read_csv(io.StringIO(text))
    assert list(got["path"]) == list(store["path"]) and len(got) == 10
    numbers = [c for c in store.columns if c not in ("path", "mask")]
    assert np.abs(got[numbers].to_numpy() - store[numbers].to_numpy()).max() < 1e-5
    for a, b in zip(store["mask"], got["mask"]):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), (a, b)
    code, _, err = run_cli(capsys, "predict", "--from", str(out), str(images))
    assert code == 2 and "--masks" in err
