"""Shared fixtures: tiny image folders in every layout, hand-made member stores."""

from __future__ import annotations

from ensemble import portable

# the pins `ens train` sets, set before this process loads numpy, torch or numba: tests that train in-process
# (and the processes they start) run the kernels a fresh `ens train` runs, on any x86-64 machine
portable.apply("avx2")

import contextlib
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Decoded-dataset cache in a temporary folder, never the user's."""
    monkeypatch.setenv("ENS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def make_folder(root: Path, classes=("a", "b", "c"), per_class=6, seed=0) -> Path:
    """PNG and JPEG, grey and RGB, of varying sizes, one folder per class."""
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(12, 40, 2)
            base = 60 * ci
            if i % 3 == 0:
                Image.fromarray((rng.integers(0, 60, (h, w)) + base).astype(np.uint8)).save(root / c / f"{c}{i}.png")
            elif i % 3 == 1:
                arr = (rng.integers(0, 60, (h, w, 3)) + base).astype(np.uint8)
                Image.fromarray(arr).save(root / c / f"{c}{i}.JPG", format="JPEG")
            else:
                arr = (rng.integers(0, 60, (h, w, 3)) + base).astype(np.uint8)
                Image.fromarray(arr).save(root / c / f"{c}{i}.jpeg", format="JPEG")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "imgs")


def write_member(
    root: Path,
    dataset: str,
    label: str,
    run: int,
    probs: list[np.ndarray],
    labels: list[np.ndarray],
    ids: list[list[str]],
    classes: list[str],
    fingerprint: str = "fp0",
) -> Path:
    """A member laid out exactly as SPEC §5 says, written by hand (not by ens)."""
    d = root / dataset / label / f"{run:03d}"
    d.mkdir(parents=True)
    for k, (p, y, i) in enumerate(zip(probs, labels, ids)):
        np.savez(
            d / f"fold-{k}.npz", probs=np.asarray(p, np.float32), labels=np.asarray(y, np.int64), ids=np.asarray(i)
        )
    meta = {
        "dataset": dataset,
        "label": label,
        "run": run,
        "fingerprint": fingerprint,
        "classes": classes,
        "folds": len(probs),
        "optimizer": {"name": label},
        "seed": [0],
        "model": "hand",
        "epochs": 0,
    }
    (d / "member.json").write_text(json.dumps(meta))
    return d


def stage_run(folder: Path, members: Path, *, label: str = "DGrad", run: int = 0, **cfg_kw) -> Path:
    """A run staged (started, not finished) under the recipe of ``cfg_kw``, as a killed `ens train` leaves it."""
    from ensemble.learn.recipe import build_recipe
    from ensemble.learn.trainer import TrainConfig
    from ensemble.plan import prepare_run
    from ensemble.runs import load_dataset
    from ensemble.store import Store

    cfg = TrainConfig(**{"model": "test_resnet", "pretrained": False, "device": "cpu", "workers": 0, **cfg_kw})
    ds = load_dataset(f"folder:{folder}", "datasets", cfg, None)
    rd = Store(members).run_dir(ds.name, label, run)
    rd.label_dir.mkdir(parents=True, exist_ok=True)
    prepare_run(rd, build_recipe(cfg, label, ds), folds=len(ds.folds), restart=False)
    return rd.staging


def tiny(epochs: int = 1, *extra: str) -> list[str]:
    """The `ens train` flags of a tiny, fast CPU member (timm's test_resnet at 16 px, no download), ``extra``
    appended: the one place the tests spell them."""
    return [
        "--model",
        "test_resnet",
        "--epochs",
        str(epochs),
        "--size",
        "16",
        "--no-pretrained",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
        *extra,
    ]


def run_ens(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``ens ARGS`` in this process, through the console entry point, as a finished process would report it
    (exit code, stdout, stderr): for tests where no process boundary is under test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            here = os.getcwd()
            os.chdir(cwd)
            stack.callback(os.chdir, here)
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        code = invoke_main(*args)
    return subprocess.CompletedProcess(["ens", *args], code, out.getvalue(), err.getvalue())


def invoke_main(*args: str) -> int:
    """``ens ARGS`` in this process, through the console entry point (its error handling included)."""
    import sys

    from ensemble.cli import main

    argv, sys.argv = sys.argv, ["ens", *args]
    try:
        main()
        return 0
    except SystemExit as exit_:
        return exit_.code or 0
    finally:
        sys.argv = argv


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """:func:`invoke_main` with what it printed: (exit code, stdout, stderr)."""
    code = invoke_main(*args)
    out, err = capsys.readouterr()
    return code, out, err


def env_without_coverage() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env
