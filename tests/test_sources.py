"""The registry of dataset sources: one parser, one resolved spec per dataset argument."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ensemble.data import sources
from ensemble.data.sources import (
    SOURCES,
    DatasetRef,
    SourceKind,
    listed,
    register,
    resolve,
    resolve_prefixed,
    spec_for,
    valid_forms,
)
from ensemble.errors import UsageError
from tests.conftest import make_folder


def make_seg(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 14), dtype=np.uint8)).save(root / "images" / f"c{i}.png")
        mask = np.zeros((12, 14), np.uint8)
        mask[2:6, 3 : 6 + i % 4] = 255
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    return root


@pytest.mark.parametrize(
    "text, name, task, kind",
    [
        ("hela", "hela", "classification", "catalogue"),
        ("LAR", "lar", "classification", "catalogue"),
        ("bg", "bg", "classification", "catalogue"),
        ("digits", "digits", "classification", "catalogue"),
        ("medmnist:breastmnist", "medmnist-breastmnist", "classification", "medmnist"),
        ("medmnist:BloodMNIST", "medmnist-bloodmnist", "classification", "medmnist"),
        ("folder:some/where/My Images", "My_Images", "classification", "folder"),
        ("seg:../lesions", "lesions", "segmentation", "seg"),
    ],
)
def test_each_kind_parses_to_its_name_task_and_absolute_path(text, name, task, kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref = resolve(text, "datasets")
    assert (ref.name, ref.task, ref.kind.name, ref.spec) == (name, task, kind, text)
    if text == "digits":
        assert ref.path is None and ref.given_path is None and ref.present
    else:
        assert ref.path.is_absolute() and ref.path == ref.given_path.resolve()
    if kind == "catalogue" and text != "digits":
        assert ref.path == tmp_path / "datasets" / name and ref.given_path == Path("datasets") / name
    if kind == "medmnist":
        assert ref.path == tmp_path / "datasets" / "medmnist" / f"{name.removeprefix('medmnist-')}.npz"


def test_a_ref_is_frozen_and_resolving_it_again_is_itself():
    ref = resolve("folder:/data/x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.name = "y"  # type: ignore[misc]
    assert resolve(ref) is ref


@pytest.mark.parametrize("prefix", ["folder", "seg"])
def test_relative_paths_become_absolute_for_workers_and_stay_as_typed_for_commands(prefix, tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    text = f"{prefix}:../shared/data/busi"
    ref = resolve(text)
    assert ref.spec == text  # recorded retrain commands stay portable
    assert ref.absolute_spec == f"{prefix}:{tmp_path / 'shared' / 'data' / 'busi'}"
    assert ref.path == tmp_path / "shared" / "data" / "busi"
    again = resolve(ref.absolute_spec)  # what a worker in another cwd parses
    monkeypatch.chdir(tmp_path)
    assert (again.name, again.path, again.task) == (ref.name, ref.path, ref.task)
    assert resolve(again.absolute_spec).absolute_spec == ref.absolute_spec


def test_home_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve("seg:~/lesions").path == tmp_path / "lesions"


def test_names_are_spelled_as_written_for_workers():
    for text in ("hela", "medmnist:BreastMNIST", "digits"):
        assert resolve(text).absolute_spec == text


@pytest.mark.parametrize(
    "text, words",
    [
        ("folder:", ["folder:", "needs a path"]),
        ("seg:", ["seg:", "needs a path"]),
        ("medmnist:", ["medmnist:", "needs a name", "breastmnist"]),
        ("medmnist:bad name", ["medmnist:bad name", "is not a MedMNIST name", "breastmnist"]),
        ("medmnist:../../X", ["medmnist:../../X", "is not a MedMNIST name"]),
        ("nosuch", ["'nosuch'", "hela, bg, lar, digits, medmnist:NAME, folder:PATH, seg:PATH"]),
        ("nope:x", ["'nope:x'", "folder:PATH"]),
    ],
)
def test_a_bad_spec_is_one_usage_error_naming_it_and_what_is_valid(text, words):
    with pytest.raises(UsageError) as err:
        resolve(text)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_the_store_name_back_to_a_dataset_argument():
    assert spec_for("medmnist-bloodmnist") == "medmnist:bloodmnist"
    assert spec_for("hela") == "hela"
    assert spec_for("lar_fold3") == "lar_fold3"  # a folder's: no way to know its path


def test_store_names_and_valid_forms_match_the_old_parser():
    # the old forms first, in their order; the manifest and the bare path (issue 23) after them
    assert valid_forms() == "hela, bg, lar, digits, medmnist:NAME, folder:PATH, seg:PATH, csv:PATH, PATH"
    assert resolve("folder:/x/.hidden..set").name == "hidden_set"
    assert resolve("folder:/").name == "folder"


def test_data_list_rows(tmp_path):
    (tmp_path / "medmnist").mkdir()
    (tmp_path / "medmnist" / "toymnist.npz").write_bytes(b"")
    rows = listed(tmp_path)
    assert rows[:4] == [("hela", True), ("bg", True), ("lar", True), ("digits", True)]
    assert ("medmnist:breastmnist", True) in rows and ("medmnist:pathmnist", False) in rows
    assert rows[-1] == ("medmnist:toymnist", False)


def test_only_prefixed_text_is_a_dataset_for_predict(tmp_path):
    assert resolve_prefixed("hela") is None  # a file or folder named hela
    assert resolve_prefixed(str(tmp_path / "a:b.png")) is None
    assert resolve_prefixed("seg:/x").images_folder == Path("/x/images")
    assert resolve_prefixed("folder:/x").images_folder is None
    with pytest.raises(UsageError, match="folder:"):
        resolve_prefixed("folder:")


def test_absolute_spec_for_workers_treats_seg_as_folder(tmp_path, monkeypatch):
    def _absolute_spec(spec: str) -> str:
        return resolve(spec).absolute_spec

    monkeypatch.chdir(tmp_path)
    assert _absolute_spec("folder:rel/imgs") == f"folder:{tmp_path / 'rel' / 'imgs'}"
    assert _absolute_spec("seg:rel/lesions") == f"seg:{tmp_path / 'rel' / 'lesions'}"
    assert _absolute_spec("medmnist:breastmnist") == "medmnist:breastmnist"
    assert _absolute_spec("lar") == "lar"


@pytest.mark.parametrize("prefix", ["folder", "seg"])
def test_a_relative_spec_and_its_absolute_spelling_load_the_same_dataset(prefix, tmp_path, monkeypatch):
    from ensemble.data.dataset import load

    data = make_folder(tmp_path / "d" / "imgs") if prefix == "folder" else make_seg(tmp_path / "d" / "imgs")
    monkeypatch.chdir(tmp_path / "d")
    here = load(f"{prefix}:imgs", size=16, cache_dir=tmp_path / "cache")
    absolute = resolve(f"{prefix}:imgs").absolute_spec
    monkeypatch.chdir(tmp_path)  # a worker elsewhere
    there = load(absolute, size=16, cache_dir=tmp_path / "cache")
    assert here.spec == f"{prefix}:imgs" and there.spec == f"{prefix}:{data}"
    assert (here.name, here.fingerprint, here.task) == (there.name, there.fingerprint, there.task)
    assert np.array_equal(here.images, there.images)
    assert len(list((tmp_path / "cache" / "decoded").iterdir())) == (1 if prefix == "folder" else 2)  # one entry


def test_predict_ids_of_a_folder_keep_the_users_spelling(tmp_path, monkeypatch):
    from ensemble.prediction import collect_inputs

    make_folder(tmp_path / "imgs", per_class=2)
    make_seg(tmp_path / "les", n=2)
    monkeypatch.chdir(tmp_path)
    got = collect_inputs(["folder:imgs", "seg:les"], Path("datasets"))
    assert got.ids[:2] == ["imgs/a/a0.png", "imgs/a/a1.JPG"]
    assert got.ids[-2:] == ["les/images/c0.png", "les/images/c1.png"]
    assert all(f.is_file() for f in got.files)


def test_a_new_kind_is_one_registered_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SOURCES", dict(SOURCES))
    from ensemble.data.scan import Listing, scan

    def parse(kind, text, argument, data_dir):  # noqa: ANN001, ANN202
        path = Path(argument).resolve()
        info = dataclasses.replace(resolve("folder:/x").info, name=path.stem, layout="csv")
        return DatasetRef(kind, text, f"lines:{path}", path.stem, kind.task, path, Path(argument), info)

    def scan_csv(ref):  # noqa: ANN001, ANN202
        rows = ref.path.read_text().split()
        return Listing(rows, np.zeros(len(rows), np.int64), ["x"])

    # csv: is a registered kind now (issue 23); a new one is still one entry
    kind = register(SourceKind("lines", ("lines:PATH",), "classification", parse, scan_csv))
    (tmp_path / "m.csv").write_text("a\nb\n")
    ref = resolve(f"lines:{tmp_path / 'm.csv'}")
    assert ref.kind is kind and ref.name == "m" and scan(ref).ids == ["a", "b"]
    assert valid_forms().endswith("seg:PATH, csv:PATH, PATH, lines:PATH")
    with pytest.raises(ValueError, match="registered already"):
        register(kind)
    with pytest.raises(ValueError, match="task"):
        register(dataclasses.replace(kind, name="ml", task="multi-label?"))


def test_the_old_import_path_still_resolves():
    from ensemble.data.catalog import resolve as old

    assert old is resolve
