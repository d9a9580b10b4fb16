"""Every bad input gets one clear line: non-zero exit (2 for usage errors), the bad value named,
no traceback, no training started, no file changed or left behind."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import invoke_main, make_folder, run_cli, tiny, write_member  # noqa: F401

TINY = tiny(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A folder of images, a hand-made store, a file where a folder is expected, an installed dataset."""
    root = tmp_path_factory.mktemp("world")
    make_folder(root / "imgs", per_class=5)
    probs = [np.array([[0.6, 0.4], [0.4, 0.6]]), np.array([[0.3, 0.7], [0.2, 0.8]])]
    for run in (0, 1):
        write_member(
            root / "M",
            "toy",
            "SGD",
            run,
            probs,
            [np.array([0, 1]), np.array([1, 0])],
            [["s0", "s1"], ["s2", "s3"]],
            ["x", "y"],
        )
    (root / "a_file").write_text("not a folder")
    (root / "empty").mkdir()
    (root / "data" / "lar").mkdir(parents=True)
    return root


def _train(world: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--dataset",
        f"folder:{world / 'imgs'}",
        "--opt",
        "sgd",
        *TINY,
        "--members-dir",
        str(world / "T"),
        *extra,
    ]


def _fuse(world: Path, *extra: str) -> list[str]:
    return ["fuse", "--dataset", "toy", "--members-dir", str(world / "M"), *extra]


# (id, args builder, exit code, words the error line must hold)
CASES = [
    ("lr nan", lambda w: _train(w, "--lr", "nan"), 2, "'nan' is not a finite number"),
    ("lr inf", lambda w: _train(w, "--lr", "inf"), 2, "'inf' is not a finite number"),
    ("lr negative", lambda w: _train(w, "--lr", "-1"), 2, "'-1' must be greater than 0"),
    ("lr text", lambda w: _train(w, "--lr", "abc"), 2, "'abc' is not a number"),
    ("head factor nan", lambda w: _train(w, "--head-lr-factor", "nan"), 2, "--head-lr-factor"),
    ("head factor 0", lambda w: _train(w, "--head-lr-factor", "0"), 2, "'0' must be greater than 0"),
    ("weight decay negative", lambda w: _train(w, "--weight-decay", "-1"), 2, "'-1' must be at least 0"),
    ("weight decay nan", lambda w: _train(w, "--weight-decay", "nan"), 2, "--weight-decay"),
    ("device meta", lambda w: _train(w, "--device", "meta"), 2, "'meta' is not a training device"),
    ("device cuda:x", lambda w: _train(w, "--device", "cuda:x"), 2, "'cuda:x'"),
    ("executor slurm", lambda w: _train(w, "--executor", "slurm"), 2, "'slurm'"),
    ("scheduler bogus", lambda w: _train(w, "--executor", "dask", "--scheduler", "bogus://x"), 2, "bogus"),
    (
        "scheduler no port",
        lambda w: _train(w, "--executor", "dask", "--scheduler", "tcp://head"),
        2,
        "'tcp://head' is not SCHEME://HOST:PORT",
    ),
    ("scheduler without dask", lambda w: _train(w, "--scheduler", "tcp://h:8786"), 2, "--scheduler"),
    ("jobs 0", lambda w: _train(w, "--jobs", "0"), 2, "--jobs"),
    ("epochs 0", lambda w: _train(w, "--epochs", "0"), 2, "--epochs"),
    ("batch size 1", lambda w: _train(w, "--batch-size", "1"), 2, "--batch-size"),
    ("size 4", lambda w: _train(w, "--size", "4"), 2, "--size"),
    ("n 0", lambda w: _train(w, "--n", "0"), 2, "--n"),
    ("n huge", lambda w: _train(w, "--n", "5000"), 2, "5000"),
    ("threads 0", lambda w: _train(w, "--threads", "0"), 2, "--threads"),
    ("workers negative", lambda w: _train(w, "--workers", "-1"), 2, "--workers"),
    ("unknown optimizer", lambda w: _train(w, "--opt", "rmsprop"), 2, "rmsprop"),
    ("empty optimizer", lambda w: _train(w, "--opt", ""), 2, "unknown optimizer ''"),
    ("lr with clmr", lambda w: _train(w, "--opt", "clmr", "--lr", "0.1"), 2, "CLMR does not accept lr"),
    ("unknown dataset", lambda w: ["train", "--dataset", "nosuch", "--opt", "sgd", *TINY], 2, "'nosuch'"),
    ("folder without path", lambda w: ["train", "--dataset", "folder:", "--opt", "sgd", *TINY], 2, "folder:"),
    (
        "missing folder",
        lambda w: ["train", "--dataset", f"folder:{w / 'nope'}", "--opt", "sgd", *TINY, "--members-dir", str(w / "T")],
        1,
        "nope",
    ),
    (
        "medmnist escape",
        lambda w: ["train", "--dataset", "medmnist:../../X", "--opt", "sgd", *TINY, "--data-dir", str(w / "data")],
        2,
        "medmnist:../../X",
    ),
    ("unknown model", lambda w: _train(w, "--model", "not_a_model"), 2, "'not_a_model'"),
    (
        "missing weights",
        lambda w: [a for a in _train(w, "--weights", str(w / "w.pth")) if a != "--no-pretrained"],
        2,
        "w.pth",
    ),
    ("weights and no-pretrained", lambda w: _train(w, "--weights", str(w / "a_file")), 2, "--no-pretrained"),
    ("variant with slash", lambda w: _train(w, "--variant", "a/b"), 2, "'a/b'"),
    ("name escaping", lambda w: _train(w, "--name", "../x"), 2, "'../x'"),
    ("members dir is a file", lambda w: _train(w)[:-2] + ["--members-dir", str(w / "a_file")], 2, "a_file"),
    ("cache dir is a file", lambda w: _train(w, "--cache-dir", str(w / "a_file")), 2, "a_file"),
    (
        "fuse unknown dataset",
        lambda w: ["fuse", "--dataset", "nosuch", "SGD1", "--members-dir", str(w / "M")],
        2,
        "'nosuch'",
    ),
    ("fuse no count", lambda w: _fuse(w, "SGD"), 2, "column 4"),
    ("fuse superscript", lambda w: _fuse(w, "SGD²"), 2, "column 4"),
    ("fuse huge count", lambda w: _fuse(w, "SGD" + "9" * 5000), 2, "5000 digits"),
    ("fuse unknown label", lambda w: _fuse(w, "Foo3"), 2, "'Foo'"),
    ("fuse empty variant", lambda w: _fuse(w, "SGD@7"), 2, "variant name"),
    ("fuse over-ask", lambda w: _fuse(w, "SGD9"), 2, "SGD9"),
    ("fuse unknown rule", lambda w: _fuse(w, "SGD1", "--rule", "bogus"), 2, "'bogus'"),
    ("fuse unknown format", lambda w: _fuse(w, "SGD1", "--format", "xml"), 2, "'xml'"),
    ("fuse few resamples", lambda w: _fuse(w, "SGD1", "--ci", "--resamples", "10"), 2, "10"),
    ("fuse unknown calibration", lambda w: _fuse(w, "SGD1", "--calibrate", "platt"), 2, "'platt'"),
    (
        "fuse missing store",
        lambda w: ["fuse", "--dataset", "toy", "SGD1", "--members-dir", str(w / "nope")],
        2,
        "no members of 'toy'",
    ),
    (
        "compare one expression",
        lambda w: ["compare", "--dataset", "toy", "SGD1", "--members-dir", str(w / "M")],
        2,
        "EXPR_B",
    ),
    (
        "compare unknown label",
        lambda w: ["compare", "--dataset", "toy", "SGD1", "Bogus1", "--members-dir", str(w / "M")],
        2,
        "'Bogus'",
    ),
    (
        "report empty store",
        lambda w: ["report", "--members-dir", str(w / "empty"), "--out", str(w / "R")],
        2,
        "no members",
    ),
    ("report step 0", lambda w: ["report", "--members-dir", str(w / "M"), "--step", "0"], 2, "--step"),
    (
        "report out is a file",
        lambda w: ["report", "--members-dir", str(w / "M"), "--out", str(w / "a_file")],
        2,
        "a_file",
    ),
    ("data list dir is a file", lambda w: ["data", "list", "--data-dir", str(w / "a_file")], 2, "a_file"),
    ("data list extra", lambda w: ["data", "list", "extra"], 2, "extra"),
    ("fetch unknown", lambda w: ["data", "fetch", "nosuch", "--data-dir", str(w / "data")], 2, "'nosuch'"),
    ("fetch folder", lambda w: ["data", "fetch", "folder:x", "--data-dir", str(w / "data")], 2, "no download source"),
    (
        "fetch checksum without colon",
        lambda w: [
            "data",
            "fetch",
            "bg",
            "--data-dir",
            str(w / "data"),
            "--url",
            "http://127.0.0.1:9/bg.zip",
            "--checksum",
            "sha256",
        ],
        2,
        "'sha256'",
    ),
    (
        "fetch checksum not hex",
        lambda w: [
            "data",
            "fetch",
            "bg",
            "--data-dir",
            str(w / "data"),
            "--url",
            "http://127.0.0.1:9/bg.zip",
            "--checksum",
            "md5:nothex",
        ],
        2,
        "md5:nothex",
    ),
    (
        "fetch unknown algorithm",
        lambda w: [
            "data",
            "fetch",
            "bg",
            "--data-dir",
            str(w / "data"),
            "--url",
            "http://127.0.0.1:9/bg.zip",
            "--checksum",
            "crc32:abcd",
        ],
        2,
        "crc32:abcd",
    ),
    (
        "fetch ftp",
        lambda w: ["data", "fetch", "bg", "--data-dir", str(w / "data"), "--url", "ftp://h/bg.zip"],
        2,
        "ftp://h/bg.zip",
    ),
    (
        "fetch checksum alone",
        lambda w: ["data", "fetch", "bg", "--data-dir", str(w / "data"), "--checksum", "md5:" + "0" * 32],
        2,
        "--checksum",
    ),
    ("fetch over existing", lambda w: ["data", "fetch", "lar", "--data-dir", str(w / "data")], 2, "already exists"),
    ("optimizers extra", lambda w: ["optimizers", "extra"], 2, "extra"),
    ("optimizers plot into a folder", lambda w: ["optimizers", "--plot", str(w / "empty")], 2, "empty"),
]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: files by content hash, folders by name."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(("name", "args", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(capsys, world, name, args, code, words):
    before = snapshot(world)
    got, out, err = run_cli(capsys, *args(world))
    assert got == code, (name, got, out, err)
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and words in errors[0] + err, (name, err)
    assert "Traceback" not in err + out and "internal error" not in err
    assert "training run" not in out
    assert snapshot(world) == before  # nothing changed, nothing left behind


def test_at_least_forty_bad_inputs():
    assert len(CASES) >= 40


def test_cuda_on_a_machine_without_it_fails_before_training(capsys, world):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = snapshot(world)
    code, out, err = run_cli(capsys, *_train(world, "--device", "cuda"))
    assert code == 1 and "CUDA is not available" in err and "Traceback" not in err
    assert snapshot(world) == before


def test_names_from_the_filesystem_are_data(capsys, tmp_path):
    """Class folders named like markup or math reach tables, figures, HTML and LaTeX as plain text."""
    folder = make_folder(tmp_path / "weird", classes=("[red]", "$\\foo{", "a&b"), per_class=5)
    code, out, err = run_cli(capsys, "data", "list", "--data-dir", str(tmp_path))
    assert code == 0, err
    members = tmp_path / "M"
    code, out, err = run_cli(
        capsys,
        "train",
        "--dataset",
        f"folder:{folder}",
        "--opt",
        "sgd",
        "--n",
        "1",
        *TINY,
        "--members-dir",
        str(members),
    )
    assert code == 0, err
    code, out, err = run_cli(capsys, "fuse", "--dataset", "weird", "SGD1", "--details", "--members-dir", str(members))
    assert code == 0, err
    assert "[red]" in out and "$\\foo{" in out
    code, out, err = run_cli(
        capsys, "report", "--members-dir", str(members), "--out", str(tmp_path / "R"), "--step", "1"
    )
    assert code == 0, err
    assert (tmp_path / "R" / "weird" / "confusion_best.png").stat().st_size > 1000
    assert r"\$\textbackslash{}foo\{" in (tmp_path / "R" / "weird" / "per_class.tex").read_text()


def test_cli_imports_without_fcntl():
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import ensemble.cli, ensemble.store, ensemble.executors, ensemble.executors.worker\n"
        "from ensemble.cli import main; sys.argv = ['ens', '--help']; main()"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "Usage" in res.stdout, res.stderr


# --------------------------------------------------------------------------- downloads
class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[bytes, int | None]] = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        body, length = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler.routes
    httpd.shutdown()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_fetch_refuses_truncated_wrong_checksum_and_escaping_archives(capsys, tmp_path, server):
    base, routes = server
    good = _zip({"BG/g1/a.png": b"x" * 100, "BG/g2/b.png": b"y" * 100})
    sha = hashlib.sha256(good).hexdigest()
    routes["/truncated.zip"] = (good[: len(good) // 2], len(good))  # the server promises more than it sends
    routes["/good.zip"] = (good, None)
    routes["/escape.zip"] = (_zip({"g1/a.png": b"x", "../../evil.txt": b"owned"}), None)
    routes["/escape.tar"] = (_tar({"g1/a.png": b"x", "../evil.txt": b"owned"}), None)
    data = tmp_path / "data"
    cases = [
        ("/truncated.zip", None, "cannot download"),
        ("/good.zip", "sha256:" + "0" * 64, "checksum mismatch"),
        ("/escape.zip", None, "../../evil.txt"),
        ("/escape.tar", None, "../evil.txt"),
    ]
    for path, checksum, words in cases:
        args = ["data", "fetch", "bg", "--data-dir", str(data), "--url", base + path]
        code, out, err = run_cli(capsys, *args, *(["--checksum", checksum] if checksum else []))
        assert code == 1 and words in err and "Traceback" not in err, (path, err)
        assert not (data / "bg").exists() and not (tmp_path / "evil.txt").exists()
        assert [p.name for p in data.iterdir()] == [] if data.exists() else True  # no partial file left
    code, out, err = run_cli(
        capsys,
        "data",
        "fetch",
        "bg",
        "--data-dir",
        str(data),
        "--url",
        base + "/good.zip",
        "--checksum",
        f"sha256:{sha}",
    )
    assert code == 0, err
    assert sorted(p.name for p in (data / "bg").iterdir()) == ["g1", "g2"]


def test_unpack_size_limit(tmp_path):
    from ensemble.data.fetch import _unpack
    from ensemble.errors import DataError

    archive = tmp_path / "big.zip"
    archive.write_bytes(_zip({"a/x.bin": b"0" * 5000}))
    with pytest.raises(DataError, match="over the limit"):
        _unpack(archive, tmp_path / "target", limit=1000)
    assert not (tmp_path / "target").exists()


# ---- round two: data, store and honesty (issue 22)
def _pngs(folder: Path, n: int, *, seed: int = 0, prefix: str = "i") -> None:
    """``n`` tiny grey PNGs in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (10, 12), dtype=np.uint8)).save(folder / f"{prefix}{i}.png")


def _classes(root: Path, counts: dict[str, int]) -> Path:
    for k, (name, n) in enumerate(counts.items()):
        _pngs(root / name, n, seed=k)
    return root


def _seg(root: Path, masks: dict[str, np.ndarray]) -> Path:
    """A segmentation folder: one image per mask, of the mask's size, named as the mask (suffix aside)."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name, mask in masks.items():
        stem = name.rsplit(".", 1)[0]
        if not (root / "images" / f"{stem}.png").exists():
            Image.fromarray(rng.integers(0, 255, mask.shape, dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / name)
    return root


def _disc(value: int = 255, size: int = 16) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[4:12, 4:12] = value  # a block survives the nearest-neighbour resize to any training size
    return mask


def _data_world(root: Path) -> None:
    """Datasets that are wrong before any training: each refused when loaded."""
    _classes(root / "one_image", {"a": 6, "b": 6, "rare": 1})
    _classes(root / "four_images", {"a": 6, "b": 4})
    _classes(root / "one_class", {"only": 8})
    (root / "one_class.csv").write_text("path,label\n" + "".join(f"one_class/only/i{i}.png,x\n" for i in range(8)))
    _seg(root / "twin_masks", {f"s{i}.png": _disc() for i in range(6)})
    from PIL import Image

    Image.fromarray(_disc()).save(root / "twin_masks" / "masks" / "s0.tif")
    _seg(root / "empty_masks", {f"s{i}.png": np.zeros((16, 16)) for i in range(6)})
    _seg(root / "odd_binary", {**{f"s{i}.png": _disc() for i in range(5)}, "s5.png": _disc(128)})
    _seg(root / "odd_labels", {**{f"s{i}.png": _disc(1 + i % 3) for i in range(5)}, "s5.png": _disc(200)})
    _seg(root / "odd_one", {**{f"s{i}.png": _disc() for i in range(5)}, "s5.png": _disc(7)})


def _npy(shape: tuple, dtype: str = "<f4", body: bytes = b"") -> bytes:
    """A .npy file whose header declares ``shape`` and ``dtype``, followed by ``body`` (not the data)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + body


def _zip_npz(path: Path, arrays: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in arrays.items():
            z.writestr(f"{name}.npy", data)


def _save_npz(path: Path, **arrays) -> None:
    np.savez(path, **arrays)


def _good_fold(k: int) -> dict[str, np.ndarray]:
    probs = [np.array([[0.6, 0.4], [0.4, 0.6]], np.float32), np.array([[0.3, 0.7], [0.2, 0.8]], np.float32)][k]
    return {"probs": probs, "labels": np.array([[0, 1], [1, 0]][k]), "ids": np.array([["s0", "s1"], ["s2", "s3"]][k])}


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


STORE_FAULTS = {
    # name: (what is done to run 001 of toy/SGD, words the one line holds)
    "fold with zero rows": (
        lambda r: _save_npz(
            r / "fold-0.npz", probs=np.zeros((0, 2), np.float32), labels=np.zeros(0, np.int64), ids=np.array([], str)
        ),
        "holds no rows",
    ),
    "fold linked to /etc/passwd": (
        lambda r: ((r / "fold-0.npz").unlink(), (r / "fold-0.npz").symlink_to("/etc/passwd")),
        "a link out of its run folder",
    ),
    "fold linked to another run's fold": (
        lambda r: ((r / "fold-0.npz").unlink(), (r / "fold-0.npz").symlink_to(r.parent / "000" / "fold-0.npz")),
        "a link out of its run folder",
    ),
    "fold is text": (lambda r: (r / "fold-0.npz").write_text("probs,labels\n0.5,1\n"), "not an npz file"),
    "fold is a folder": (lambda r: ((r / "fold-0.npz").unlink(), (r / "fold-0.npz").mkdir()), "not an npz file"),
    "fold a zip bomb by its header": (
        lambda r: _zip_npz(
            r / "fold-0.npz",
            {
                "probs": _npy((10**9, 2), body=bytes(4096)),
                "labels": _npy((10**9,), "<i8"),
                "ids": _npy((10**9,), "<U2"),
            },
        ),
        "refused before loading",
    ),
    "fold header wider than the classes": (
        lambda r: _save_npz(r / "fold-0.npz", **{**_good_fold(0), "probs": np.full((2, 3), 1 / 3, np.float32)}),
        "3 columns",
    ),
    "fold header with 3-D probs": (
        lambda r: _save_npz(r / "fold-0.npz", **{**_good_fold(0), "probs": np.full((2, 2, 1), 0.5, np.float32)}),
        "2 dimension(s)",
    ),
    "fold header rows disagree": (
        lambda r: _save_npz(r / "fold-0.npz", **{**_good_fold(0), "labels": np.array([0, 1, 1])}),
        "different row counts",
    ),
    "fold with object ids": (
        lambda r: _save_npz(r / "fold-0.npz", **{**_good_fold(0), "ids": np.array(["s0", "s1"], dtype=object)}),
        "pickled (object) data",
    ),
    "fold of npy format 3.0": (
        lambda r: _zip_npz(r / "fold-0.npz", {"probs": b"\x93NUMPY\x03\x00" + bytes(8)}),
        "fold-0.npz",
    ),
    "member.json nested 100000 deep": (
        lambda r: (r / "member.json").write_text(f'{{"dataset": {_deep(100000)}}}'),
        "nested too deeply",
    ),
    "member.json nested 500 deep": (
        lambda r: (r / "member.json").write_text(f'{{"dataset": "toy", "extra": {_deep(500)}}}'),
        "nested more than 64 levels",
    ),
    "seed of text": (lambda r: _edit_meta(r, seed="0"), "field 'seed' has a wrong type or value: '0'"),
}


def _edit_meta(run: Path, **changes) -> None:
    import json

    meta = json.loads((run / "member.json").read_text())
    meta.update(changes)
    (run / "member.json").write_text(json.dumps(meta))


def _two_member_store(root: Path) -> Path:
    for run in (0, 1):
        folds = [_good_fold(0), _good_fold(1)]
        write_member(
            root,
            "toy",
            "SGD",
            run,
            [f["probs"] for f in folds],
            [f["labels"] for f in folds],
            [list(f["ids"]) for f in folds],
            ["x", "y"],
        )
    return root


@pytest.mark.parametrize("fault", list(STORE_FAULTS))
def test_round_two_a_bad_store_file_is_one_line_naming_it(capsys, tmp_path, fault):
    """fuse, report and members each say what is wrong with which file, in one line; nothing is written."""
    break_it, words = STORE_FAULTS[fault]
    root = _two_member_store(tmp_path / "members")
    run = root / "toy" / "SGD" / "001"
    break_it(run)
    before = snapshot(tmp_path)
    for args in (
        ["fuse", "--dataset", "toy", "SGD2", "--members-dir", str(root)],
        ["report", "--members-dir", str(root), "--out", str(tmp_path / "R")],
    ):
        code, out, err = run_cli(capsys, *args)
        assert code == 1, (fault, args, out, err)
        errors = [line for line in err.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and words in errors[0] and str(run) in errors[0], (fault, err)
        assert "Traceback" not in err + out and "internal error" not in err and "RecursionError" not in err
    code, out, err = run_cli(capsys, "members", "--members-dir", str(root))
    assert code == 0 and f"unreadable: {run}" in out + err and words in out + err, (fault, out, err)
    assert snapshot(tmp_path) == before


def _content(samples: object, version: object = 1) -> str:
    import json

    return json.dumps({"version": version, "algorithm": "sha256", "samples": samples})


SHA = "ab" * 32
CONTENT_FAULTS = {
    # name: (content.json's text, words of the one line)
    "not JSON": ('{"version": 1, "samples": {"s0": ', "unreadable (JSONDecodeError)"),
    "nested 100000 deep": ('{"samples": ' + _deep(100000) + "}", "unreadable (RecursionError)"),
    "another version": (_content({f"s{i}": SHA for i in range(4)}, version=9), "not a content record"),
    "a hash that is not sha256": (_content({"s0": SHA, "s1": "abc", "s2": SHA, "s3": SHA}), "not a content record"),
    "samples a list": (_content([SHA] * 4), "not a content record"),
    "a sample missing": (
        _content({"s0": SHA, "s1": SHA, "s3": SHA}),
        "records no content for sample 's2', which toy/SGD/000 predicted (1 of its sample(s) missing)",
    ),
    "another dataset's": (_content({"x0": SHA}), "records no content for sample 's0'"),
}


@pytest.mark.parametrize("fault", list(CONTENT_FAULTS))
def test_a_damaged_content_record_stops_fuse_and_report_in_one_line_naming_it(capsys, tmp_path, fault):
    """fuse and report read no image (they cannot hash data) but do read content.json, untrusted like any
    store file: damaged or silent on a sample the members predicted, it is refused naming it."""
    text, words = CONTENT_FAULTS[fault]
    root = _two_member_store(tmp_path / "members")
    record = root / "toy" / "content.json"
    record.write_text(text)
    before = snapshot(tmp_path)
    for args in (
        ["fuse", "--dataset", "toy", "SGD2", "--members-dir", str(root)],
        ["compare", "--dataset", "toy", "SGD1", "SGD2", "--members-dir", str(root)],
        ["report", "--members-dir", str(root), "--out", str(tmp_path / "R")],
    ):
        code, out, err = run_cli(capsys, *args)
        assert code == 1, (fault, args, out, err)
        errors = [line for line in err.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and errors[0].startswith(f"Error: {record}: ") and words in errors[0], (fault, err)
        assert "Traceback" not in err + out and "internal error" not in err
    assert snapshot(tmp_path) == before


def test_a_content_record_covering_every_sample_fuses_and_reports_and_none_is_no_fault(capsys, tmp_path):
    root = _two_member_store(tmp_path / "members")
    fuse = ["fuse", "--dataset", "toy", "SGD2", "--members-dir", str(root), "--format", "json"]
    code, without, err = run_cli(capsys, *fuse)  # a store written before ens kept the record
    assert code == 0, err
    (root / "toy" / "content.json").write_text(_content({f"s{i}": SHA for i in range(5)}))  # s4: not predicted
    code, out, err = run_cli(capsys, *fuse)
    assert code == 0 and out == without, err
    code, _, err = run_cli(capsys, "report", "--members-dir", str(root), "--out", str(tmp_path / "R"), "--step", "1")
    assert code == 0 and (tmp_path / "R" / "toy" / "index.html").is_file(), err


DATA_FAULTS = {
    # name: (dataset argument under the data world, exit code, words of the one line)
    "a class of one image": ("folder:{w}/one_image", 1, "class 'rare' has 1 image(s), fewer than the 5 folds"),
    "a class of four images": ("folder:{w}/four_images", 1, "class 'b' has 4 image(s)"),
    "one class folder": ("folder:{w}/one_class", 1, "every image is of one class ('only', 8 image(s))"),
    "one class in a manifest": ("csv:{w}/one_class.csv", 1, "every image is of one class ('x'"),
    "two masks of one name": ("seg:{w}/twin_masks", 1, "masks {w}/twin_masks/masks/s0.png and s0.tif"),
    "every mask empty": ("seg:{w}/empty_masks", 1, "every mask in {w}/empty_masks/masks is empty"),
    "one odd value among binary masks": (
        "seg:{w}/odd_binary",
        1,
        "mask {w}/odd_binary/masks/s5.png holds value(s) 128",
    ),
    "one odd value among label maps": ("seg:{w}/odd_labels", 1, "mask {w}/odd_labels/masks/s5.png holds value(s) 200"),
    "a label value among binary masks": ("seg:{w}/odd_one", 1, "mask {w}/odd_one/masks/s5.png holds value(s) 7"),
}


@pytest.fixture(scope="module")
def data_world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data22")
    _data_world(root)
    return root


@pytest.mark.parametrize("fault", list(DATA_FAULTS))
def test_round_two_bad_data_is_refused_before_training(capsys, data_world, tmp_path, fault):
    spec, code, words = DATA_FAULTS[fault]
    members = tmp_path / "T"
    before = snapshot(data_world)
    model = ["--model", "lighter-unet@4"] if spec.startswith("seg:") else []  # each task's own network
    args = [
        "train",
        "--dataset",
        spec.format(w=data_world),
        "--opt",
        "sgd",
        *TINY,
        *model,
        "--members-dir",
        str(members),
    ]
    got, out, err = run_cli(capsys, *args)
    assert got == code, (fault, out, err)
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and words.format(w=data_world) in errors[0], (fault, err)
    assert "Traceback" not in err + out and "internal error" not in err and "training run" not in out
    assert not members.exists() and snapshot(data_world) == before


def test_round_two_images_in_a_sub_folder_of_a_class_are_named_in_a_warning(tmp_path):
    from ensemble.data.scan import scan
    from ensemble.data.sources import resolve

    root = _classes(tmp_path / "nested", {"a": 5, "b": 5})
    _pngs(root / "a" / "more", 3)
    _pngs(root / "a" / "more" / "deeper", 2)
    listing = scan(resolve(f"folder:{root}"))
    assert len(listing.ids) == 10  # what is read is as before
    assert listing.warnings == [
        f"{root / 'a' / 'more'}: 5 image(s) in this sub-folder of class folder 'a' are not read "
        "(ens reads the images directly in a class folder); move them up to use them"
    ]


def test_round_two_a_hand_made_member_with_one_integer_seed_is_read(capsys, tmp_path):
    """SPEC §5: ``seed`` is an integer (a hand-made member) or one per fold; an integer is every fold's seed."""
    from ensemble.store import read_member

    root = _two_member_store(tmp_path / "members")
    for run in ("000", "001"):
        _edit_meta(root / "toy" / "SGD" / run, seed=0)
    assert read_member(root / "toy" / "SGD" / "000").meta.seed == [0, 0]
    code, out, err = run_cli(capsys, "fuse", "--dataset", "toy", "SGD2", "--members-dir", str(root))
    assert code == 0 and "SGD2" in out, err
    _edit_meta(root / "toy" / "SGD" / "001", seed=True)  # a bool is no integer
    code, out, err = run_cli(capsys, "fuse", "--dataset", "toy", "SGD2", "--members-dir", str(root))
    assert code == 1 and "field 'seed' has a wrong type or value: True" in err


def test_round_two_a_swapped_staged_fold_is_not_published(tmp_path):
    """A staged fold file replaced by one with other samples' ids is refused at publish, naming it."""
    from ensemble.errors import StoreError
    from ensemble.learn.recipe import build_recipe
    from ensemble.learn.trainer import TrainConfig
    from ensemble.runs import assemble_run, load_dataset
    from ensemble.store import Store
    from tests.conftest import stage_run

    folder = _classes(tmp_path / "imgs", {"a": 5, "b": 5})
    staging = stage_run(folder, tmp_path / "M", label="SGD")
    cfg = TrainConfig(model="test_resnet", pretrained=False, device="cpu", workers=0)
    ds = load_dataset(f"folder:{folder}", "datasets", cfg, None)
    rd = Store(tmp_path / "M").run_dir(ds.name, "SGD", 0)
    for k, fold in enumerate(ds.folds):
        ids = ds.ids[fold.test] if k != 2 else np.array(["a/elsewhere.png", *ds.ids[fold.test][1:]])
        probs = np.full((len(fold.test), 2), 0.5, np.float32)
        rd.write_fold(k, "classification", probs, ds.labels[fold.test], ids)
        summary = {"seed": k, "seconds": 0.0, "curves": {"accuracy": [0.5]}, "accuracy": 0.5, "model": None}
        rd.summary(k).write_text(__import__("json").dumps(summary))
    before = snapshot(tmp_path / "M")
    with pytest.raises(StoreError) as err:
        assemble_run(rd, ds=ds, dataset=ds.name, label="SGD", recipe=build_recipe(cfg, "SGD", ds))
    assert str(err.value).startswith(f"{staging / 'fold-2.npz'}: holds other samples than the dataset's fold")
    assert "'a/elsewhere.png' is not in this fold" in str(err.value)
    assert snapshot(tmp_path / "M") == before and not rd.final.exists()


def test_round_two_changed_pixels_under_the_same_name_are_refused(capsys, tmp_path, monkeypatch):
    """The fingerprint sees names only: the content record sees the bytes. A second run on changed pixels is
    refused naming the file; an unchanged dataset is not hashed again (the cache answers)."""
    from PIL import Image

    from ensemble.data import content

    folder = _classes(tmp_path / "imgs", {"a": 5, "b": 5})
    members = tmp_path / "M"
    train = ["train", "--dataset", f"folder:{folder}", "--opt", "sgd", *TINY, "--members-dir", str(members)]
    code, out, err = run_cli(capsys, *train, "--n", "1")
    assert code == 0, err
    record = members / "imgs" / "content.json"
    import json

    samples = json.loads(record.read_text())["samples"]
    assert samples["a/i3.png"] == hashlib.sha256((folder / "a" / "i3.png").read_bytes()).hexdigest()
    assert len(samples) == 10

    calls = []
    real = content.file_sha256
    monkeypatch.setattr(content, "file_sha256", lambda p: calls.append(p) or real(p))
    from ensemble.learn.trainer import TrainConfig
    from ensemble.runs import load_dataset

    ds = load_dataset(f"folder:{folder}", "datasets", TrainConfig(size=16, workers=0), None, fresh=True)
    assert calls == [] and ds.content.hashes == samples  # nothing unchanged is read again

    pixels = np.asarray(Image.open(folder / "a" / "i3.png")).copy()
    pixels[0, 0] ^= 0xFF
    Image.fromarray(pixels).save(folder / "a" / "i3.png")  # same name, other pixels: the fingerprint is the same
    before = snapshot(members)
    code, out, err = run_cli(capsys, *train, "--n", "2")
    assert code == 1, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and f"{folder / 'a' / 'i3.png'}: its content differs" in errors[0], err
    assert "1 sample(s) changed" in errors[0] and "--name NEW" in errors[0] and "--members-dir" in errors[0]
    assert [str(p) for p in calls] == [str(folder / "a" / "i3.png")]  # only the changed file was hashed
    assert "training run" not in out and snapshot(members) == before


def test_round_two_a_store_without_content_json_records_it_once(capsys, tmp_path):
    import json

    folder = _classes(tmp_path / "imgs", {"a": 5, "b": 5})
    members = tmp_path / "M"
    train = ["train", "--dataset", f"folder:{folder}", "--opt", "sgd", *TINY, "--members-dir", str(members)]
    assert run_cli(capsys, *train, "--n", "1")[0] == 0
    record = members / "imgs" / "content.json"
    record.unlink()  # a store written before ens kept it
    code, out, err = run_cli(capsys, *train, "--opt", "dgrad", "--n", "1")
    assert code == 0, err
    assert out.count(f"note: {record}: recording the content of 10 sample(s) now") == 1
    assert len(json.loads(record.read_text())["samples"]) == 10


def _one_fold_member(root: Path, label: str, run: int, probs: np.ndarray, val: np.ndarray | None) -> None:
    """A member of a one-fold (train/val/test) dataset: its test fold, and its validation fold when given."""
    y = np.array([0, 1, 2, 0, 1, 2])
    ids = [f"t{i}" for i in range(6)]
    d = write_member(root, "toy", label, run, [probs], [y], [ids], ["p", "q", "r"])
    if val is not None:
        np.savez(d / "val-0.npz", probs=val.astype(np.float32), labels=y, ids=np.array([f"v{i}" for i in range(6)]))


def _rows(rng: np.random.Generator) -> np.ndarray:
    p = rng.random((6, 3)) + 0.01
    return p / p.sum(1, keepdims=True)


def test_round_two_honest_selection_drops_a_member_without_validation_predictions(tmp_path):
    from ensemble.fusion.summary import summarise
    from ensemble.store import Store

    rng = np.random.default_rng(0)
    root = tmp_path / "members"
    for label in ("SGD", "DGrad"):
        for run in (0, 1):
            missing = (label, run) == ("DGrad", 0)
            _one_fold_member(root, label, run, _rows(rng), None if missing else _rows(rng))
    (group,) = summarise(Store(root), step=1)
    assert group.notes[0].startswith("toy/DGrad/000 has no validation predictions (val-*.npz): left out")
    honest = [r for r in group.table2 if "honest" in r["selection"]]
    assert [r["selection"] for r in honest] == [
        "chosen on validation split (honest)",
        "learned, fitted on validation split (honest)",
        "learned, fitted on validation split (honest)",
        "learned, fitted on validation split (honest)",
    ]
    assert all(r["members"] <= 3 for r in honest if isinstance(r["members"], int))
    assert all(r["ensemble"].startswith("all 3 members") for r in honest[1:])  # greedy and stacking: no crash


def test_round_two_one_fold_without_validation_has_no_honest_row(capsys, tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "members"
    for label in ("SGD", "DGrad"):
        for run in (0, 1):
            _one_fold_member(root, label, run, _rows(rng), None)
    code, out, err = run_cli(capsys, "report", "--members-dir", str(root), "--out", str(tmp_path / "R"))
    assert code == 0, err
    assert "warning: toy: no honest selection: the members have one test fold and no validation" in err
    table = (tmp_path / "R" / "toy" / "table2.csv").read_text()
    assert "honest" not in table and "best on test folds (optimistic)" in table


def test_round_two_best_on_test_folds_tries_every_count(tmp_path):
    """Table 2's optimistic search tries every count up to what each label holds (here 0..5 per label, 35
    combinations), not only multiples of --step: its best row is the best of an independent brute force."""
    import itertools

    from ensemble.fusion import fuse
    from ensemble.fusion.summary import summarise
    from ensemble.store import Store

    rng = np.random.default_rng(5)
    root = tmp_path / "members"
    y = [rng.integers(0, 3, 9), rng.integers(0, 3, 8)]
    ids = [[f"a{i}" for i in range(9)], [f"b{i}" for i in range(8)]]
    for label in ("SGD", "DGrad"):
        for run in range(5):
            probs = [(lambda p: p / p.sum(1, keepdims=True))(rng.random((len(t), 3)) ** 3) for t in y]
            write_member(root, "toy", label, run, probs, y, ids, ["p", "q", "r"])
    store = Store(root)
    best = 0.0
    for a, b in itertools.product(range(6), range(6)):
        if a or b:
            expr = "+".join(t for t in (f"SGD{a}" if a else "", f"DGrad{b}" if b else "") if t)
            best = max(best, fuse(store, "toy", expr).metrics["accuracy"])
    (group,) = summarise(store, step=2)
    optimistic = [r for r in group.table2 if r["selection"] == "best on test folds (optimistic)"]
    assert optimistic and optimistic[0]["accuracy"] == pytest.approx(best)


def test_round_two_learnt_nothing_is_judged_on_held_out_predictions(tmp_path):
    """A member below chance on its test folds is flagged however well it fitted its training folds."""
    from ensemble.learn.trainer import TrainConfig
    from ensemble.runs import load_dataset
    from ensemble.store import Store
    from ensemble.tasks import get_task

    folder = _classes(tmp_path / "four", {"a": 8, "b": 8, "c": 8, "d": 6})
    ds = load_dataset(f"folder:{folder}", "datasets", TrainConfig(size=16, workers=0), None)
    rd = Store(tmp_path / "M").run_dir(ds.name, "SGD", 0)
    fitted = [{"curves": {"accuracy": [1.0]}} for _ in ds.folds]
    nothing, why = get_task("classification").learnt_nothing(ds, rd, fitted, {"accuracy": 0.233})
    assert nothing and why.startswith(
        f"learnt nothing: test-fold accuracy 0.2330 is at or below the majority-class rate {8 / 30:.4f}"
    )


# ---- round two: outputs, faults and messages (issue 22)
import errno  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402


@pytest.fixture(scope="module")
def world2(tmp_path_factory) -> Path:
    """One tiny trained member (with fold models), a hand-made store, odd files: what outputs and messages need."""
    root = tmp_path_factory.mktemp("world2")
    make_folder(root / "imgs", per_class=5)
    code = invoke_quiet(
        "train", "--dataset", f"folder:{root / 'imgs'}", "--opt", "sgd", *TINY, "--members-dir", str(root / "T")
    )
    assert code == 0
    (root / "a_file").write_text("not a folder")
    (root / "taken.csv").write_text("path\n")
    (root / "taken_dir").mkdir()
    (root / "random.bin").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4096)))
    (root / "bad_ff").mkdir()
    make_folder(root / "bad_ff", per_class=5)
    (root / "bad_ff" / "a" / "a0.png").rename(root / "bad_ff" / "a" / os.fsdecode(b"a\xff.png"))
    Path(os.fsdecode(bytes(root / "in") + b"\xff.png")).write_bytes((root / "imgs" / "a" / "a0.png").read_bytes())
    import torch

    from ensemble.learn.model import create_model

    torch.save({"model": create_model("test_resnet", 3, pretrained=False), "x": 1}, root / "object.pt")
    return root


def invoke_quiet(*args: str) -> int:
    from tests.conftest import run_ens

    return run_ens(*args).returncode


def _predict(w: Path, *extra: str) -> list[str]:
    return ["predict", "--dataset", "imgs", "--members-dir", str(w / "T"), "SGD1", str(w / "imgs" / "a"), *extra]


def _train2(w: Path, *extra: str, data: str = "imgs") -> list[str]:
    return ["train", "--dataset", f"folder:{w / data}", "--opt", "adam", *TINY, "--members-dir", str(w / "T2"), *extra]


RUN = "T/imgs/SGD/000"
CASES2 = [
    ("predict out in /proc", lambda w: _predict(w, "--out", "/proc/ens-x.csv"), 2, "/proc"),
    ("predict out in /etc", lambda w: _predict(w, "--out", "/etc/ens-x.csv"), 2, "/etc"),
    ("predict out in a run folder", lambda w: _predict(w, "--out", str(w / RUN / "p.csv")), 2, "member store"),
    ("predict out in the store", lambda w: _predict(w, "--out", str(w / "T" / "p.csv")), 2, "member store"),
    ("predict out exists", lambda w: _predict(w, "--out", str(w / "taken.csv")), 2, "already exists"),
    ("predict out under a file", lambda w: _predict(w, "--out", str(w / "a_file" / "p.csv")), 2, "a_file"),
    ("predict out a folder", lambda w: _predict(w, "--out", str(w / "taken_dir.csv")), 0, ""),  # placeholder
    ("predict out new in /", lambda w: _predict(w, "--out", "/ens-nosuch-dir/p.csv"), 2, "root folder"),
    ("predict masks in /sys", lambda w: _predict(w, "--masks", "/sys/ens-masks"), 2, "/sys"),
    ("predict masks in the store", lambda w: _predict(w, "--masks", str(w / RUN / "m")), 2, "member store"),
    ("predict /dev/zero", lambda w: _predict(w)[:-1] + ["/dev/zero"], 2, "not a regular file"),
    ("predict non-UTF-8 name", lambda w: _predict(w)[:-1] + [os.fsdecode(bytes(w / "in") + b"\xff.png")], 1, "UTF-8"),
    ("export into a label folder", lambda w: _export(w, w / "T" / "imgs" / "SGD" / "x"), 2, "member store"),
    ("export into /sys", lambda w: _export(w, Path("/sys/ens-x")), 2, "/sys"),
    ("export over a folder", lambda w: _export(w, w / "taken_dir"), 2, "already exists"),
    ("export under a file", lambda w: _export(w, w / "a_file" / "x"), 2, "a_file"),
    ("report into /", lambda w: ["report", "--members-dir", str(w / "T"), "--out", "/"], 2, "root folder"),
    ("report into the store", lambda w: ["report", "--members-dir", str(w / "T"), "--out", str(w / "T")], 2, "store"),
    ("report into a run", lambda w: ["report", "--members-dir", str(w / "T"), "--out", str(w / RUN)], 2, "store"),
    ("report into /dev", lambda w: ["report", "--members-dir", str(w / "T"), "--out", "/dev/ens-r"], 2, "/dev"),
    ("report new folder in /", lambda w: ["report", "--members-dir", str(w / "T"), "--out", "/ens-r"], 2, "root"),
    ("train binary config", lambda w: _train2(w, "--config", str(w / "random.bin")), 2, "not a text file"),
    ("train config /dev/zero", lambda w: _train2(w, "--config", "/dev/zero"), 2, "not a regular file"),
    ("train weights random bytes", lambda w: _weights(w, w / "random.bin"), 2, "not a PyTorch"),
    ("train weights /dev/zero", lambda w: _weights(w, Path("/dev/zero")), 2, "not a regular file"),
    ("train weights pickled object", lambda w: _weights(w, w / "object.pt"), 2, "asks to load code"),
    ("train unknown weight tag", lambda w: _train2(w, "--model", "resnet18.nosuchtag"), 2, "'nosuchtag'"),
    ("train U-Net on classes", lambda w: _train2(w, "--model", "lighter-unet@4"), 2, "lighter-unet@4"),
    ("train non-UTF-8 file name", lambda w: _train2(w, data="bad_ff"), 1, "a\\xff.png"),
    (
        "fetch unknown medmnist",
        lambda w: ["data", "fetch", "medmnist:nosuchmnist", "--data-dir", str(w / "D")],
        2,
        "bloodmnist",
    ),
    (
        "fuse resamples huge",
        lambda w: [
            "fuse",
            "--dataset",
            "imgs",
            "--members-dir",
            str(w / "T"),
            "SGD1",
            "--ci",
            "--resamples",
            "100000000",
        ],
        2,
        "100000000",
    ),
    ("members missing store", lambda w: ["members", "--members-dir", str(w / "nope")], 2, "nope"),
    (
        "compare with itself",
        lambda w: ["compare", "--dataset", "imgs", "--members-dir", str(w / "T"), "SGD1", "SGD(1)"],
        2,
        "same ensemble",
    ),
]
CASES2 = [c for c in CASES2 if c[2]]  # (the placeholder row above is covered by test_predict_out_is_a_folder)


def _export(w: Path, out: Path) -> list[str]:
    return ["export", "--dataset", "imgs", "SGD1", "--out", str(out), "--members-dir", str(w / "T"), "--no-onnx"]


def _weights(w: Path, path: Path) -> list[str]:
    return [a for a in _train2(w, "--weights", str(path)) if a != "--no-pretrained"]


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> Path:
    """Weights files whose content is wrong, each in its own way, beside one that is right."""
    import timm
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = timm.create_model("test_resnet", num_classes=1000).state_dict()
    save_file(state, root / "good.safetensors")
    whole = (root / "good.safetensors").read_bytes()
    (root / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    (root / "random.safetensors").write_bytes(bytes(random.Random(1).randrange(256) for _ in range(4096)))
    (root / "random.pth").write_bytes(bytes(random.Random(2).randrange(256) for _ in range(4096)))
    torch.save(state, root / "good.pth")
    whole = (root / "good.pth").read_bytes()
    (root / "cut.pth").write_bytes(whole[: len(whole) // 2])
    torch.save([torch.zeros(3)], root / "list.pth")
    torch.save({"conv1.weight": torch.zeros(3), "step": 7}, root / "mixed.pth")
    torch.save({k: v for k, v in state.items() if k != "layer1.0.conv1.weight"}, root / "gone.pth")
    conv = next(k for k, v in state.items() if v.ndim == 4 and v.shape[0] != v.shape[1])
    torch.save({**state, conv: state[conv].transpose(0, 1).contiguous()}, root / "shape.pth")
    return root


WEIGHT_CASES = [
    ("random bytes", "random.pth", "not a PyTorch (.pt/.pth) or .safetensors file"),
    ("random bytes named .safetensors", "random.safetensors", "not a safetensors file"),
    ("truncated safetensors", "cut.safetensors", "not a safetensors file"),
    ("truncated torch file", "cut.pth", "a truncated or damaged PyTorch file"),
    ("a list, not a state dict", "list.pth", "not a state dict of tensors"),
    ("an entry that is not a tensor", "mixed.pth", "entry 'step' is not a tensor"),
    ("a missing tensor", "gone.pth", "missing tensor 'layer1.0.conv1.weight'"),
    ("a misshapen tensor", "shape.pth", "has shape"),
]


@pytest.mark.parametrize(("file", "words"), [c[1:] for c in WEIGHT_CASES], ids=[c[0] for c in WEIGHT_CASES])
def test_a_weights_file_with_bad_content_is_a_usage_error_naming_it(capsys, world, weight_files, file, words):
    """Bad content is bad input, as a bad argument is: exit 2, one line naming the file, before any work."""
    path = weight_files / file
    before = snapshot(world)
    got, out, err = run_cli(capsys, *[a for a in _train(world, "--weights", str(path)) if a != "--no-pretrained"])
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert got == 2, (got, err)
    assert len(errors) == 1 and str(path) in errors[0] and words in errors[0], err
    assert "Traceback" not in err + out and "training run" not in out
    assert snapshot(world) == before and not (world / "T").exists()


@pytest.mark.parametrize("file", ["good.safetensors", "good.pth"])
def test_a_good_weights_file_loads_every_tensor_but_the_head(weight_files, file):
    import torch

    from ensemble.learn.model import create_model, load_report

    model = create_model("test_resnet", 3, weights=weight_files / file)
    report = load_report(model)
    assert report["by"] == "name" and report["tensors_new"] == ["fc.weight", "fc.bias"]
    state = torch.load(weight_files / "good.pth", weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))


def _outside() -> list[Path]:
    return [Path(p) for p in ("/ens-nosuch-dir", "/ens-r", "/etc/ens-x.csv", "/toy", "/imgs")]


@pytest.mark.parametrize(("name", "args", "code", "words"), CASES2, ids=[c[0] for c in CASES2])
def test_round_two_bad_input_gets_one_clear_line(capsys, world2, name, args, code, words):
    before = snapshot(world2)
    got, out, err = run_cli(capsys, *args(world2))
    assert got == code, (name, got, out, err)
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and words in errors[0], (name, err)
    assert "Traceback" not in err + out and "internal error" not in err
    assert "training run" not in out
    assert snapshot(world2) == before  # nothing written, nothing left behind
    assert not any(p.exists() for p in _outside())


def test_round_two_has_at_least_twenty_five_cases():
    assert len(CASES2) >= 25


def test_predict_out_is_a_folder(capsys, world2):
    got, out, err = run_cli(capsys, *_predict(world2, "--out", str(world2 / "taken_dir" / "x.csv")))
    assert got == 0 and (world2 / "taken_dir" / "x.csv").is_file(), err
    (world2 / "taken_dir" / "x.csv").unlink()
    (world2 / "taken_dir.csv").mkdir()
    try:
        got, out, err = run_cli(capsys, *_predict(world2, "--out", str(world2 / "taken_dir.csv")))
        assert got == 2 and "is a directory" in err and "Traceback" not in err, err
    finally:
        (world2 / "taken_dir.csv").rmdir()


def test_predict_into_a_missing_folder_creates_it_and_a_duplicate_is_noted(capsys, world2, tmp_path):
    image = str(world2 / "imgs" / "a" / "a0.png")
    out = tmp_path / "new" / "deeper" / "p.csv"
    args = ["predict", "--dataset", "imgs", "--members-dir", str(world2 / "T"), "SGD1", image, image, "--out", str(out)]
    got, _, err = run_cli(capsys, *args)
    assert got == 0, err
    assert "given more than once" in err and "predicted once" in err
    assert len(out.read_text().splitlines()) == 2  # the header and one row


def test_a_failed_write_leaves_no_partial_file(capsys, world2, tmp_path, monkeypatch):
    """A full disk at the last moment: no 0-byte pred.csv or half table1.md blocks the rerun."""
    import ensemble.io

    def full(fd):  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ensemble.io.os, "fsync", full)
    out = tmp_path / "pred.csv"
    got, _, err = run_cli(capsys, *_predict(world2, "--out", str(out)))
    assert got == 1 and "no space left" in err and "internal error" not in err, err
    got, _, err = run_cli(capsys, "report", "--members-dir", str(world2 / "T"), "--out", str(tmp_path / "R"))
    assert got == 1 and "no space left" in err, err
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []  # no pred.csv, no table1.md, no .tmp
    monkeypatch.undo()
    got, _, err = run_cli(capsys, *_predict(world2, "--out", str(out)))
    assert got == 0 and out.stat().st_size > 0, err


def test_export_folder_and_files_get_the_umask_modes(capsys, world2, tmp_path):
    old = os.umask(0o022)
    try:
        got, _, err = run_cli(capsys, *_export(world2, tmp_path / "exp"))
    finally:
        os.umask(old)
    assert got == 0, err
    assert (tmp_path / "exp").stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644) for p in (tmp_path / "exp").rglob("*"))


def test_short_disk_refuses_training_once_before_any_fold(capsys, world2, tmp_path, monkeypatch):
    import shutil

    import ensemble.outputs

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ensemble.outputs.shutil, "disk_usage", lambda p: usage._replace(free=100_000))
    members = tmp_path / "M"
    got, out, err = run_cli(capsys, *_train2(world2)[:-1], str(members))
    assert got == 1 and "disk space" in err and "nothing was started" in err, err
    assert "training run" not in out and not list(members.rglob("fold-*"))


def test_no_space_during_training_stops_the_job_once(capsys, world2, tmp_path, monkeypatch):
    """ENOSPC while a fold is written: one line, the fold is not trained again, the job stops."""
    import ensemble.runs

    calls = []

    def full(*args, **kw):  # noqa: ANN002, ANN003
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device", "fold-0.npz")

    monkeypatch.setattr(ensemble.runs, "stage_fold", full)
    got, out, err = run_cli(capsys, *_train2(world2)[:-1], str(tmp_path / "M"))
    assert got == 1 and len(calls) == 1, (calls, err)
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "no space left" in errors[0] and "the job stopped" in errors[0], err
    assert "retrying" not in out + err


def test_resamples_bounded_by_memory(world2, monkeypatch):
    import ensemble as ens
    import ensemble.fusion.stats as stats
    from ensemble.errors import UsageError

    monkeypatch.setattr(stats, "available_memory", lambda: 2**20)
    with pytest.raises(UsageError, match=r"--resamples 100000: .* over the bound of .*use at most \d+"):
        ens.fuse(["SGD1"], dataset="imgs", members_dir=world2 / "T", ci=True, resamples=100_000)


def test_stem_small_with_a_unet_refused_before_training(capsys, tmp_path):
    from tests.test_segmentation import make_seg_folder

    data = make_seg_folder(tmp_path / "seg", n=6)
    args = [
        "train",
        "--dataset",
        f"seg:{data}",
        "--opt",
        "adam",
        "--model",
        "lighter-unet@4",
        "--stem",
        "small",
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
    ]
    got, out, err = run_cli(capsys, *args)
    assert got == 2 and "--stem small" in err and "Traceback" not in err, err
    args[args.index("lighter-unet@4")] = "resnet18"
    got, out, err = run_cli(capsys, *[a for a in args if a not in ("--stem", "small")])
    assert got == 2 and "--model resnet18" in err and "U-Net" in err, err
    assert not (tmp_path / "M").exists()


def test_half_written_staging_never_blocks_and_stray_tmp_never_published(capsys, world2, tmp_path):
    """A kill right after the staging folder was made (only a .recipe.json.*.tmp in it), and a kill during
    member.json's write (a .member.json.*.tmp): the rerun resumes, and no tmp file reaches the member."""
    members = tmp_path / "M"
    staging = members / "imgs" / "Adam" / ".000.staging"
    staging.mkdir(parents=True)
    (staging / ".recipe.json.k1ll3d.tmp").write_text('{"mod')
    got, _, err = run_cli(capsys, *_train2(world2)[:-1], str(members))
    assert got == 0, err
    run = members / "imgs" / "Adam" / "000"
    assert (run / "member.json").is_file() and not list(run.rglob("*.tmp")) and not staging.exists()
    (run / ".member.json.x.tmp").write_text("{")  # as a publish killed during that write leaves it
    got, out, err = run_cli(capsys, *_train2(world2)[:-1], str(members))
    assert got == 0 and "nothing to train" in out and not list(run.rglob("*.tmp")), err


def test_second_train_waits_for_the_label_lock(world2, tmp_path):
    """A second `ens train` of a label being trained waits (saying so), within --lock-timeout, then trains what
    is missing; past the bound it fails with one line."""
    from tests.conftest import run_ens

    members = tmp_path / "M"
    hold = (
        "import sys, time; from ensemble.store import Store\n"
        f"with Store({str(members)!r}).try_lock('imgs', 'Adam') as got:\n"
        "    print('held', flush=True); time.sleep(float(sys.argv[1]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", hold, "30"], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    try:
        res = run_ens(*_train2(world2)[:-1], str(members), "--lock-timeout", "0.5")
        assert res.returncode == 1 and "--lock-timeout" in res.stderr and "being trained" in res.stdout, res
        assert not list(members.rglob("fold-*"))
    finally:
        holder.kill()
        holder.wait()
    holder = subprocess.Popen([sys.executable, "-c", hold, "2"], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    res = run_ens(*_train2(world2)[:-1], str(members), "--lock-timeout", "60")
    holder.wait()
    assert res.returncode == 0 and "waiting for it" in res.stdout, res
    assert (members / "imgs" / "Adam" / "000" / "member.json").is_file()


# -------- kill trials: SIGKILL at random instants, rerun without --restart, compare with an uninterrupted run
KILL_TRIALS = int(os.environ.get("ENS_KILL_TRIALS", "4"))
KILL_FOLDS, KILL_RUNS = 2, 2  # two predefined folds, two runs: four fold trainings and two publishes per job
KILL_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _kill_args(data: Path, members: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ensemble.cli",
        "train",
        "--dataset",
        f"folder:{data}",
        "--opt",
        "sgd",
        "--n",
        str(KILL_RUNS),
        *tiny(2, "--checkpoint-every", "0"),
        "--threads",
        "1",
        "--members-dir",
        str(members),
    ]


def _members_of(members: Path) -> dict[str, tuple]:
    """Each run's seeds, recipe and fold probabilities: equal to an uninterrupted run's means no fold was lost
    or trained again to another result."""
    out = {}
    for meta_path in sorted(members.glob("*/*/[0-9]*/member.json")):
        meta = json.loads(meta_path.read_text())
        folds = tuple(np.load(p)["probs"].round(5).tobytes() for p in sorted(meta_path.parent.glob("fold-*.npz")))
        out[meta_path.parent.name] = (tuple(meta["seed"]), meta["recipe_hash"], folds)
    return out


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory) -> tuple[Path, dict, float]:
    """The uninterrupted job: its members, and how long it took here (the kill instants scale with it, so a
    loaded machine is killed at the same stages as an idle one)."""
    root = tmp_path_factory.mktemp("kill")
    for fold in ("f1", "f2"):
        make_folder(root / "imgs" / fold, classes=("a", "b"), per_class=3, seed=len(fold) + (fold == "f2"))
    started = time.perf_counter()
    res = subprocess.run(_kill_args(root / "imgs", root / "ref"), capture_output=True, text=True, env=KILL_ENV)
    assert res.returncode == 0, res.stderr
    return root / "imgs", _members_of(root / "ref"), time.perf_counter() - started


@pytest.mark.parametrize("trial", range(KILL_TRIALS))
def test_kill_at_a_random_instant_then_rerun(kill_reference, tmp_path, trial):
    data, reference, took = kill_reference
    members = tmp_path / "M"
    rng = random.Random(trial)
    # the first 100 ms (staging being made), mid-training, and late (the last folds, the publishes)
    delays = [rng.uniform(0, 0.1), rng.uniform(0.1, 0.6 * took), rng.uniform(0.6 * took, 1.05 * took)]
    for delay in delays[: 1 + trial % 3] if trial % 4 != 3 else delays:
        proc = subprocess.Popen(
            _kill_args(data, members), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=KILL_ENV
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    published = list(members.glob("*/*/[0-9]*/member.json"))  # a staging folder may hold member.json too
    finished = len(list(members.glob("*/*/.*.staging/fold-*.json"))) + KILL_FOLDS * len(published)
    res = subprocess.run(_kill_args(data, members), capture_output=True, text=True, env=KILL_ENV)
    said = res.stdout + res.stderr
    assert res.returncode == 0, said
    assert "another recipe" not in said and "retrying" not in said
    assert said.count(" done in ") == KILL_FOLDS * KILL_RUNS - finished  # only the unfinished folds: none twice
    assert _members_of(members) == reference  # no fold lost, every result that of an uninterrupted run
    assert not list(members.rglob(".*.staging")) and not list(members.rglob("*.tmp"))
