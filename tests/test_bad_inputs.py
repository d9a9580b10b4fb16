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

from tests.conftest import make_folder, run_cli, tiny, write_member

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
