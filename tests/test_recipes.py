"""Recipes and the training options: presets, --config, --set, selection, schedules, stems, reproducible runs."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble.learn.recipe import RECIPE_KEYS, RECIPES, compose_config
from ensemble.learn.trainer import TrainConfig
from tests.conftest import invoke_main, make_folder, run_cli, tiny

TINY = tiny(2, "--no-keep-weights")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("rec") / "imgs", per_class=6)


def _meta(members: Path, label: str, run: int = 0) -> dict:
    return json.loads((members / "imgs" / label / f"{run:03d}" / "member.json").read_text())


def test_set_changes_exactly_the_named_setting(folder, tmp_path):
    members = tmp_path / "M"
    assert (
        invoke_main(
            "train",
            "--dataset",
            f"folder:{folder}",
            "--opt",
            "dgrad,adam",
            *TINY,
            "--members-dir",
            str(members),
            "--set",
            "dgrad.eps=1e-6",
            "--set",
            "betas=[0.8, 0.99]",
        )
        == 0
    )
    dgrad, adam = _meta(members, "DGrad")["recipe"]["optimizer"], _meta(members, "Adam")["recipe"]["optimizer"]
    assert dgrad["eps"] == 1e-6 and adam["eps"] == 1e-8  # dgrad.eps reached DGrad alone
    assert dgrad["betas"] == adam["betas"] == [0.8, 0.99]  # an unprefixed key reaches every optimizer
    assert dgrad["lr"] == adam["lr"] == 1e-3 and dgrad["weight_decay"] == 1e-4


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["--opt", "dgrad", "--set", "dgrad.momentum=0.9"],
            "DGrad has no setting 'momentum'; its settings are lr, betas",
        ),
        (["--opt", "sgd", "--set", "dgrad.lr=0.1"], "DGrad is not among this job's optimizers"),
        (["--opt", "sgd,dgrad", "--set", "nesterov=true"], "DGrad has no setting 'nesterov'"),
        (["--opt", "dgrad", "--set", "lr"], "expected KEY=VALUE"),
        (["--opt", "dgrad", "--set", "lr=fast"], "'fast' is not a finite number"),
        (["--opt", "dgrad", "--set", "lr=.nan"], "not a finite number"),
        (["--opt", "clmr", "--lr", "0.1"], "CLMR does not accept lr"),
        (["--opt", "clmr", "--milestones", "5"], "CLMR sets its learning rate by its own schedule"),
        (["--opt", "sgd", "--recipe", "fast"], "unknown recipe 'fast'"),
        (["--opt", "sgd", "--n", "2", "--run", "1"], "--n and --run exclude each other"),
        (["--opt", "sgd", "--milestones", "9,3"], "increasing"),
    ],
)
def test_bad_settings_fail_before_training(capsys, folder, tmp_path, args, words):
    code, out, err = run_cli(
        capsys, "train", "--dataset", f"folder:{folder}", *TINY, "--members-dir", str(tmp_path / "M"), *args
    )
    assert code == 2 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "M").exists()


def test_recipes_list_every_value(capsys):
    code, out, err = run_cli(capsys, "recipes")
    assert code == 0, err
    assert "paper" in out and "medmnist" in out and "resnet50.tv_in1k" in out
    for key in RECIPE_KEYS:
        assert key in out
    assert RECIPES["medmnist"]["milestones"] == [50, 75] and RECIPES["medmnist"]["batch_size"] == 128


def test_config_file_then_flags_then_set(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("epochs: 7\nbatch_size: 16\nset:\n  dgrad.eps: 1.0e-5\n")
    cfg = compose_config(
        "medmnist", config_file=str(path), explicit={"epochs": 3, "size": None}, sets=["lr=0.5"], labels=["DGrad"]
    )
    assert (cfg.epochs, cfg.batch_size, cfg.size, cfg.stem) == (3, 16, 28, "small")
    assert cfg.optimizer_overrides("DGrad") == {"eps": 1e-5, "lr": 0.5, "weight_decay": 0.0}
    path.write_text("epoch: 7\n")
    with pytest.raises(Exception, match="unknown key.*epoch"):
        compose_config("paper", config_file=str(path), explicit={}, sets=[], labels=["DGrad"])


def test_schedules_give_the_head_factor_one(folder):
    """CLMR's range is the learning rate the paper intended for every layer: the head never gets 20x it."""
    from ensemble.learn.trainer import FoldTrainer
    from ensemble.runs import load_dataset

    ds = load_dataset(f"folder:{folder}", "datasets", TrainConfig(size=16, workers=0), None)
    cfg = TrainConfig(model="test_resnet", size=16, pretrained=False, device="cpu", workers=0, epochs=2)
    assert cfg.head_factor("CLMR") == cfg.head_factor("TASO") == 1.0 and cfg.head_factor("SGD") == 20.0
    for label, peak in (("CLMR", 5e-2), ("SGD", 1e-3 * 20)):
        trainer = FoldTrainer(ds, ds.folds[0], label, cfg, seed=0, checkpoint=Path("unused"))
        _, opt, sched, steps = trainer._make()
        highest = 0.0
        for _ in range(steps * 20):  # CLMR's whole period (c_lr = 20 epochs): its peak is half-way
            highest = max(highest, max(g["lr"] for g in opt.param_groups))
            opt.step()  # no gradients: nothing moves, the schedule advances as in training
            if sched is not None:
                sched.step()
        assert highest == pytest.approx(peak, rel=0.06), label


def test_milestones_multiply_the_rate_by_gamma(folder):
    from ensemble.learn.trainer import FoldTrainer
    from ensemble.runs import load_dataset

    ds = load_dataset(f"folder:{folder}", "datasets", TrainConfig(size=16, workers=0), None)
    cfg = TrainConfig(
        model="test_resnet",
        size=16,
        pretrained=False,
        device="cpu",
        workers=0,
        head_lr_factor=1.0,
        milestones=(2, 4),
        gamma=0.1,
    )
    trainer = FoldTrainer(ds, ds.folds[0], "Adam", cfg, seed=0, checkpoint=Path("unused"))
    _, opt, _, _ = trainer._make()
    rates = []
    for epoch in range(6):
        trainer._set_milestone_lr(opt, epoch)
        rates.append(opt.param_groups[0]["lr"])
    assert rates == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])


def test_small_stem_and_balanced_weights(folder):
    from ensemble.learn.model import create_model
    from ensemble.learn.trainer import FoldTrainer
    from ensemble.runs import load_dataset

    model = create_model("resnet18", 2, pretrained=False, stem="small")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model.forward_features(torch.zeros(1, 3, 28, 28)).shape[-1] == 4  # 28 / 8, not 28 / 32
    ds = load_dataset(f"folder:{folder}", "datasets", TrainConfig(size=16, workers=0), None)
    cfg = TrainConfig(model="test_resnet", size=16, pretrained=False, device="cpu", class_weights="balanced")
    trainer = FoldTrainer(ds, ds.folds[0], "SGD", cfg, seed=0, checkpoint=Path("unused"))
    counts = np.bincount(ds.labels[ds.folds[0].train], minlength=3)
    np.testing.assert_allclose(trainer._loss_weights().numpy(), counts.sum() / (3 * counts), rtol=1e-6)


def test_augment_kinds():
    from ensemble.data.augment import augment_batch

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert augment_batch(x, torch.Generator().manual_seed(0), "none") is x
    flipped = augment_batch(x, torch.Generator().manual_seed(0), "flips")
    for i in range(2):
        assert any(torch.allclose(flipped[i], torch.flip(x[i], d), atol=1e-4) for d in [(), (1,), (2,), (1, 2)])


def test_precision_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert TrainConfig(precision="auto").autocast_dtype(cpu) is None
    assert TrainConfig(precision="auto").autocast_dtype(cuda) == torch.bfloat16
    assert TrainConfig(precision="fp32").autocast_dtype(cuda) is None
    assert TrainConfig(precision="fp16").autocast_dtype(cuda) == torch.float16
    assert TrainConfig(precision="bf16").autocast_dtype(cpu) == torch.bfloat16


def test_selection_on_an_inner_split_and_the_recorded_command_reproduces(folder, tmp_path):
    members = tmp_path / "M"
    args = [
        "train",
        "--dataset",
        f"folder:{folder}",
        "--opt",
        "dgrad",
        *TINY,
        "--epochs",
        "3",
        "--select",
        "best-val-loss",
        "--val-fraction",
        "0.2",
        "--members-dir",
        str(members),
        "--run",
        "2",
    ]
    assert invoke_main(*args) == 0
    meta = _meta(members, "DGrad", 2)
    assert [p.name for p in (members / "imgs" / "DGrad").iterdir() if not p.name.startswith(".")] == ["002"]
    assert all(len(c["val_score"]) == 3 and 1 <= c["selected_epoch"][0] <= 3 for c in meta["curves"])
    assert meta["recipe"]["select"] == "best-val-loss" and meta["recipe"]["val_fraction"] == 0.2
    command = shlex.split(meta["command"])
    assert command[:2] == ["ens", "train"] and "--run" in command and "2" in command
    again = tmp_path / "again"
    assert invoke_main(*command[1:], "--members-dir", str(again), "--no-keep-weights") == 0
    for k in range(meta["folds"]):
        with (
            np.load(members / "imgs" / "DGrad" / "002" / f"fold-{k}.npz") as a,
            np.load(again / "imgs" / "DGrad" / "002" / f"fold-{k}.npz") as b,
        ):
            np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-4)
    assert _meta(again, "DGrad", 2)["recipe_hash"] == meta["recipe_hash"]


def test_a_member_that_learnt_nothing_is_flagged(folder, tmp_path):
    from ensemble.runs import load_dataset
    from ensemble.store import Store
    from ensemble.tasks import get_task

    ds = load_dataset(f"folder:{folder}", "datasets", TrainConfig(size=16, workers=0), None)
    rd = Store(tmp_path / "M").run_dir("imgs", "SGD", 0)
    tested = np.concatenate([f.test for f in ds.folds])  # held out: each sample by the fold that did not train on it
    rate = np.bincount(ds.labels[tested]).max() / len(tested)
    fitted = [{"curves": {"accuracy": [0.99]}} for _ in ds.folds]  # training accuracy is never the judge
    learnt_nothing = get_task("classification").learnt_nothing
    nothing, why = learnt_nothing(ds, rd, fitted, {"accuracy": 0.30})  # 3 nearly balanced classes: rate ~1/3
    assert nothing and f"majority-class rate {rate:.4f}" in why and "test-fold accuracy 0.3000" in why
    assert learnt_nothing(ds, rd, fitted, {"accuracy": 0.9}) == (False, "")


# ----------------------------------------------------------------- one typed declaration
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("yaml_text", "key", "words"),
    [
        ("lr: .nan\n", "lr", "is not a finite number"),
        ("weight_decay: .nan\n", "weight_decay", "is not a finite number"),
        ("batch_size: true\n", "batch_size", "is not a valid integer"),
        ("head_lr_factor: -1\n", "head_lr_factor", "must be greater than 0"),
        ("batch_size: ten\n", "batch_size", "is not a valid integer"),
        ("batch_size: 2.5\n", "batch_size", "is not a valid integer"),
        ("batch_size: 1\n", "batch_size", "x>=2"),
        ("milestones: 'oops'\n", "milestones", "is not a comma-separated list of epochs"),
        ("milestones: [5, 3]\n", "milestones", "increasing"),
        ("val_fraction: .nan\n", "val_fraction", "is not a finite number"),
        ("augment: sideways\n", "augment", "sideways"),
        ("epochs: null\n", "epochs", "needs a value"),
        ("epochs: [1, 2]\n", "epochs", "one value is expected"),
        ("epochs: 3\nepochs: 4\n", "epochs", "is given twice"),
        ("set:\n  lr: 0.1\n  lr: 0.2\n", "lr", "is given twice"),
        ("set:\n  sgd.momentum: -5\n", "momentum", "must be at least 0"),
        ("set:\n  - sgd.momentum=1\n", "momentum", "must be less than 1"),
    ],
)
def test_a_bad_config_value_is_refused_with_its_key_and_file(capsys, tmp_path, yaml_text, key, words):
    """A YAML value gets its flag's check, before any work: exit 2, one line naming the file and the key."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml_text)
    members = tmp_path / "M"
    code, out, err = run_cli(
        capsys, "train", "--dataset", "digits", "--opt", "sgd", "--config", str(path), "--members-dir", str(members)
    )
    assert code == 2, err
    assert str(path) in err and key in err and words in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not members.exists()


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (["sgd.momentum=-5"], "momentum: '-5' must be at least 0"),
        (["sgd.momentum=1"], "must be less than 1"),
        (["sgd.lr=[1,2]"], "lr: [1, 2] is a list; one value is expected"),
        (["sgd.lr=0"], "lr: '0' must be greater than 0"),
        ([".lr=1"], "no optimizer before '.'"),
        (["sgd.=1"], "no setting name"),
        (["weight_decay=0.1", "weight_decay=0"], "weight_decay is given twice"),
        (["sgd.lr=0.1", "SGD.lr=0.2"], "SGD.lr is given twice"),
        (["adam.betas=[0.9, 1.5]"], "betas: '1.5' must be less than 1"),
        (["adam.betas=[0.9]"], "not a pair of numbers"),
        (["adam.eps=0"], "eps: '0' must be greater than 0"),
        (["cos1.period=2.5"], "period: '2.5' is not a valid integer"),
        (["sgd.nesterov=2"], "nesterov"),
        (["clmr.c_lr=0"], "c_lr"),
        (["taso.final_lr=-1"], "final_lr: '-1' must be at least 0"),
    ],
)
def test_a_bad_set_value_is_refused_with_its_key(capsys, tmp_path, sets, words):
    members = tmp_path / "M"
    args = [a for item in sets for a in ("--set", item)]
    code, out, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "digits",
        "--opt",
        "sgd,adam,cos1,clmr,taso",
        *args,
        "--members-dir",
        str(members),
    )
    assert code == 2 and words in err and "Traceback" not in err, err
    assert not members.exists()


def test_config_values_are_converted_as_their_flags_and_keep_their_form(tmp_path):
    from ensemble.recipe import compose_config

    path = tmp_path / "r.yaml"
    # YAML 1.1 reads 1e-3 as text: the flag's type reads it as the number a user means
    path.write_text("lr: 1e-3\nmilestones: [3, 5]\npretrained: false\nweight_decay: 0\nset:\n  betas: [0, 0.99]\n")
    cfg = compose_config("paper", config_file=str(path), explicit={}, sets=[], labels=["Adam"])
    assert cfg.lr == 0.001 and cfg.milestones == (3, 5) and cfg.pretrained is False
    # a number keeps the form it was written in, so recipes written from YAML before keep their hash
    assert cfg.weight_decay == 0 and isinstance(cfg.weight_decay, int)
    assert cfg.overrides == {"*": {"betas": (0, 0.99)}} and isinstance(cfg.overrides["*"]["betas"][0], int)


def test_the_declaration_drives_presets_config_and_flags():
    from ensemble.cli import train
    from ensemble.recipe import OPTION, OPTIONS, PRESETS

    names = [o.name for o in OPTIONS]
    assert [f.name for f in dataclasses.fields(TrainConfig)] == [*names, "overrides"]
    assert list(RECIPES) == list(PRESETS) and all(list(RECIPES[p]) == list(RECIPE_KEYS) for p in PRESETS)
    run_only = {o.name for o in OPTIONS if not o.identity}
    assert run_only == {
        "device",
        "workers",
        "threads",
        "keep_weights",
        "checkpoint_every",
        "log",
        "memory_format",
        "cpu_isa",
    }
    for preset, values in RECIPES.items():
        for key, value in values.items():  # every preset value passes its own flag's check
            checked = OPTION[key].check(value)
            assert checked == (tuple(value) if isinstance(value, list) else value), (preset, key)
    assert TrainConfig() == TrainConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in RECIPES["paper"].items()}
    )
    flags = {p.name for p in train.params}
    assert set(names) <= flags


def test_the_recorded_command_gives_back_the_config(tmp_path):
    """Every identity option set away from its default, written by train_command, parsed by `ens train`."""
    from ensemble.cli import parse_train_args
    from ensemble.recipe import OPTIONS, train_command

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    cfg = TrainConfig(
        model="resnet18",
        pretrained=True,  # with --weights (--no-pretrained is what every committed member records)
        size=64,
        epochs=7,
        batch_size=12,
        lr=3e-4,
        head_lr_factor=2.5,
        weight_decay=0.0,
        augment="flips",
        normalise="half",
        stem="small",
        select="best-val-loss",
        val_fraction=0.25,
        milestones=(2, 5),
        gamma=0.5,
        class_weights="balanced",
        precision="fp32",
        loss="ce",
        plateau=0,
        weights=str(weights),
        device="cpu",
        threads=3,
        overrides={"*": {"betas": (0.8, 0.99), "fused": False}, "DGrad": {"eps": 1e-6}},
    )
    command = train_command(
        spec="digits", data_dir="datasets", label="DGrad@v1", run=4, cfg=cfg, name="d", device="cpu", threads=3
    )
    job, again = parse_train_args(shlex.split(command)[2:])
    assert (job["opt"], job["runs"], job["variant"], job["name"]) == (["DGrad"], (4,), "v1", "d")
    for option in OPTIONS:
        if option.identity or option.name in ("device", "threads"):
            assert getattr(again, option.name) == getattr(cfg, option.name), option.name
    assert again.optimizer_overrides("DGrad") == cfg.optimizer_overrides("DGrad")


def _committed_members() -> list[Path]:
    return sorted(ROOT.glob("members/*/*/*/member.json"))


@pytest.mark.skipif(not _committed_members(), reason="no committed members")
def test_every_committed_member_recipe_and_hash_come_back_from_its_command():
    """The stored recipe and its hash survive the one declaration: each committed member's recorded command,
    parsed by `ens train` and built against a stand-in of its dataset, gives the same recipe and hash."""
    from types import SimpleNamespace

    from ensemble.cli import parse_train_args
    from ensemble.recipe import build_recipe
    from ensemble.store import recipe_hash

    for path in _committed_members():
        meta = json.loads(path.read_text())
        recorded = meta["recipe"]["dataset"]
        ds = SimpleNamespace(
            task=recorded.get("task", "classification"),
            fingerprint=recorded["fingerprint"],
            protocol=recorded["protocol"],
            folds=[None] * recorded["folds"],
            classes=recorded["classes"],
            dicom=int("dicom" in meta["recipe"]),  # any DICOM image: the recipe says how they were windowed
        )
        job, cfg = parse_train_args(shlex.split(meta["command"])[2:])
        label = job["opt"][0] + (f"@{job['variant']}" if job["variant"] else "")
        assert label == path.parent.parent.name, path  # Label or Label@variant
        recipe = build_recipe(cfg, job["opt"][0], ds)
        assert recipe == meta["recipe"], path
        assert recipe_hash(recipe) == meta["recipe_hash"], path


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["optimizers"],
        ["recipes"],
        ["train", "--dataset", "digits", "--opt", "nosuch"],
        ["train", "--dataset", "digits", "--opt", "sgd", "--set", "sgd.momentum=-5"],
        ["train", "--dataset", "digits", "--opt", "sgd", "--config", "bad.yaml"],
        ["train", "--dataset", "digits", "--opt", "clmr", "--lr", "0.1"],
        ["train", "--dataset", "digits", "--opt", "sgd", "--loss", "dice"],
    ],
)
def test_help_listings_and_usage_errors_import_no_torch(tmp_path, args):
    """A fresh process (what a user's typo costs is the process's start): no torch, timm or numba."""
    import os
    import subprocess
    import sys

    (tmp_path / "bad.yaml").write_text("batch_size: ten\n")
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('HEAVY', sorted(m for m in ('torch', 'timm', 'numba') if m in sys.modules)))\n"
        f"sys.argv = ['ens', *{args!r}]\n"
        "from ensemble.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    assert res.returncode == (0 if args[0] in ("--help", "optimizers", "recipes") else 2), res.stderr
    assert res.stdout.strip().splitlines()[-1] == "HEAVY []", res.stdout[-500:]
