"""The member trainer end to end, on tiny images, through the real CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED, make_folder, run_ens, tiny

TINY = tiny(1)


def ens(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``ens ARGS`` in this process: the kill and lock tests below run real processes."""
    return run_ens(*args, cwd=cwd)


def complete_runs(label_dir: Path) -> list[Path]:
    return sorted(p for p in label_dir.iterdir() if not p.name.startswith(".") and (p / "member.json").exists())


def check_members(members: Path, folder: Path, n: int) -> None:
    runs = complete_runs(members / folder.name / "DGrad")
    assert len(runs) == n
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    for run in runs:
        meta = json.loads((run / "member.json").read_text())
        ids, rows = [], []
        for k in range(meta["folds"]):
            with np.load(run / f"fold-{k}.npz") as z:
                ids += z["ids"].tolist()
                rows.append(z["probs"])
        probs = np.concatenate(rows)
        assert sorted(ids) == files  # every sample exactly once, ids are the files
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert probs.dtype == np.float32 and probs.shape[1] == 3
        assert meta["label"] == "DGrad" and meta["fingerprint"] and len(meta["fold_seconds"]) == meta["folds"]


@pytest.mark.slow
def test_train_folder_two_members(image_folder, tmp_path):
    members = tmp_path / "M"
    res = ens(
        "train",
        "--dataset",
        f"folder:{image_folder}",
        "--opt",
        "dgrad",
        "--n",
        "2",
        "--model",
        "resnet18",
        "--epochs",
        "1",
        "--size",
        "32",
        "--no-pretrained",
        "--device",
        "cpu",
        "--members-dir",
        str(members),
        "--workers",
        "0",
    )
    assert res.returncode == 0, res.stderr
    check_members(members, image_folder, 2)
    assert "accuracy" in res.stdout
    # no --threads: a local job gives each fold every core it may use, and the run's command says how many
    from ensemble.executors.pools import usable_cores

    meta = json.loads((members / image_folder.name / "DGrad" / "000" / "member.json").read_text())
    assert meta["command"].endswith(f"--threads {usable_cores()}") and meta["fold_threads"][0] == usable_cores()
    same = [
        "--model",
        "resnet18",
        "--epochs",
        "1",
        "--size",
        "32",
        "--no-pretrained",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
    ]
    again = ens(
        "train",
        "--dataset",
        f"folder:{image_folder}",
        "--opt",
        "DGrad",
        "--n",
        "2",
        *same,
        "--members-dir",
        str(members),
    )
    assert again.returncode == 0 and "nothing to train" in again.stdout


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path):
    folder = make_folder(tmp_path / "imgs", per_class=10)
    members = tmp_path / "M"
    args = [
        sys.executable,
        "-m",
        "ensemble.cli",
        "train",
        "--dataset",
        f"folder:{folder}",
        "--opt",
        "dgrad",
        "--n",
        "2",
        "--model",
        "test_resnet",
        "--epochs",
        "3",
        "--size",
        "16",
        "--no-pretrained",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
        "--checkpoint-every",
        "0",
        "--members-dir",
        str(members),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    label_dir = members / folder.name / "DGrad"
    deadline = time.time() + 120
    # wait until some fold work is staged, then kill without warning
    while (
        time.time() < deadline
        and not list(label_dir.glob(".*.staging/fold-*"))
        and not list(label_dir.glob(".*.staging/scratch/*.ckpt"))
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(complete_runs(label_dir)) < 2  # killed mid-run: not everything done
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    check_members(members, folder, 2)
    assert not list(label_dir.glob(".*.staging"))  # nothing partial left visible or hidden


def test_truncated_image_names_the_file(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    bad = folder / "b" / "b0.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    res = ens(
        "train",
        "--dataset",
        f"folder:{folder}",
        "--opt",
        "sgd",
        "--n",
        "1",
        *TINY,
        "--members-dir",
        str(tmp_path / "M"),
    )
    assert res.returncode != 0
    assert str(bad) in res.stderr and "Traceback" not in res.stderr


def test_unknown_opt_lists_valid_names(image_folder, tmp_path):
    res = ens("train", "--dataset", f"folder:{image_folder}", "--opt", "rmsprop", "--n", "1", *TINY)
    assert res.returncode == 2
    for name in ["SGD", "Adam", "diffGrad", "DGrad", "Cos1", "Cos2", "CLMR", "TASO"]:
        assert name in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_weights_offline_error_names_both_ways_out(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = ens(
        "train",
        "--dataset",
        f"folder:{image_folder}",
        "--opt",
        "sgd",
        "--n",
        "1",
        "--model",
        "resnet18",
        "--epochs",
        "1",
        "--size",
        "16",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
        "--members-dir",
        str(tmp_path / "M"),
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "--weights PATH" in res.stderr and "--no-pretrained" in res.stderr


def test_local_weights_are_loaded(tmp_path):
    import timm
    import torch

    from ensemble.learn.model import create_model

    src = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    model = create_model("test_resnet", 3, weights=path)
    torch.testing.assert_close(next(model.parameters()), next(src.parameters()))
    assert model.get_classifier().out_features == 3


def test_two_processes_never_train_the_same_run(tmp_path):
    from ensemble.store import Store

    store = Store(tmp_path / "M")
    with store.try_lock("d", "SGD") as first:
        assert first
        code = (
            "from ensemble.store import Store; import sys\n"
            f"with Store({str(tmp_path / 'M')!r}).try_lock('d', 'SGD') as got: sys.exit(0 if got else 3)"
        )
        assert subprocess.run([sys.executable, "-c", code]).returncode == 3
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # released: free again


@pytest.mark.skipif(not (SHARED / "lar_fold3").exists(), reason="shared LAR data absent")
def test_real_lar_fold_scans_and_decodes():
    from ensemble.data.dataset import load

    ds = load(f"folder:{SHARED / 'lar_fold3'}", size=32)
    assert ds.classes == ["Hbv", "He", "IPCL", "Le"]
    assert len(ds) == 440 and ds.images.shape == (440, 32, 32, 3)
    assert sorted(np.bincount(ds.labels).tolist()) == [110] * 4
    assert len(ds.folds) == 5 and sorted(np.concatenate([f.test for f in ds.folds]).tolist()) == list(range(440))


@pytest.mark.skipif(not (SHARED / "medmnist" / "breastmnist.npz").exists(), reason="shared MedMNIST absent")
def test_real_medmnist_official_split(tmp_path):
    import shutil

    from ensemble.data.dataset import load

    (tmp_path / "medmnist").mkdir()
    shutil.copy(SHARED / "medmnist" / "breastmnist.npz", tmp_path / "medmnist")
    ds = load("medmnist:breastmnist", data_dir=tmp_path, size=28)
    fold = ds.folds[0]
    assert (len(fold.train), len(fold.val), len(fold.test)) == (546, 78, 156)
    assert ds.warnings == []  # the official counts
    assert ds.images.shape[1:] == (28, 28, 3)


def test_medmnist_labels_shaped_n_by_1_accepted(tmp_path):
    from ensemble.data.dataset import load

    rng = np.random.default_rng(0)
    (tmp_path / "medmnist").mkdir()
    arrays = {}
    for split, n in [("train", 20), ("val", 6), ("test", 8)]:
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 3, (n, 1))
    np.savez(tmp_path / "medmnist" / "toymnist.npz", **arrays)
    ds = load("medmnist:toymnist", data_dir=tmp_path, size=16)
    assert ds.labels.shape == (34,) and ds.name == "medmnist-toymnist"


def test_sixteen_bit_scaled_by_own_range(tmp_path):
    from PIL import Image

    from ensemble.data.images import read_image

    arr = np.full((10, 10), 1000, np.uint16)
    arr[0, 0] = 3000
    Image.fromarray(arr).save(tmp_path / "x.tif")
    img = read_image(tmp_path / "x.tif", 10)
    assert img.shape == (10, 10, 3) and img[0, 0, 0] == 255 and img[5, 5, 1] == 0


def test_fold_folders_and_missing_class(tmp_path):
    from ensemble.data.dataset import load
    from ensemble.errors import DataError

    for f in ["f1", "f2", "f3"]:
        make_folder(tmp_path / "lar" / f, classes=("He", "Le"), per_class=3, seed=hash(f) % 100)
    ds = load(f"folder:{tmp_path / 'lar'}", size=16)
    assert [f.name for f in ds.folds] == ["f1", "f2", "f3"] and ds.protocol == "predefined"
    import shutil

    shutil.rmtree(tmp_path / "lar" / "f2" / "Le")
    with pytest.raises(DataError, match="f2"):
        load(f"folder:{tmp_path / 'lar'}", size=16)


def test_fetch_from_local_http_server(tmp_path):
    import functools
    import hashlib
    import http.server
    import threading
    import zipfile

    from ensemble.data.catalog import Source, resolve
    from ensemble.data.fetch import fetch

    served = tmp_path / "served"
    make_folder(served / "src" / "BG", classes=("g1", "g2"), per_class=2)
    archive = served / "bg.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in (served / "src").rglob("*"):
            z.write(p, p.relative_to(served / "src"))
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/bg.zip"
        ref = resolve("bg", tmp_path / "data")
        path = fetch(ref, source=Source(url, f"sha256:{sha}", "bg.zip"))
        assert sorted(p.name for p in path.iterdir()) == ["g1", "g2"]
        ref2 = resolve("bg", tmp_path / "data2")
        from ensemble.errors import DataError

        with pytest.raises(DataError, match="checksum mismatch"):
            fetch(ref2, source=Source(url, "sha256:" + "0" * 64, "bg.zip"))
        assert not ref2.path.exists()
    finally:
        server.shutdown()


def test_fetch_offline_is_one_clear_line(tmp_path):
    res = ens("data", "fetch", "lar", "--data-dir", str(tmp_path), "--url", "http://127.0.0.1:9/lar.zip")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert str(tmp_path / "lar") in res.stderr and "by hand" in res.stderr


@pytest.mark.parametrize("kind", ["none", "flips", "paper"])
def test_batched_augmentation_does_what_the_spec_says(image_folder, tmp_path, kind):
    """The one classification path: each training image is its normalised self (none), one of its four
    flips (flips), or a flip zoomed in by x/y factors in [1, 2] (paper: the centre pixel is kept)."""
    import torch

    from ensemble.data.dataset import load
    from ensemble.learn.infer import nchw
    from ensemble.learn.trainer import FoldTrainer, TrainConfig

    ds = load(f"folder:{image_folder}", size=17, cache_dir=tmp_path)
    cfg = TrainConfig(model="test_resnet", size=17, device="cpu", augment=kind, pretrained=False, batch_size=6)
    trainer = FoldTrainer(ds, ds.folds[0], "SGD", cfg, seed=0, checkpoint=tmp_path / "c.pt")
    batches, seeds = trainer._epoch_plan(0)
    images = nchw(np.array(ds.images))
    gen = torch.Generator().manual_seed(int(seeds[0]))
    for idx, (x, y) in zip(batches, trainer._image_batches(images, torch.from_numpy(ds.labels), batches, gen)):
        source = trainer._normalise(images[torch.from_numpy(idx)])
        assert torch.equal(y, torch.from_numpy(ds.labels[idx]))
        for out, src in zip(x, source):
            views = [src, src.flip(-1), src.flip(-2), src.flip(-1).flip(-2)]
            if kind == "paper":  # a zoom about the centre keeps the centre pixel (odd size)
                assert min(float((out[:, 8, 8] - v[:, 8, 8]).abs().max()) for v in views) < 1e-4
            elif kind == "flips":
                assert min(float((out - v).abs().max()) for v in views) < 1e-4
            else:
                assert torch.equal(out, src)


@pytest.mark.parametrize("every", [0.0, 3600.0])
def test_resume_after_an_interrupt_gives_the_same_fold(image_folder, tmp_path, every):
    """Checkpoints are written at most every --checkpoint-every seconds (0: after each epoch but the last);
    a run stopped after an epoch resumes from the last save, or from the start when there was none, and
    ends with the same predictions bit for bit as a run never stopped."""
    from ensemble.data.dataset import load
    from ensemble.learn.trainer import FoldTrainer, TrainConfig

    ds = load(f"folder:{image_folder}", size=16, cache_dir=tmp_path)
    cfg = TrainConfig(
        model="test_resnet",
        epochs=3,
        size=16,
        device="cpu",
        pretrained=False,
        batch_size=6,
        workers=0,
        threads=1,
        keep_weights=False,
        checkpoint_every=every,
    )
    whole = FoldTrainer(ds, ds.folds[0], "DGrad", cfg, seed=3, checkpoint=tmp_path / "whole.pt").run()
    assert not (tmp_path / "whole.pt").exists() or every == 0

    class Stop(Exception):
        pass

    def stop_after_second_epoch(epoch: int, loss: float, acc: float) -> None:
        if epoch == 1:
            raise Stop

    ckpt = tmp_path / "stopped.pt"
    with pytest.raises(Stop):
        FoldTrainer(ds, ds.folds[0], "DGrad", cfg, seed=3, checkpoint=ckpt, on_epoch=stop_after_second_epoch).run()
    assert ckpt.exists() == (every == 0)
    starts = []
    resumed = FoldTrainer(ds, ds.folds[0], "DGrad", cfg, seed=3, checkpoint=ckpt, on_start=starts.append).run()
    assert starts == [2 if every == 0 else 0]
    assert np.array_equal(resumed.probs, whole.probs)
    assert resumed.curves["loss"] == whole.curves["loss"]


def test_classification_task_loss_hits_and_validation_by_hand():
    """The trainer's classification questions: weighted cross-entropy as written out by hand, hits as images
    whose top logit is their class, and the validation (score, loss) as NLL and AUC."""
    import torch

    from ensemble.tasks import get_task

    task = get_task("classification")
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.5, 0.0], [0.0, 0.0, 4.0]])
    y = torch.tensor([0, 2, 0, 1])
    weights = torch.tensor([4 / (3 * 2), 4 / (3 * 1), 4 / (3 * 1)])  # n / (C n_c) of y
    w = weights[y]
    by_hand = -(w * logits.log_softmax(1)[torch.arange(4), y]).sum() / w.sum()
    loss = task.loss(logits, y, name="ce", class_weights=weights)
    assert torch.allclose(loss, by_hand) and torch.equal(loss, torch.nn.functional.cross_entropy(logits, y, weights))
    assert torch.equal(
        task.loss(logits, y, name="ce", class_weights=None), torch.nn.functional.cross_entropy(logits, y)
    )
    with pytest.raises(ValueError, match="classification takes ce"):
        task.loss(logits, y, name="dice", class_weights=None)
    assert int(task.hits(logits, y)) == 2 and task.loss_name("auto") == "ce" and task.loss_name("ce") == "ce"

    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1], [0.1, 0.3, 0.6]], np.float32)
    labels = np.array([0, 2, 1, 1])
    nll = -np.mean(np.log([0.8, 0.6, 0.4, 0.3]))
    score, loss = task.validation(probs, labels, loss="ce", select="best-val-loss")
    assert loss == pytest.approx(nll, rel=1e-6) and score == -loss
    score, loss = task.validation(probs, labels, loss="ce", select="best-val-auc")
    assert 0 < score <= 1 and loss == pytest.approx(nll, rel=1e-6)
    ds = type("DS", (), {"labels": np.array([2, 0, 1, 1])})()
    assert task.targets(ds, np.array([3, 0])).tolist() == [1, 2]


def test_tasks_import_no_torch():
    """The CLI reads ensemble.tasks to answer usage errors before torch is imported (a fresh interpreter)."""
    code = "import sys, ensemble.tasks; assert 'torch' not in sys.modules, 'torch imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
