"""Segmentation (SPEC §7): the seed's U-Nets, image/mask folders, training, the store's maps, fusion
metrics computed by hand, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ensemble.learn.unet import PAPER_PARAMETERS as TABLE_2  # the paper's Table 2, kept once
from tests.conftest import SHARED, run_cli


@pytest.mark.parametrize("name", list(TABLE_2))
def test_parameter_counts_equal_the_papers_table_2(name):
    from ensemble.learn.model import create_model

    model = create_model(name, 1)  # no --no-pretrained needed: they have no ImageNet weights
    assert sum(p.numel() for p in model.parameters()) == TABLE_2[name]
    out = model.eval()(torch.zeros(2, 3, 37, 45))  # odd sizes are padded back to the input's
    assert out.shape == (2, 1, 37, 45)


def test_unknown_group_size_lists_the_valid_ones():
    from ensemble.errors import UsageError
    from ensemble.learn.model import create_model

    with pytest.raises(UsageError, match="1, 2, 4, 8, 16, 32, 64, 128"):
        create_model("lighter-unet@3", 1)


def make_seg_folder(root: Path, n: int = 15, seed: int = 0, size: tuple[int, int] = (40, 48)) -> Path:
    """Bright discs (the lesion, mask 255) on dark noise; one mask per image, same name and size."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        img = rng.integers(0, 80, (h, w), dtype=np.uint8)
        disk = (yy - rng.integers(8, h - 8)) ** 2 + (xx - rng.integers(8, w - 8)) ** 2 < rng.integers(4, 8) ** 2
        img[disk] += 120
        Image.fromarray(img).save(root / "images" / f"case{i:02d}.png")
        Image.fromarray((disk * 255).astype(np.uint8)).save(root / "masks" / f"case{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two DGrad members of lighter-unet@16 on a tiny folder, as a user would train them."""
    from tests.conftest import invoke_main

    root = tmp_path_factory.mktemp("seg")
    data = make_seg_folder(root / "lesions")
    members = root / "M"
    code = invoke_main(
        "train",
        "--dataset",
        f"seg:{data}",
        "--model",
        "lighter-unet@16",
        "--opt",
        "dgrad",
        "--n",
        "2",
        "--epochs",
        "1",
        "--size",
        "32",
        "--device",
        "cpu",
        "--members-dir",
        str(members),
        "--no-progress",
        "--workers",
        "0",
    )
    assert code == 0
    return data, members


def test_train_leaves_two_complete_members_with_one_map_per_image(trained):
    data, members = trained
    runs = sorted((members / "lesions" / "DGrad").iterdir())
    assert [r.name for r in runs if not r.name.startswith(".")] == ["000", "001"]
    for run in ("000", "001"):
        meta = json.loads((members / "lesions" / "DGrad" / run / "member.json").read_text())
        assert meta["task"] == "segmentation" and meta["classes"] == ["background", "foreground"]
        assert meta["recipe"]["model"] == "lighter-unet@16" and meta["recipe"]["weights"] == "none"
        ids = []
        for k in range(5):
            with np.load(members / "lesions" / "DGrad" / run / f"fold-{k}.npz") as z:
                assert z["probs"].dtype == np.float16 and z["probs"].shape[1:] == (2, 32, 32)
                assert z["masks"].dtype == np.uint8 and z["masks"].shape == (len(z["ids"]), 32, 32)
                np.testing.assert_allclose(z["probs"].astype(np.float32).sum(1), 1, atol=2e-3)
                ids += list(z["ids"])
        assert sorted(ids) == sorted(p.name for p in (data / "images").iterdir())  # every image once


def _dice_by_hand(members_dir: Path, runs: list[str]) -> float:
    maps, masks = {}, {}
    for run in runs:
        for k in range(5):
            with np.load(members_dir / "lesions" / "DGrad" / run / f"fold-{k}.npz") as z:
                for i, name in enumerate(z["ids"]):
                    maps.setdefault(name, []).append(z["probs"][i].astype(np.float64))
                    masks[name] = z["masks"][i]
    dices = []
    for name, ps in maps.items():
        pred, truth = np.mean(ps, axis=0).argmax(0) == 1, masks[name] == 1
        total = pred.sum() + truth.sum()
        dices.append(1.0 if total == 0 else 2 * (pred & truth).sum() / total)
    return float(np.mean(dices))


def test_fuse_json_dice_equals_the_dice_computed_by_hand(trained, capsys):
    _, members = trained
    code, out, _ = run_cli(
        capsys, "fuse", "--members-dir", str(members), "--dataset", "lesions", "DGrad2", "--format", "json"
    )
    assert code == 0
    row = json.loads(out)[0]
    assert {"dice", "iou", "hd95"} <= set(row)
    assert row["dice"] == pytest.approx(_dice_by_hand(members, ["000", "001"]), abs=1e-9)


def test_report_of_segmentation_members_regenerates_identically(trained, tmp_path, capsys):
    _, members = trained
    for out in (tmp_path / "a", tmp_path / "b"):
        assert run_cli(capsys, "report", "--members-dir", str(members), "--out", str(out))[0] == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert {"lesions/table1.md", "lesions/table2.md", "lesions/overlays.png", "lesions/dice_vs_size.png"} <= {
        str(f) for f in files
    }
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    table1 = (tmp_path / "a" / "lesions" / "table1.md").read_text()
    assert "2700757" in table1  # the parameter count of lighter-unet@16


def _train_args(data: Path, members: Path) -> list[str]:
    return [
        "train",
        "--dataset",
        f"seg:{data}",
        "--model",
        "lighter-unet@1",
        "--opt",
        "adam",
        "--epochs",
        "1",
        "--size",
        "16",
        "--device",
        "cpu",
        "--members-dir",
        str(members),
        "--no-progress",
    ]


def test_a_mask_of_another_size_is_one_line_naming_the_file(tmp_path, capsys):
    data = make_seg_folder(tmp_path / "d", n=6)
    bad = data / "masks" / "case03.png"
    Image.fromarray(np.zeros((41, 48), np.uint8)).save(bad)
    code, out, err = run_cli(capsys, *_train_args(data, tmp_path / "M"))
    assert code != 0 and "Traceback" not in err
    assert str(bad) in err and "41" in err
    assert not (tmp_path / "M").exists()


@pytest.mark.parametrize("fault", ["missing", "unreadable", "colour"])
def test_a_missing_or_unreadable_mask_names_the_file(tmp_path, capsys, fault):
    data = make_seg_folder(tmp_path / "d", n=6)
    bad = data / "masks" / "case02.png"
    if fault == "missing":
        bad.unlink()
        named = data / "images" / "case02.png"
    elif fault == "unreadable":
        bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        named = bad
    else:
        rgb = np.zeros((40, 48, 3), np.uint8)
        rgb[..., 0] = 255
        Image.fromarray(rgb).save(bad)
        named = bad
    code, _, err = run_cli(capsys, *_train_args(data, tmp_path / "M"))
    assert code != 0 and "Traceback" not in err and str(named) in err


def test_an_image_mask_folder_given_as_folder_points_to_seg(tmp_path, capsys):
    data = make_seg_folder(tmp_path / "d", n=6)
    code, _, err = run_cli(
        capsys,
        "train",
        "--dataset",
        f"folder:{data}",
        "--opt",
        "adam",
        "--no-pretrained",
        "--members-dir",
        str(tmp_path / "M"),
    )
    assert code != 0 and f"seg:{data}" in err


def test_label_map_masks_give_one_class_per_value(tmp_path):
    from ensemble.data.dataset import load

    data = make_seg_folder(tmp_path / "d", n=6)
    for i, path in enumerate(sorted((data / "masks").iterdir())):
        mask = (np.asarray(Image.open(path)) > 0).astype(np.uint8) * (1 + i % 3)
        Image.fromarray(mask).save(path)
    ds = load(f"seg:{data}", size=16, cache_dir=tmp_path / "cache")
    assert ds.classes == ["background", "class 1", "class 2", "class 3"]
    assert set(np.unique(ds.masks)) == {0, 1, 2, 3} and ds.masks.shape == (6, 16, 16)


def test_dice_iou_and_hd95_against_hand_computed_cases():
    from ensemble.fusion.segmentation import hd95, overlap

    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = np.zeros((20, 20), bool)
    b[5:10, 7:12] = True  # the same square moved 2 pixels right
    assert overlap(a, b) == pytest.approx((2 * 15 / 50, 15 / 35))
    assert hd95(a, b) == pytest.approx(2.0)
    empty = np.zeros((20, 20), bool)
    assert overlap(empty, empty) == (1.0, 1.0) and hd95(empty, empty) == 0.0
    assert overlap(a, empty) == (0.0, 0.0) and hd95(a, empty) == pytest.approx(np.hypot(20, 20))


def test_soft_dice_loss_by_hand():
    from ensemble.learn.losses import segmentation_loss

    logits = torch.tensor([[[[0.0, 100.0], [-100.0, 0.0]]]])  # foreground p = 0.5, 1, 0, 0.5
    masks = torch.tensor([[[0, 1], [0, 1]]])
    inter, total = 0.0 + 1.0 + 0.0 + 0.5, (0.5 + 1 + 0 + 0.5) + 2
    assert float(segmentation_loss(logits, masks, "dice")) == pytest.approx(1 - (2 * inter + 1) / (total + 1))


@pytest.mark.skipif(not (SHARED / "busi").is_dir(), reason="../shared/data/busi not present")
def test_busi_loads_with_its_masks(tmp_path):
    from ensemble.data.dataset import load

    ds = load(f"seg:{SHARED / 'busi'}", size=16, cache_dir=tmp_path)
    assert len(ds) == 647 and ds.classes == ["background", "foreground"] and 0.02 < ds.masks.mean() < 0.3


def _stored_maps(members: Path, run: str, k: int) -> dict[str, np.ndarray]:
    with np.load(members / "lesions" / "DGrad" / run / f"fold-{k}.npz") as z:
        return {name: z["probs"][i].astype(np.float32) for i, name in enumerate(z["ids"])}


def test_predict_writes_masks_that_fold_models_reproduce_from_the_store(trained, tmp_path, capsys):
    """Fold 1's models of both members, on fold 1's test images: the written masks (at each image's own
    40x48 size) are the argmax of the stored maps' mean, resized; the table's areas are the masks'."""
    data, members = trained
    stored = [_stored_maps(members, run, 1) for run in ("000", "001")]
    names = sorted(stored[0])
    inputs = [str(data / "images" / n) for n in names]
    out = tmp_path / "masks"
    code, table, err = run_cli(
        capsys,
        "predict",
        "--members-dir",
        str(members),
        "--dataset",
        "lesions",
        "DGrad2",
        *inputs,
        "--fold",
        "1",
        "--masks",
        str(out),
        "--device",
        "cpu",
    )
    assert code == 0, err
    import io

    import pandas as pd

    rows = pd.read_csv(io.StringIO(table))
    assert list(rows.columns) == ["path", "mask", "area:foreground", "entropy", "agreement"]
    for name, (_, row) in zip(names, rows.iterrows()):
        written = np.asarray(Image.open(out / name))
        assert written.shape == (40, 48) and set(np.unique(written)) <= {0, 255}
        mean = torch.from_numpy((stored[0][name] + stored[1][name])[None] / 2)
        expected = torch.nn.functional.interpolate(mean, size=(40, 48), mode="bilinear", align_corners=False)[0]
        expected = expected.argmax(0).numpy() * 255
        assert (written == expected).mean() > 0.99  # the store keeps float16 maps: ties may tip
        assert row["mask"] == str(out / name) and row["path"] == str(data / "images" / name)
        assert row["area:foreground"] == pytest.approx((written == 255).mean())
        assert 0.5 <= row["agreement"] <= 1 and row["entropy"] >= 0


def test_predict_masks_refuses_what_would_be_lost_or_unclear(trained, tmp_path, capsys):
    data, members = trained
    base = ["predict", "--members-dir", str(members), "--dataset", "lesions", "DGrad1", "--device", "cpu"]
    code, _, err = run_cli(capsys, *base, str(data / "images"))
    assert code != 0 and "--masks DIR" in err and "Traceback" not in err
    out = tmp_path / "masks"
    out.mkdir()
    (out / "case03.png").write_bytes(b"mine")
    code, _, err = run_cli(capsys, *base, str(data / "images"), "--masks", str(out))
    assert code != 0 and str(out / "case03.png") in err and "overwrite" in err
    assert (out / "case03.png").read_bytes() == b"mine" and len(list(out.iterdir())) == 1  # nothing written
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "case04.png").write_bytes((data / "images" / "case04.png").read_bytes())
    code, _, err = run_cli(
        capsys, *base, str(data / "images" / "case04.png"), str(twin / "case04.png"), "--masks", str(tmp_path / "other")
    )
    assert code != 0 and "would both write" in err and not (tmp_path / "other").exists()
    code, _, err = run_cli(capsys, *base, f"seg:{data}", "--masks", str(tmp_path / "all"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(p.name for p in (data / "images").iterdir())


def test_export_of_segmentation_members_says_how_maps_are_fused(trained, tmp_path, capsys):
    _, members = trained
    out = tmp_path / "lesions-ensemble"
    code, _, err = run_cli(
        capsys,
        "export",
        "--members-dir",
        str(members),
        "--dataset",
        "lesions",
        "DGrad2",
        "--out",
        str(out),
        "--no-onnx",
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "segmentation" and "per pixel" in manifest["fusion"]
    for entry in manifest["members"]:
        assert all((out / f).is_file() for f in entry["folds"]) and len(entry["folds"]) == 5


def test_over_ask_hint_is_the_recorded_recipe_with_n(trained, capsys):
    """`ens fuse` asking for more members than exist prints the command that trains the rest under the
    recipe of those there: the recorded command without --run, with --n and the store."""
    import shlex

    data, members = trained
    code, _, err = run_cli(capsys, "fuse", "--members-dir", str(members), "--dataset", "lesions", "DGrad4")
    assert code == 2 and "2 exist" in err
    hint = shlex.split(err.strip().splitlines()[-1])
    assert hint[:4] == ["ens", "train", "--dataset", f"seg:{data}"] and "--run" not in hint
    assert hint[hint.index("--model") + 1] == "lighter-unet@16" and hint[hint.index("--size") + 1] == "32"
    assert hint[-4:] == ["--n", "4", "--members-dir", str(members)]


def test_unet_weights_load_from_a_state_dict_or_safetensors_and_a_wrong_file_is_named(tmp_path):
    """--weights for a U-Net: a torch state dict, or a float16 .safetensors as ens keeps fold models."""
    from safetensors.torch import save_file

    from ensemble.errors import EnsError
    from ensemble.learn.model import create_model

    torch.manual_seed(0)
    source = create_model("lighter-unet@1", 1)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.manual_seed(1)
    loaded = create_model("lighter-unet@1", 1, weights=tmp_path / "w.pt").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    half = create_model("lighter-unet@1", 1, weights=tmp_path / "w.safetensors").state_dict()
    assert all(
        half[k].dtype == v.dtype and torch.equal(half[k], v.half().to(v.dtype) if v.is_floating_point() else v)
        for k, v in state.items()
    )
    with pytest.raises(EnsError, match="cannot load weights .*w.pt into lighter-unet@4"):
        create_model("lighter-unet@4", 1, weights=tmp_path / "w.pt")


def test_segmentation_task_hits_loss_and_validation_by_hand():
    """The trainer's segmentation questions: a positive logit of a 1-channel map is foreground (else the top
    channel), the loss is 1 - soft Dice written out by hand, and validation scores the probability maps."""
    import torch

    from ensemble.tasks import get_task
    from ensemble.learn.losses import class_probabilities

    task = get_task("segmentation")
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])  # (1, 1, 2, 2): foreground where > 0
    masks = torch.tensor([[[1, 1], [0, 0]]])
    assert int(task.hits(logits, masks)) == 2  # (0, 0) right, (0, 1) missed, (1, 0) false, (1, 1) right
    two = torch.tensor([[[[0.0, 3.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 2.0]]]])  # argmax [[1, 0], [0, 1]]
    assert int(task.hits(two, masks)) == 2

    fg = torch.sigmoid(logits[0, 0])
    dice = (2 * (fg * masks[0]).sum() + 1) / (fg.sum() + masks[0].sum() + 1)
    loss = task.loss(logits, masks, name="dice", class_weights=torch.ones(2))  # no class weights for Dice
    assert torch.allclose(loss, 1 - dice) and task.loss_name("auto") == "dice"
    with pytest.raises(ValueError, match="dice or bce-dice"):
        task.loss(logits, masks, name="ce", class_weights=None)

    probs = class_probabilities(logits).numpy()
    score, val_loss = task.validation(probs, masks.numpy().astype(np.uint8), loss="dice", select="best-val-loss")
    assert val_loss == pytest.approx(float(1 - dice), rel=1e-6) and score == -val_loss
    ds = type("DS", (), {"masks": np.arange(8, dtype=np.uint8).reshape(2, 2, 2)})()
    assert task.targets(ds, np.array([1])).tolist() == [[[4, 5], [6, 7]]]


def test_a_resumed_segmentation_fold_equals_an_uninterrupted_one(tmp_path):
    """The U-Nets' dropout draws from torch's global generator: the checkpoint carries it, so a fold stopped
    after its second epoch and resumed ends bit for bit as a fold never stopped."""
    from ensemble.data.dataset import load
    from ensemble.learn.trainer import FoldTrainer, TrainConfig

    ds = load(f"seg:{make_seg_folder(tmp_path / 'd', n=10)}", size=16, cache_dir=tmp_path / "cache")
    cfg = TrainConfig(
        model="lighter-unet@4",
        epochs=3,
        size=16,
        device="cpu",
        pretrained=False,
        batch_size=4,
        workers=0,
        threads=1,
        keep_weights=False,
        checkpoint_every=0,
        loss="dice",
        augment="flips",
        plateau=0,
    )
    whole = FoldTrainer(ds, ds.folds[0], "Adam", cfg, seed=5, checkpoint=tmp_path / "whole.pt").run()

    class Stop(Exception):
        pass

    def stop_after_second_epoch(epoch: int, loss: float, acc: float) -> None:
        if epoch == 1:
            raise Stop

    ckpt = tmp_path / "stopped.pt"
    with pytest.raises(Stop):
        FoldTrainer(ds, ds.folds[0], "Adam", cfg, seed=5, checkpoint=ckpt, on_epoch=stop_after_second_epoch).run()
    starts = []
    resumed = FoldTrainer(ds, ds.folds[0], "Adam", cfg, seed=5, checkpoint=ckpt, on_start=starts.append).run()
    assert starts == [2]
    assert resumed.curves["loss"] == whole.curves["loss"]
    assert np.array_equal(resumed.probs, whole.probs)
