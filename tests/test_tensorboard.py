"""``ens train --log tensorboard``: the fold curves as TensorBoard scalars, the member unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import make_folder, run_ens, tiny

TRAIN = ["--opt", "sgd", "--n", "1"]


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:  # noqa: ANN001
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_scalars_are_the_member_curves(tmp_path):
    pytest.importorskip("tensorboard")
    folder = make_folder(tmp_path / "imgs", per_class=5)
    stores = {}
    for log in ("none", "tensorboard"):
        stores[log] = tmp_path / log
        res = run_ens(
            "train", "--dataset", f"folder:{folder}", *TRAIN, *tiny(3, "--log", log), "--members-dir", str(stores[log])
        )
        assert res.returncode == 0, res.stderr
    run = stores["tensorboard"] / "imgs" / "SGD" / "000"
    meta = json.loads((run / "member.json").read_text())
    plain = json.loads((stores["none"] / "imgs" / "SGD" / "000" / "member.json").read_text())
    # run-only: the same recipe, hash and retrain command, and bit for bit the same predictions
    assert meta["recipe"] == plain["recipe"] and meta["recipe_hash"] == plain["recipe_hash"]
    assert meta["command"] == plain["command"] and "--log" not in meta["command"]
    assert meta["curves"] == plain["curves"]
    for k in range(meta["folds"]):
        with (
            np.load(run / f"fold-{k}.npz") as a,
            np.load(stores["none"] / "imgs" / "SGD" / "000" / f"fold-{k}.npz") as b,
        ):
            assert np.array_equal(a["probs"], b["probs"])
    assert not (stores["none"] / "imgs" / "SGD" / "000" / "tensorboard").exists()
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == [f"fold-{k}" for k in range(meta["folds"])]
    lr = meta["recipe"]["optimizer"].get("lr")
    for k, curves in enumerate(meta["curves"]):
        scalars = _scalars(run / "tensorboard" / f"fold-{k}")
        assert set(scalars) == {"train/loss", "train/accuracy", "train/lr"}
        for key in ("loss", "accuracy"):
            steps, values = zip(*scalars[f"train/{key}"])
            assert list(steps) == list(range(3))
            np.testing.assert_allclose(values, curves[key], rtol=1e-6)  # event files hold float32
        lrs = [v for _, v in scalars["train/lr"]]
        assert len(lrs) == 3 and all(v > 0 for v in lrs)
        if lr is not None:
            np.testing.assert_allclose(lrs, [lr] * 3, rtol=1e-6)  # SGD: the constant rate of the recipe


def test_tensorboard_missing_is_one_line_before_training(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    folder = make_folder(tmp_path / "imgs", per_class=5)
    res = run_ens(
        "train",
        "--dataset",
        f"folder:{folder}",
        *TRAIN,
        *tiny(1, "--log", "tensorboard"),
        "--members-dir",
        str(tmp_path / "M"),
    )
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "--log tensorboard" in lines[0] and "pip install" in lines[0]
    assert not (tmp_path / "M").exists()
