"""The store keeps its promises: recipes are identity, resume is safe, readers check what they read."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ensemble.errors import EnsError, StoreError, UsageError
from ensemble.fusion import parse
from ensemble.fusion.expr import ExpressionError
from ensemble.store import Store, check_name, recipe_hash
from tests.conftest import make_folder, run_cli, stage_run, tiny, write_member

cli = run_cli

TINY = tiny(1)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) and the hash of its bytes."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("data") / "imgs", per_class=5)


def train(capsys, folder: Path, members: Path, *extra: str, n: int = 1) -> tuple[int, str, str]:
    return cli(
        capsys,
        "train",
        "--dataset",
        f"folder:{folder}",
        "--opt",
        "dgrad",
        "--n",
        str(n),
        *TINY,
        "--members-dir",
        str(members),
        *extra,
    )


# --------------------------------------------------------------------------- recipe identity
@pytest.mark.parametrize(
    ("change", "field"),
    [
        (["--epochs", "2"], "epochs: 1 -> 2"),
        (["--lr", "0.01"], "optimizer.lr: 0.001 -> 0.01"),
        (["--size", "24"], "size: 16 -> 24"),
        (["--model", "resnet10t"], "model: test_resnet -> resnet10t"),
    ],
)
def test_changed_setting_is_refused_naming_the_field(capsys, folder, tmp_path, change, field):
    members = tmp_path / "M"
    assert train(capsys, folder, members, n=2)[0] == 0
    before = snapshot(members)
    args = list(TINY)
    i = args.index(change[0]) if change[0] in args else None
    if i is not None:
        args[i + 1] = change[1]
    else:
        args += change
    code, out, err = cli(
        capsys,
        "train",
        "--dataset",
        f"folder:{folder}",
        "--opt",
        "dgrad",
        "--n",
        "2",
        *args,
        "--members-dir",
        str(members),
    )
    assert code == 1 and "nothing to train" not in out
    assert field in err and "--variant" in err and "Traceback" not in err
    assert snapshot(members) == before  # the old members' files are unchanged, nothing added


def test_variant_is_trained_apart_and_fused(capsys, folder, tmp_path):
    members = tmp_path / "M"
    assert train(capsys, folder, members)[0] == 0
    before = snapshot(members / "imgs" / "DGrad")
    code, out, err = cli(
        capsys,
        "train",
        "--dataset",
        f"folder:{folder}",
        "--opt",
        "dgrad",
        "--n",
        "1",
        *TINY[:2],
        "--epochs",
        "2",
        *TINY[4:],
        "--members-dir",
        str(members),
        "--variant",
        "long",
    )
    assert code == 0, err
    assert snapshot(members / "imgs" / "DGrad") == before
    meta = json.loads((members / "imgs" / "DGrad@long" / "000" / "member.json").read_text())
    assert meta["variant"] == "long" and meta["recipe"]["epochs"] == 2 and meta["schema_version"] == 2
    assert meta["recipe_hash"] == recipe_hash(meta["recipe"])
    code, out, err = cli(
        capsys,
        "fuse",
        "--dataset",
        "imgs",
        "DGrad1+DGrad@long1",
        "DGrad@long(1)",
        "--members-dir",
        str(members),
        "--format",
        "json",
    )
    assert code == 0, err
    rows = json.loads(out)
    assert [r["expression"] for r in rows] == ["DGrad1+DGrad@long1", "DGrad@long1"]
    assert rows[0]["members"] == 2
    code, out, err = cli(capsys, "report", "--members-dir", str(members), "--out", str(tmp_path / "R"))
    assert code == 0, err
    table1 = (tmp_path / "R" / "imgs" / "table1.md").read_text()
    assert "DGrad@long" in table1 and meta["recipe_hash"][:8] in table1


def test_expressions_with_variants_parse():
    assert [(t.label, t.count) for t in parse("SGD14+DGrad@long7+Cos1_7")] == [
        ("SGD", 14),
        ("DGrad@long", 7),
        ("Cos1", 7),
    ]
    assert [(t.label, t.count) for t in parse("DGrad@v2_7 + Cos1@fast-2(3)")] == [("DGrad@v2", 7), ("Cos1@fast-2", 3)]
    for bad, words in [
        ("DGrad@7", "variant name"),
        ("DGrad@long", "member count"),
        ("SGD²", "member count"),
        ("SGD" + "9" * 5000, "digits"),
    ]:
        with pytest.raises(ExpressionError, match=words):
            parse(bad)


# --------------------------------------------------------------------------- safe resume
def test_resume_with_another_batch_size_is_refused_then_restarted(capsys, folder, tmp_path):
    members = tmp_path / "M"
    staging = stage_run(folder, members, epochs=1, size=16, batch_size=30)
    (staging / "fold-0.npz").write_bytes(b"a fold of the old recipe")  # must never be reused
    code, out, err = train(capsys, folder, members, "--batch-size", "8")
    assert code == 1 and "batch_size: 30 -> 8" in err and "--restart" in err
    assert not (members / "imgs" / "DGrad" / "000").exists()
    code, out, err = train(capsys, folder, members, "--batch-size", "8", "--restart")
    assert code == 0, err
    meta = json.loads((members / "imgs" / "DGrad" / "000" / "member.json").read_text())
    assert meta["recipe"]["batch_size"] == 8
    stale = list((members / "imgs" / "DGrad").glob(".000.stale-*"))
    assert len(stale) == 1 and (stale[0] / "fold-0.npz").read_bytes() == b"a fold of the old recipe"


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_checkpoint_is_not_executed(capsys, folder, tmp_path):
    import torch

    members = tmp_path / "M"
    staging = stage_run(folder, members, epochs=1, size=16)
    marker = tmp_path / "PWNED"
    (staging / "scratch").mkdir(parents=True, exist_ok=True)
    torch.save({"model": Payload(marker)}, staging / "scratch" / "fold-0.ckpt")
    code, out, err = train(capsys, folder, members)
    assert not marker.exists()
    assert code == 1 and "fold-0.ckpt" in err and "Traceback" not in err


def test_checkpoint_of_another_recipe_is_refused(tmp_path, folder):
    import torch

    from ensemble.learn.trainer import FoldTrainer, TrainConfig
    from ensemble.runs import load_dataset

    ds = load_dataset(f"folder:{folder}", "datasets", TrainConfig(size=16, workers=0), None)
    cfg = TrainConfig(model="test_resnet", epochs=1, size=16, pretrained=False, device="cpu", workers=0)
    ckpt = tmp_path / "fold-0.ckpt"
    torch.save({"recipe_hash": "0" * 16, "model": {}, "epoch": 0}, ckpt)
    trainer = FoldTrainer(ds, ds.folds[0], "DGrad", cfg, seed=1, checkpoint=ckpt, recipe_hash="1" * 16)
    with pytest.raises(EnsError, match="another recipe"):
        trainer.run()


def test_publish_killed_at_each_step_completes_without_retraining(capsys, folder, tmp_path, monkeypatch):
    from ensemble.learn import trainer
    from ensemble.store import RunDir

    members = tmp_path / "M"
    real_rename = os.rename

    def killed_before_rename(src, dst):
        if str(src).endswith(".staging"):
            raise KeyboardInterrupt  # as a kill between member.json and the rename
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        from ensemble.learn.trainer import TrainConfig
        from ensemble.training import TrainRequest, train_members

        cfg = TrainConfig(model="test_resnet", epochs=1, size=16, pretrained=False, device="cpu", workers=0)
        train_members(TrainRequest(f"folder:{folder}", "DGrad", 1, cfg, members, Path("datasets"), progress=False))
    monkeypatch.setattr(os, "rename", real_rename)
    staging = members / "imgs" / "DGrad" / ".000.staging"
    assert (staging / "member.json").exists() and len(list(staging.glob("fold-*.npz"))) == 5

    def no_training(self):
        raise AssertionError("a fold was trained again")

    monkeypatch.setattr(trainer.FoldTrainer, "run", no_training)
    real_tidy = RunDir.tidy
    monkeypatch.setattr(RunDir, "tidy", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    code, out, err = train(capsys, folder, members)  # killed after the rename, before tidying
    assert code == 130
    final = members / "imgs" / "DGrad" / "000"
    assert (final / "member.json").exists() and (final / "fold-0.json").exists()
    monkeypatch.setattr(RunDir, "tidy", real_tidy)
    code, out, err = train(capsys, folder, members)
    assert code == 0 and "nothing to train" in out, err
    assert not (final / "fold-0.json").exists() and not staging.exists()
    code, out, err = cli(capsys, "fuse", "--dataset", "imgs", "DGrad1", "--members-dir", str(members))
    assert code == 0, err


# --------------------------------------------------------------------------- dataset identity and names
def test_two_folders_with_one_name_never_share_the_store(capsys, tmp_path):
    a = make_folder(tmp_path / "a" / "images", per_class=5, seed=1)
    b = make_folder(tmp_path / "b" / "images", per_class=6, seed=2)
    members = tmp_path / "M"
    assert train(capsys, a, members)[0] == 0
    code, out, err = train(capsys, b, members)
    assert code == 1 and "another dataset" in err and "--name" in err
    code, out, err = train(capsys, b, members, "--name", "images-b")
    assert code == 0, err
    assert (members / "images-b" / "DGrad" / "000" / "member.json").exists()


@pytest.mark.parametrize(
    "args", [["--dataset", "medmnist:../../X"], ["--name", "../x"], ["--variant", "a/b"], ["--variant", "7up"]]
)
def test_names_that_are_not_plain_are_refused(capsys, folder, tmp_path, args):
    base = {"--dataset": f"folder:{folder}"}
    extra = [] if args[0] == "--dataset" else args
    dataset = args[1] if args[0] == "--dataset" else base["--dataset"]
    code, out, err = cli(
        capsys, "train", "--dataset", dataset, "--opt", "sgd", *TINY, "--members-dir", str(tmp_path / "M"), *extra
    )
    assert code == 2 and "Traceback" not in err
    assert not (tmp_path / "M").exists() and not (tmp_path.parent / "X").exists()


def test_check_name_refuses_paths():
    for bad in ["..", "a/b", "../x", "", ".hidden", "x\\y", "a..b"]:
        with pytest.raises(UsageError):
            check_name(bad, "dataset")
    assert check_name("medmnist-breastmnist", "dataset") == "medmnist-breastmnist"


def test_store_files_get_ordinary_permissions(capsys, folder, tmp_path):
    old = os.umask(0o022)
    try:
        members = tmp_path / "M"
        assert train(capsys, folder, members)[0] == 0
    finally:
        os.umask(old)
    run = members / "imgs" / "DGrad" / "000"
    for p in [run / "member.json", run / "fold-0.npz"]:
        assert p.stat().st_mode & 0o777 == 0o644, p


# --------------------------------------------------------------------------- readers validate
CLASSES = ["x", "y"]
LABELS = [np.array([0, 1]), np.array([1, 0])]
IDS = [["s0", "s1"], ["s2", "s3"]]
GOOD = [np.array([[0.6, 0.4], [0.4, 0.6]]), np.array([[0.3, 0.7], [0.2, 0.8]])]


def _good_store(root: Path) -> Path:
    write_member(root, "toy", "SGD", 0, GOOD, LABELS, IDS, CLASSES)
    write_member(root, "toy", "SGD", 1, GOOD, LABELS, IDS, CLASSES)
    return root


def _meta(path: Path, **changes) -> None:
    meta = json.loads((path / "member.json").read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    (path / "member.json").write_text(json.dumps(meta))


def _npz(run: Path, k: int = 0, **arrays) -> None:
    with np.load(run / f"fold-{k}.npz") as z:
        data = {name: z[name] for name in z.files}
    data.update(arrays)
    np.savez(run / f"fold-{k}.npz", **data)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


CORRUPTIONS = {
    "member.json not JSON": (lambda r: (r / "member.json").write_text("{not json"), "member.json"),
    "member.json empty": (lambda r: (r / "member.json").write_text(""), "member.json"),
    "member.json a list": (lambda r: (r / "member.json").write_text("[1, 2]"), "member.json"),
    "member.json missing": (lambda r: (r / "member.json").unlink(), "member.json"),
    "missing field": (lambda r: _meta(r, classes=None), "classes"),
    "folds of wrong type": (lambda r: _meta(r, folds="2"), "folds"),
    "classes of wrong type": (lambda r: _meta(r, classes="xy"), "classes"),
    "run of another folder": (lambda r: _meta(r, run=7), "run"),
    "fingerprint escaping": (lambda r: _meta(r, fingerprint="x/../../ESCAPED"), "fingerprint"),
    "unknown schema version": (lambda r: _meta(r, schema_version=99), "schema_version"),
    "schema 2 without recipe": (lambda r: _meta(r, schema_version=2), "recipe"),
    "truncated npz": (lambda r: _truncate(r / "fold-1.npz"), "fold-1.npz"),
    "fold file missing": (lambda r: (r / "fold-1.npz").unlink(), "fold-1.npz"),
    "npz without probs": (lambda r: np.savez(r / "fold-0.npz", labels=LABELS[0], ids=np.array(IDS[0])), "fold-0.npz"),
    "NaN probabilities": (lambda r: _npz(r, probs=np.array([[np.nan, 1], [0.5, 0.5]], np.float32)), "NaN"),
    "rows not summing to 1": (lambda r: _npz(r, probs=np.array([[0.9, 0.9], [0.5, 0.5]], np.float32)), "sums to"),
    "negative probabilities": (lambda r: _npz(r, probs=np.array([[1.5, -0.5], [0.5, 0.5]], np.float32)), "negative"),
    "labels out of range": (lambda r: _npz(r, labels=np.array([0, 5])), "out of range"),
    "columns not matching classes": (lambda r: _npz(r, probs=np.full((2, 3), 1 / 3, np.float32)), "columns"),
    "ids of another length": (lambda r: _npz(r, ids=np.array(["s0"])), "fold-0.npz"),
    "object array (pickle)": (lambda r: _npz(r, ids=np.array(["s0", "s1"], dtype=object)), "fold-0.npz"),
    "duplicate sample ids": (lambda r: _npz(r, 1, ids=np.array(["s0", "s1"])), "more than one row"),
    "run folder 1 beside 001": (lambda r: (r.parent / "1").mkdir(), "not a run folder"),
    "visible folder without member.json": (lambda r: (r.parent / "002").mkdir(), "002"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupted_store_fails_fuse_and_report_with_one_line(capsys, tmp_path, kind):
    corrupt, words = CORRUPTIONS[kind]
    root = _good_store(tmp_path / "work" / "members")
    run = root / "toy" / "SGD" / "001"
    corrupt(run)
    out_dir = tmp_path / "work" / "reports"
    outside_before = sorted(p.as_posix() for p in tmp_path.rglob("*"))
    for args in (
        ["fuse", "--dataset", "toy", "SGD2", "--members-dir", str(root)],
        ["report", "--members-dir", str(root), "--out", str(out_dir)],
    ):
        code, out, err = cli(capsys, *args)
        assert code != 0, (kind, args, out)
        assert words in err and "Traceback" not in err and "internal error" not in err, (kind, err)
        assert str(root / "toy" / "SGD") in err or str(run) in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.as_posix() for p in tmp_path.rglob("*")) == outside_before  # nothing written anywhere
    assert not out_dir.exists()


def test_members_of_two_recipes_in_one_label_are_not_fused(tmp_path):
    root = _good_store(tmp_path / "members")
    for run, epochs in [(0, 1), (1, 2)]:
        recipe = {"epochs": epochs}
        _meta(
            root / "toy" / "SGD" / f"{run:03d}",
            schema_version=2,
            recipe=recipe,
            recipe_hash=recipe_hash(recipe),
            fingerprint="0123abcd0123abcd",
        )
    with pytest.raises(StoreError, match="epochs: 1 -> 2"):
        Store(root).members("toy", "SGD")


def test_report_escapes_names_for_html_and_latex(capsys, tmp_path):
    classes = ["<script>alert(1)</script>", "a_b&c%"]
    root = tmp_path / "members"
    write_member(root, "toy", "SGD", 0, GOOD, LABELS, IDS, classes)
    write_member(root, "toy", "DGrad", 0, GOOD[::-1], [LABELS[0], LABELS[1]], IDS, classes)
    code, out, err = cli(capsys, "report", "--members-dir", str(root), "--out", str(tmp_path / "R"), "--step", "1")
    assert code == 0, err
    page = (tmp_path / "R" / "toy" / "index.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a_b&amp;c%" in page
    tex = (tmp_path / "R" / "toy" / "per_class.tex").read_text()
    assert r"a\_b\&c\%" in tex and r"\textless{}script\textgreater{}" in tex
    for path in (tmp_path / "R" / "toy").glob("*.tex"):
        body = path.read_text()
        assert "<script>" not in body and "a_b&c%" not in body
