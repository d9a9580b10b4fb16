"""``ens demo``: real medical images shipped with ens, everything inside one fresh folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED, run_cli


def test_the_shipped_breastmnist_is_the_official_file_with_its_attribution():
    from ensemble.demo import DATA_DIR

    shipped = DATA_DIR / "medmnist" / "breastmnist.npz"
    with np.load(shipped) as z:
        assert {k: z[k].shape[0] for k in z.files if k.endswith("_labels")} == {
            "train_labels": 546,
            "val_labels": 78,
            "test_labels": 156,
        }
    assert "CC BY 4.0" in (DATA_DIR / "README.md").read_text()
    local = SHARED / "medmnist" / "breastmnist.npz"
    if local.exists():
        assert shipped.read_bytes() == local.read_bytes()


def test_demo_refuses_a_folder_that_holds_something(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, out, err = run_cli(capsys, "demo", "--out", "mine")
    assert code == 2 and "mine" in err and "fresh" in err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_demo_writes_only_into_its_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENS_CACHE_DIR")  # the demo must not need it: its cache is inside its folder
    code, out, err = run_cli(capsys, "demo", "--out", "out", "--n", "1", "--threads", "1")
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    out_dir = tmp_path / "out"
    assert sorted(p.name for p in out_dir.iterdir()) == ["cache", "members", "reports"]
    for label in ("SGD", "Adam", "DGrad"):
        meta = json.loads((out_dir / "members" / "medmnist-breastmnist" / label / "000" / "member.json").read_text())
        assert meta["recipe"]["model"] == "test_resnet" and meta["recipe"]["size"] == 28
    assert (out_dir / "reports" / "medmnist-breastmnist" / "index.html").is_file()
    assert "accuracy [95% CI]" in out and "honest" in out and str(Path("out") / "reports") in out
