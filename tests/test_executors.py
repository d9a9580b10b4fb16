"""Scale-out: the same members from every executor, workers killed mid-run, failures retried once.

Every run here is real: the `ens` CLI in a subprocess, joblib's loky workers, and Dask
LocalClusters of worker processes, on 30 tiny images and timm's ``test_resnet``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_folder, stage_run, tiny

pytestmark = pytest.mark.slow

# --threads 1: CPU results depend on the thread count, which by default differs between executors (every
# core here, a share of them per pool worker); at one count every executor trains the same members
TINY = tiny(4, "--batch-size", "8", "--threads", "1", "--checkpoint-every", "0")


def train_args(folder: Path, members: Path, *extra: str, n: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ensemble.cli",
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
    ]


def run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def read_store(members: Path, folder: Path, label: str = "DGrad") -> dict[str, dict]:
    """run name -> {ids, probs, labels, meta}, every fold concatenated in fold order."""
    out = {}
    label_dir = members / folder.name / label
    for run_dir in sorted(label_dir.iterdir()):
        if run_dir.name.startswith("."):
            continue
        meta = json.loads((run_dir / "member.json").read_text())
        parts = [np.load(run_dir / f"fold-{k}.npz") for k in range(meta["folds"])]
        out[run_dir.name] = {
            "meta": meta,
            "ids": np.concatenate([p["ids"] for p in parts]),
            "probs": np.concatenate([p["probs"] for p in parts]),
            "labels": np.concatenate([p["labels"] for p in parts]),
        }
    return out


def assert_same_members(got: dict, want: dict, folder: Path) -> None:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(got) == sorted(want)
    for name, member in want.items():
        other = got[name]
        assert sorted(other["ids"].tolist()) == files  # every image exactly once: nothing lost or duplicated
        assert other["ids"].tolist() == member["ids"].tolist()
        np.testing.assert_array_equal(other["labels"], member["labels"])
        np.testing.assert_allclose(other["probs"], member["probs"], atol=1e-5, rtol=0)
        for key in ("seed", "fingerprint", "classes", "folds", "optimizer", "fold_accuracy"):
            assert other["meta"][key] == member["meta"][key], key


def assert_nothing_hidden_left(members: Path, folder: Path) -> None:
    assert not list((members / folder.name / "DGrad").glob(".*.staging"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("data") / "imgs", per_class=10)


@pytest.fixture(scope="module")
def local_store(folder, tmp_path_factory) -> dict:
    members = tmp_path_factory.mktemp("local") / "M"
    res = run(train_args(folder, members))
    assert res.returncode == 0, res.stderr
    assert "10/10 tasks done" in res.stdout
    return read_store(members, folder)


@pytest.mark.parametrize("executor", ["processes", "dask"])
def test_executor_matches_local(executor, folder, local_store, tmp_path):
    members = tmp_path / "M"
    res = run(train_args(folder, members, "--executor", executor, "--jobs", "2"))
    assert res.returncode == 0, res.stderr
    assert "10/10 tasks done, 0 running, 0 failed" in res.stdout
    assert_same_members(read_store(members, folder), local_store, folder)
    assert_nothing_hidden_left(members, folder)


@pytest.mark.parametrize("executor", ["processes", "dask"])
def test_dataloader_processes_inside_pool_workers(executor, folder, local_store, tmp_path):
    """--workers 2 starts DataLoader processes inside loky/Dask workers; same batches, same member."""
    members = tmp_path / "M"
    res = run(train_args(folder, members, "--executor", executor, "--jobs", "2", "--workers", "2", n=1))
    assert res.returncode == 0, res.stderr
    assert_same_members(read_store(members, folder), {"000": local_store["000"]}, folder)


def test_several_optimizers_in_one_job(folder, local_store, tmp_path):
    """--opt sgd,dgrad: one pool serves both; each member is what a job of its own would make."""
    members = tmp_path / "M"
    args = train_args(folder, members, "--executor", "processes", "--jobs", "2", n=1)
    args[args.index("dgrad")] = "sgd,dgrad"
    res = run(args)
    assert res.returncode == 0, res.stderr
    assert "10/10 tasks done" in res.stdout
    assert_same_members(read_store(members, folder), {"000": local_store["000"]}, folder)
    sgd = read_store(members, folder, "SGD")["000"]
    assert sgd["meta"]["label"] == "SGD" and sorted(sgd["ids"].tolist()) == sorted(local_store["000"]["ids"].tolist())


def kill_a_running_worker(proc: subprocess.Popen, label_dir: Path, timeout: float = 120) -> int:
    """SIGKILL the worker process that is training some fold, once it has finished an epoch."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for record in label_dir.glob(".*.staging/scratch/progress-*.json"):
            try:
                info = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if info["epoch"] >= 1:
                pid = int(info["where"].rsplit(":", 1)[1])
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.02)
    raise AssertionError("no fold task reported progress in time")


@pytest.mark.parametrize("executor", ["dask", "processes"])
def test_killing_a_worker_mid_run_still_completes(executor, folder, local_store, tmp_path):
    members = tmp_path / "M"
    proc = subprocess.Popen(
        train_args(folder, members, "--executor", executor, "--jobs", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = kill_a_running_worker(proc, members / folder.name / "DGrad")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert killed != proc.pid
    assert "10/10 tasks done" in out and "0 failed" in out
    assert_same_members(read_store(members, folder), local_store, folder)  # resumed exactly, nothing twice
    assert_nothing_hidden_left(members, folder)


def test_workers_exit_when_the_coordinator_is_killed(folder, tmp_path):
    """SIGKILL of `ens train` leaves no loky worker training a fold nobody waits for."""
    members = tmp_path / "M"
    args = train_args(folder, members, "--executor", "processes", "--jobs", "2")
    args[args.index("4")] = "200"  # --epochs: long enough to be mid-fold when killed
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    label_dir = members / folder.name / "DGrad"
    deadline = time.time() + 120
    workers: set[int] = set()
    while time.time() < deadline and not workers:
        for record in label_dir.glob(".*.staging/scratch/progress-*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                workers.add(int(json.loads(record.read_text())["where"].rsplit(":", 1)[1]))
        time.sleep(0.05)
    assert workers, "no worker reported progress"
    proc.kill()
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)
    assert not (label_dir / "000").exists()  # nothing half-done became visible


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too: it only waits for its (gone) parent to reap it
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_remote_scheduler(folder, local_store, tmp_path):
    """A scheduler and workers started apart from ens, as on a cluster; ens connects by address."""
    from dask.distributed import LocalCluster

    members = tmp_path / "M"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        res = run(train_args(folder, members, "--executor", "dask", "--scheduler", cluster.scheduler_address, n=1))
    assert res.returncode == 0, res.stderr
    assert_same_members(read_store(members, folder), {"000": local_store["000"]}, folder)


def test_failing_task_retried_once_then_reported(folder, tmp_path):
    """A fold that cannot resume (a corrupt checkpoint) fails twice; the other run still lands."""
    members = tmp_path / "M"
    scratch = stage_run(folder, members, epochs=4, batch_size=8, size=16) / "scratch"
    scratch.mkdir(parents=True)
    (scratch / "fold-2.ckpt").write_bytes(b"not a checkpoint")
    res = run(train_args(folder, members, "--executor", "dask", "--jobs", "2"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "retrying once" in res.stdout and "failed again" in res.stdout
    assert str(scratch / "fold-2.ckpt") in res.stderr and "delete it" in res.stderr
    assert "1 run(s) not stored, 1 stored" in res.stderr
    label_dir = members / folder.name / "DGrad"
    assert (label_dir / "001" / "member.json").exists() and not (label_dir / "000").exists()
    # the finished folds of the failed run stay staged, so fixing the cause and rerunning trains one fold
    assert len(list((label_dir / ".000.staging").glob("fold-*.npz"))) == 4


def test_flaky_task_is_retried_in_process(folder, tmp_path, monkeypatch):
    """--executor local: an error in one fold is retried once; the run completes."""
    from ensemble.executors import job
    from ensemble.learn.trainer import TrainConfig
    from ensemble.training import TrainRequest, train_members

    calls: list[str] = []
    real = job.train_fold_task

    def flaky(task, **kw):
        calls.append(task.key)
        if task.fold == 1 and calls.count(task.key) == 1:
            raise OSError("NFS hiccup")
        return real(task, **kw)

    monkeypatch.setattr(job, "train_fold_task", flaky)
    cfg = TrainConfig(model="test_resnet", epochs=1, size=16, device="cpu", workers=0, pretrained=False)
    lines: list[str] = []
    out = train_members(
        TrainRequest(f"folder:{folder}", "SGD", 1, cfg, tmp_path / "M", tmp_path, progress=False), echo=lines.append
    )
    assert [p.name for p in out] == ["000"]
    assert calls.count("SGD/000/fold-1") == 2 and calls.count("SGD/000/fold-0") == 1


def test_unexpected_error_keeps_its_traceback(folder, tmp_path, monkeypatch):
    """A bug (not an EnsError) in a fold: reported in one line, its traceback kept in staging."""
    from ensemble.errors import EnsError
    from ensemble.executors import job
    from ensemble.learn.trainer import TrainConfig
    from ensemble.training import TrainRequest, train_members

    def broken(task, **kw):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(job, "train_fold_task", broken)
    cfg = TrainConfig(model="test_resnet", epochs=1, size=16, device="cpu", workers=0, pretrained=False)
    with pytest.raises(EnsError) as info:
        train_members(
            TrainRequest(f"folder:{folder}", "SGD", 1, cfg, tmp_path / "M", tmp_path, progress=False),
            echo=lambda line: None,
        )
    message = str(info.value)
    assert "1 run(s) not stored, 0 stored" in message and "ZeroDivisionError: division by zero" in message
    kept = tmp_path / "M" / folder.name / "SGD" / ".000.staging" / "scratch" / "fold-0.error.txt"
    assert f"(traceback: {kept})" in message
    assert "Traceback (most recent call last)" in kept.read_text() and "def broken" not in message


def test_gpu_claims_are_distinct_per_process(tmp_path):
    """Each worker process takes its own GPU; a third worker for two GPUs shares one."""
    code = (
        "import sys, os; from ensemble.executors.worker import claim_gpu\n"
        f"print(claim_gpu(('3', '5'), {str(tmp_path)!r}), os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
        "sys.stdin.read()"
    )
    procs, seen = [], []
    try:
        for _ in range(3):  # one after another, each holding its claim while the next starts
            procs.append(
                subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
            seen.append(procs[-1].stdout.readline().split())
    finally:
        for p in procs:
            p.communicate("")
    claimed = [s[0] for s in seen]
    assert all(s[0] == s[1] for s in seen)  # CUDA_VISIBLE_DEVICES is set to the claimed GPU
    assert sorted(claimed[:2]) == ["3", "5"] and claimed[2] in ("3", "5")


def test_scheduler_without_dask_executor_is_a_usage_error(folder, tmp_path):
    res = run(train_args(folder, tmp_path / "M", "--scheduler", "tcp://127.0.0.1:8786"))
    assert res.returncode == 2 and "--scheduler is for --executor dask" in res.stderr


def test_unreachable_scheduler_is_one_clear_line(folder, tmp_path):
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    res = subprocess.run(
        train_args(folder, tmp_path / "M", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in res.stderr and "dask scheduler" in res.stderr
