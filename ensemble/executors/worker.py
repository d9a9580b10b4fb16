"""What runs inside a worker process (a loky worker, a Dask worker): one fold task.

The worker takes its own GPU before anything touches CUDA, sizes torch's thread pool
to its share of the CPU, reports progress through a file in the run's staging
directory, and turns any failure into a :class:`TaskError` that pickles back to the
coordinator with the host, the process and the reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import EnsError, first_line
from .lease import LeaseCheck
from .progress import ProgressWriter, worker_name


class TaskError(EnsError):
    """A fold task failed in a worker; ``where`` names the process; ``detail`` holds the traceback
    of an unexpected error (an :class:`EnsError` says all there is to say in its message)."""

    def __init__(self, message: str, where: str = "", detail: str = "", no_space: bool = False) -> None:
        super().__init__(message)
        self.where, self.detail, self.no_space = where, detail, no_space

    def __reduce__(self) -> tuple:
        return TaskError, (str(self), self.where, self.detail, self.no_space)

    @classmethod
    def wrap(cls, err: BaseException) -> TaskError:
        from ..outputs import NoSpace, environment_fault, is_no_space

        if isinstance(err, NoSpace) or is_no_space(err):  # a full disk: retrying the fold would fill it again
            line = str(err) if isinstance(err, NoSpace) else environment_fault(err)
            return cls(line, worker_name(), no_space=True)
        if isinstance(err, EnsError):
            return cls(str(err), worker_name())
        # a bug or an environment problem: say where it happened, keep the whole traceback
        frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
        at = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
        return cls(first_line(err) + at, worker_name(), "".join(traceback.format_exception(err)))


@dataclass(frozen=True)
class WorkerSetup:
    """How a pool on this machine shares it out among its worker processes."""

    threads: int | None = None  # torch intra-op threads per worker; None leaves torch's default
    gpus: tuple[str, ...] = ()  # GPU ids to hand out, one per worker process
    claim_dir: str | None = None  # where workers lock the GPU they took
    coordinator: int | None = None  # pid of the `ens train` that started this machine's pool
    lease_token: str | None = None  # remote workers: the job's lease (see .lease), checked while training


_GPU: str | None = None
_CLAIMS: list = []  # filelock.FileLock objects held for the life of the process


def claim_gpu(gpus: tuple[str, ...], claim_dir: str) -> str:
    """Take a GPU no other worker of the pool holds and make it this process's only visible one.

    The claim is a file lock held for the life of the process, so the OS frees it when a
    worker dies and its replacement takes the same GPU. With more workers than GPUs the
    extra ones share, spread by process id.
    """
    import filelock

    global _GPU
    if _GPU is not None:
        return _GPU
    chosen = None
    for gpu in gpus:
        claim = filelock.FileLock(Path(claim_dir) / f"gpu-{gpu}.lock")
        try:
            claim.acquire(timeout=0)
        except filelock.Timeout:
            continue
        _CLAIMS.append(claim)
        chosen = gpu
        break
    if chosen is None:
        chosen = gpus[os.getpid() % len(gpus)]
    os.environ["CUDA_VISIBLE_DEVICES"] = chosen  # read by CUDA when it first initialises, which is later
    _GPU = chosen
    return chosen


_WATCHING = False


def exit_with_coordinator(pid: int, every: float = 2.0) -> None:
    """End this worker process when the ``ens train`` that started its pool is gone.

    loky workers outlive a coordinator killed by SIGKILL (or a lost terminal): they would
    go on training a fold nobody waits for and keep its GPU. A daemon thread checks.
    """
    global _WATCHING
    if _WATCHING:
        return
    _WATCHING = True

    def watch() -> None:
        while True:
            time.sleep(every)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:  # alive, another user's (pid reused): keep going
                pass

    threading.Thread(target=watch, name="ens-coordinator-watch", daemon=True).start()


_MALLOC_TUNED = False


def restore_malloc_thresholds() -> None:
    """Undo the effect of Dask's ``MALLOC_TRIM_THRESHOLD_`` on a training process.

    Dask's nanny starts workers with that variable set; setting it turns off glibc's
    adaptive mmap threshold, so every tensor over 128 KiB is mapped and unmapped anew
    and training runs ~1.7x slower (measured, resnet18 on CPU). Setting the thresholds
    to glibc's own adaptive ceiling (32 MiB) gives the speed back.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)
    except (OSError, AttributeError):  # not glibc: nothing to undo
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def run_fold(task: Any, setup: WorkerSetup) -> dict[str, Any]:
    """Worker entry point: train one (run, fold) and return its summary (small, picklable)."""
    restore_malloc_thresholds()
    if setup.coordinator:
        exit_with_coordinator(setup.coordinator)
    try:
        return _run_fold(task, setup)
    except Exception as err:  # noqa: BLE001 -- everything goes back to the coordinator, pickled safely
        raise TaskError.wrap(err) from None


def _run_fold(task: Any, setup: WorkerSetup) -> dict[str, Any]:
    from ..runs import epoch_images, load_dataset, train_fold_task

    gpu = claim_gpu(setup.gpus, setup.claim_dir or "/tmp") if setup.gpus else None
    import torch

    if setup.threads:
        torch.set_num_threads(setup.threads)
    cfg = task.config
    if cfg.workers and multiprocessing.current_process().daemon:
        # daemonic workers (Dask's default) may not start DataLoader processes; augmentation is
        # seeded per image, so loading in-process gives the same batches
        task = replace(task, config=replace(cfg, workers=0))
    ds = load_dataset(task.spec, task.data_dir, task.config, task.cache_dir)
    writer = ProgressWriter(task.run_dir().progress(task.fold), epoch_images(ds, task.fold, cfg.batch_size))
    on_batch, on_epoch = writer.batch, writer.epoch_done
    if setup.lease_token:
        check = LeaseCheck(task.run_dir().label_dir, setup.lease_token)
        check()  # a task that was queued while its job died never starts

        def on_batch(n: int) -> None:
            writer.batch(n)
            check()

        def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
            check()
            writer.epoch_done(epoch, loss, accuracy)

    summary = train_fold_task(task, on_start=writer.start, on_batch=on_batch, on_epoch=on_epoch)
    return {**summary, "where": worker_name() + (f" gpu {gpu}" if gpu is not None else "")}


def probe(store_dir: str) -> dict[str, Any]:
    """What a remote worker can see: its ens version and whether the store is shared with us."""
    from .. import __version__

    return {"ens": __version__, "store": os.path.isdir(store_dir), "where": worker_name()}
