"""Kept fold models: `ens predict` reproduces stored probabilities, fuses and measures uncertainty;
`ens members` and `ens export` show and ship them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import invoke_main, make_folder, run_cli, tiny

TINY = tiny(2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """An image folder, and a store with DGrad and SGD members (fold models kept) and a Cos1 member without."""
    root = tmp_path_factory.mktemp("pred")
    folder = make_folder(root / "imgs", per_class=6)
    members = root / "M"
    for extra in (["--opt", "dgrad,sgd"], ["--opt", "cos1", "--no-keep-weights"]):
        assert (
            invoke_main(
                "train", "--dataset", f"folder:{folder}", "--n", "1", *TINY, "--members-dir", str(members), *extra
            )
            == 0
        )
    return folder, members


def _table(out: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(out))


def test_one_fold_model_reproduces_its_stored_probabilities(capsys, trained):
    folder, members = trained
    for k in (0, 3):
        with np.load(members / "imgs" / "DGrad" / "000" / f"fold-{k}.npz") as z:
            ids, stored = list(z["ids"]), z["probs"]
        code, out, err = run_cli(
            capsys,
            "predict",
            "--dataset",
            "imgs",
            "DGrad1",
            *[str(folder / i) for i in ids],
            "--fold",
            str(k),
            "--device",
            "cpu",
            "--members-dir",
            str(members),
        )
        assert code == 0, err
        table = _table(out)
        assert list(table["path"]) == [str(folder / i) for i in ids]
        np.testing.assert_allclose(table[["a", "b", "c"]].to_numpy(), stored, atol=1e-3)


def test_fused_rows_follow_the_rule_and_entropy(capsys, trained):
    folder, members = trained
    runs = {}
    for expr in ("DGrad1", "SGD1", "DGrad1+SGD1"):
        code, out, err = run_cli(
            capsys, "predict", "--dataset", "imgs", expr, str(folder), "--members-dir", str(members)
        )
        assert code == 0, err
        runs[expr] = _table(out)
    fused = runs["DGrad1+SGD1"]
    n_images = sum(1 for p in folder.rglob("*") if p.is_file())
    assert len(fused) == n_images and fused["path"].is_unique
    p = fused[["a", "b", "c"]].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-6)
    single = np.stack([runs[e][["a", "b", "c"]].to_numpy() for e in ("DGrad1", "SGD1")])
    np.testing.assert_allclose(p, single.mean(0), atol=1e-6)  # the sum rule of the members' own outputs
    np.testing.assert_allclose(fused["entropy"], -(p * np.log(p)).sum(1), atol=1e-6)
    mean_h = -(single * np.log(single)).sum(2).mean(0)
    np.testing.assert_allclose(fused["mutual_information"], -(p * np.log(p)).sum(1) - mean_h, atol=1e-6)
    agree = (single.argmax(2) == p.argmax(1)).mean(0)
    np.testing.assert_allclose(fused["agreement"], agree)
    assert list(fused["predicted"]) == [["a", "b", "c"][i] for i in p.argmax(1)]


def test_tta_is_flip_invariant(capsys, trained, tmp_path):
    folder, members = trained
    src = next(folder.glob("a/*.png"))
    image = np.asarray(Image.open(src))
    Image.fromarray(image[:, ::-1].copy()).save(tmp_path / "flipped.png")
    Image.fromarray(image[::-1, ::-1].copy()).save(tmp_path / "rotated.png")
    code, out, err = run_cli(
        capsys,
        "predict",
        "--dataset",
        "imgs",
        "DGrad1",
        str(src),
        str(tmp_path / "flipped.png"),
        str(tmp_path / "rotated.png"),
        "--tta",
        "--members-dir",
        str(members),
    )
    assert code == 0, err
    p = _table(out)[["a", "b", "c"]].to_numpy()
    np.testing.assert_allclose(p[1], p[0], atol=1e-5)
    np.testing.assert_allclose(p[2], p[0], atol=1e-5)


def test_member_without_fold_models_is_named(capsys, trained):
    folder, members = trained
    code, out, err = run_cli(
        capsys, "predict", "--dataset", "imgs", "DGrad1+Cos1_1", str(folder), "--members-dir", str(members)
    )
    assert code == 2 and "imgs/Cos1/000" in err and "--no-keep-weights" in err and "Traceback" not in err


def test_bad_inputs_are_named(capsys, trained, tmp_path):
    folder, members = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    for args, words in [
        ([str(broken)], "broken.png"),
        ([str(tmp_path / "nope.png")], "nope.png"),
        ([str(folder), "--fold", "9"], "--fold 9"),
        ([str(folder), "--out", str(tmp_path / "x.txt")], "x.txt"),
        ([str(folder), "--masks", str(tmp_path / "m")], "classification members"),
    ]:
        code, out, err = run_cli(capsys, "predict", "--dataset", "imgs", "DGrad1", *args, "--members-dir", str(members))
        assert code != 0 and words in err and "Traceback" not in err, (args, err)


def test_outputs_json_and_medmnist_test_split(capsys, trained, tmp_path):
    folder, members = trained
    code, out, err = run_cli(
        capsys,
        "predict",
        "--dataset",
        "imgs",
        "SGD1",
        str(folder),
        "--out",
        str(tmp_path / "p.json"),
        "--members-dir",
        str(members),
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "p.json").read_text())
    assert {"path", "a", "b", "c", "predicted", "entropy", "mutual_information", "agreement"} <= set(rows[0])
    rng = np.random.default_rng(0)
    arrays = {
        f"{s}_images": rng.integers(0, 255, (n, 12, 12), dtype=np.uint8)
        for s, n in (("train", 6), ("val", 2), ("test", 5))
    }
    arrays.update({f"{s}_labels": rng.integers(0, 3, n) for s, n in (("train", 6), ("val", 2), ("test", 5))})
    (tmp_path / "d" / "medmnist").mkdir(parents=True)
    np.savez(tmp_path / "d" / "medmnist" / "toymnist.npz", **arrays)
    code, out, err = run_cli(
        capsys,
        "predict",
        "--dataset",
        "imgs",
        "SGD1",
        "medmnist:toymnist",
        "--data-dir",
        str(tmp_path / "d"),
        "--members-dir",
        str(members),
    )
    assert code == 0, err
    assert list(_table(out)["path"]) == [f"medmnist:toymnist/test/{i}" for i in range(5)]


def test_members_json_lists_recipe_hash_and_weights(capsys, trained):
    _, members = trained
    code, out, err = run_cli(capsys, "members", "--format", "json", "--members-dir", str(members))
    assert code == 0, err
    rows = json.loads(out)
    by_label = {r["label"]: r for r in rows}
    assert set(by_label) == {"DGrad", "SGD", "Cos1"}
    for label, row in by_label.items():
        meta = json.loads((members / "imgs" / label / "000" / "member.json").read_text())
        assert row["recipe_hash"] == meta["recipe_hash"] and row["run"] == 0
        assert row["weights"] is (label != "Cos1")
    code, out, err = run_cli(capsys, "members", "--members-dir", str(members))
    assert code == 0 and "DGrad" in out and "none" in out


def test_export_writes_a_self_contained_folder(capsys, trained, tmp_path):
    from ensemble.exporting import onnx_available

    _, members = trained
    out_dir = tmp_path / "ens-export"
    code, out, err = run_cli(
        capsys, "export", "--dataset", "imgs", "DGrad1+SGD1", "--out", str(out_dir), "--members-dir", str(members)
    )
    assert code == 0, err
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["classes"] == ["a", "b", "c"] and manifest["rule"] == "sum"
    assert [m["label"] for m in manifest["members"]] == ["DGrad", "SGD"]
    for m in manifest["members"]:
        assert len(m["folds"]) == 5 and all((out_dir / f).is_file() for f in m["folds"])
        assert m["preprocessing"]["size"] == 16
        if onnx_available():
            assert len(m["onnx"]) == 5 and m["onnx_max_abs_diff"] < 1e-4
    code, out, err = run_cli(
        capsys, "export", "--dataset", "imgs", "DGrad1", "--out", str(out_dir), "--members-dir", str(members)
    )
    assert code == 2 and "already exists" in err


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    """DGrad1+SGD1 exported (with ONNX models when onnx and onnxruntime are installed)."""
    _, members = trained
    out = tmp_path_factory.mktemp("export") / "ens-export"
    assert (
        invoke_main("export", "--dataset", "imgs", "DGrad1+SGD1", "--out", str(out), "--members-dir", str(members)) == 0
    )
    return out


def test_predict_from_export_gives_the_store_rows(capsys, trained, exported):
    folder, members = trained
    code, out, err = run_cli(
        capsys,
        "predict",
        "--dataset",
        "imgs",
        "DGrad1+SGD1",
        str(folder),
        "--device",
        "cpu",
        "--members-dir",
        str(members),
    )
    assert code == 0, err
    store = _table(out)
    code, out, err = run_cli(capsys, "predict", "--from", str(exported), str(folder), "--device", "cpu")
    assert code == 0, err
    got = _table(out)
    assert list(got.columns) == list(store.columns) and list(got["path"]) == list(store["path"])
    assert list(got["predicted"]) == list(store["predicted"])
    numbers = ["a", "b", "c", "entropy", "mutual_information", "agreement"]
    assert np.abs(got[numbers].to_numpy() - store[numbers].to_numpy()).max() < 1e-5
    # the Python API, as the CLI: from_export= and no expression
    from ensemble import api

    table = api.predict(inputs=[folder], from_export=exported, device="cpu")
    assert np.abs(table[numbers].to_numpy() - store[numbers].to_numpy()).max() < 1e-5
    # one fold, and TTA, through the same code
    for extra in (["--fold", "2"], ["--tta"]):
        code, out, err = run_cli(
            capsys, "predict", "--dataset", "imgs", "DGrad1+SGD1", str(folder), *extra, "--members-dir", str(members)
        )
        assert code == 0, err
        want = _table(out)
        code, out, err = run_cli(capsys, "predict", "--from", str(exported), str(folder), *extra)
        assert code == 0, err
        assert np.abs(_table(out)[numbers].to_numpy() - want[numbers].to_numpy()).max() < 1e-5, extra


def test_predict_from_export_with_onnx(capsys, trained, exported):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    folder, members = trained
    code, out, err = run_cli(
        capsys, "predict", "--dataset", "imgs", "DGrad1+SGD1", str(folder), "--members-dir", str(members)
    )
    assert code == 0, err
    store = _table(out)
    code, out, err = run_cli(capsys, "predict", "--from", str(exported), "--engine", "onnx", str(folder))
    assert code == 0, err
    got = _table(out)
    assert list(got["path"]) == list(store["path"])
    assert np.abs(got[["a", "b", "c"]].to_numpy() - store[["a", "b", "c"]].to_numpy()).max() < 1e-5


def test_export_modes_follow_the_umask(trained, tmp_path):
    import os
    import stat

    from ensemble import api

    _, members = trained
    old = os.umask(0o022)
    try:
        out = api.export("SGD1", tmp_path / "e", dataset="imgs", members_dir=members, onnx=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for p in out.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p
    assert not list(tmp_path.glob(".e.*"))  # no staging folder left


def test_predict_from_refuses_a_bad_manifest_in_one_line(capsys, trained, exported, tmp_path):
    import shutil

    folder, _ = trained
    image = str(next(folder.glob("a/*.png")))
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    good = json.loads((exported / "manifest.json").read_text())

    def broken(change) -> dict:  # noqa: ANN001
        manifest = json.loads(json.dumps(good))
        change(manifest)
        return manifest

    cases = [
        (lambda m: m.pop("manifest_version"), "'manifest_version'"),
        (lambda m: m.update(classes=["a"]), "'classes'"),
        (lambda m: m.update(classes=["a", "a", "b"]), "'classes'"),
        (lambda m: m.update(rule="median"), "'rule'"),
        (lambda m: m.update(task="detection"), "'task'"),
        (lambda m: m.update(members=[]), "'members'"),
        (lambda m: m["members"][0]["folds"].__setitem__(0, "../outside.safetensors"), "'members[0].folds[0]'"),
        (lambda m: m["members"][0]["folds"].__setitem__(0, str(outside)), "'members[0].folds[0]'"),
        (lambda m: m["members"][1]["folds"].__setitem__(4, "DGrad/000/model-9.safetensors"), "'members[1].folds[4]'"),
        (lambda m: m["members"][0]["folds"].__setitem__(0, "manifest.json"), "'members[0].folds[0]'"),
        (lambda m: m["members"][0]["preprocessing"].update(size=0), "'members[0].preprocessing.size'"),
        (lambda m: m["members"][0]["preprocessing"].update(size="16"), "'members[0].preprocessing.size'"),
        (lambda m: m["members"][0].update(model="no_such_net"), "'members[0].model'"),
        (lambda m: m["members"][0].update(run=True), "'members[0].run'"),
        (lambda m: m["members"][1].update(label="DGrad", run=0), "'members'"),
    ]
    for i, (change, field) in enumerate(cases):
        d = tmp_path / f"x{i}"
        shutil.copytree(exported, d)
        (d / "manifest.json").write_text(json.dumps(broken(change)))
        code, out, err = run_cli(capsys, "predict", "--from", str(d), image)
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and "Traceback" not in err, (field, err)
        assert str(d / "manifest.json") in lines[0] and field in lines[0], (field, err)
    (d / "manifest.json").write_text("{not json")
    code, out, err = run_cli(capsys, "predict", "--from", str(d), image)
    assert code != 0 and "manifest.json" in err and "JSON" in err
    for args, words in [
        (["--from", str(tmp_path / "nope"), image], "nope"),
        (["--from", str(exported), "--dataset", "imgs", image], "--dataset"),
        (["SGD1", image], "--dataset"),
        (["--dataset", "imgs", "--engine", "onnx", "SGD1", image], "--from"),
        (["--from", str(exported), image, "--fold", "7"], "--fold 7"),
        (["--from", str(exported), image, "--masks", str(tmp_path / "m")], "classification members"),
    ]:
        code, out, err = run_cli(capsys, "predict", *args)
        assert code != 0 and words in err and "Traceback" not in err, (args, err)
