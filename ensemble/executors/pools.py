"""Worker pools the coordinator hands fold tasks to: joblib's loky processes, or Dask.

Both look the same to the coordinator (:func:`ensemble.executors.job.run_pool`): submit a
task, wait for some to finish, read an outcome that says whether the task itself failed
or the process running it was lost.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import EnsError, first_line
from ..runs import FoldTask
from .worker import WorkerSetup, probe, run_fold


@dataclass
class Outcome:
    summary: dict[str, Any] | None
    error: BaseException | None = None
    lost_worker: bool = False  # the process died under the task: not the task's own failure


class Pool(Protocol):
    name: str
    capacity: int | None  # tasks handed out at a time; None: all at once (the scheduler queues them)

    def submit(self, task: FoldTask, attempt: int) -> Any: ...

    def wait(self, handles: Iterable[Any], timeout: float) -> set[Any]: ...

    def outcome(self, handle: Any) -> Outcome: ...

    def close(self, cancel: bool) -> None: ...


def visible_gpus() -> tuple[str, ...]:
    """The GPU ids this process may hand to workers (honours an existing CUDA_VISIBLE_DEVICES)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        return ()
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return tuple(listed[:count]) if listed else tuple(str(i) for i in range(count))


def default_jobs(gpus: tuple[str, ...]) -> int:
    """One worker per GPU; two on a machine without one."""
    return len(gpus) or 2


def usable_cores() -> int:
    """The cores this process may run on (its affinity, e.g. a batch job's share), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_threads(executor: str, jobs: int | None, *, remote: bool = False) -> int:
    """torch threads of each CPU fold task: every core when tasks run one after another here, an even share
    of them in a local pool, and 1 on a remote cluster (whose cores this process cannot see)."""
    if remote:
        return 1
    if executor == "local":
        return usable_cores()
    return max(1, usable_cores() // (jobs or default_jobs(())))


def local_setup(jobs: int, device: str, gpus: tuple[str, ...]) -> WorkerSetup:
    """Share this machine out: a GPU per worker (when --device lets us choose), CPU threads evenly."""
    threads = max(1, usable_cores() // jobs)
    if device not in ("auto", "cuda") or not gpus:
        return WorkerSetup(threads=threads, coordinator=os.getpid())
    return WorkerSetup(
        threads=threads, gpus=gpus, claim_dir=tempfile.mkdtemp(prefix="ens-gpu-claims-"), coordinator=os.getpid()
    )


def _forget_claims(setup: WorkerSetup) -> None:
    if setup.claim_dir:
        shutil.rmtree(setup.claim_dir, ignore_errors=True)


class ProcessPool:
    """``--executor processes``: joblib's loky workers on this machine.

    A worker that dies breaks a loky executor, failing every task it was running; the
    next submission starts a fresh executor, and only tasks of the current executor mark
    it broken (so late failures of the old one do not throw away the new one).
    """

    name = "processes"

    def __init__(self, jobs: int, setup: WorkerSetup) -> None:
        self.jobs, self.setup = jobs, setup
        self.capacity = jobs  # queued tasks would fail too when a worker dies and breaks the executor
        self._executor: Any = None
        self._owner: dict[concurrent.futures.Future, Any] = {}

    def _current(self) -> Any:
        if self._executor is None:
            from joblib.externals.loky import ProcessPoolExecutor

            self._executor = ProcessPoolExecutor(max_workers=self.jobs)
        return self._executor

    def submit(self, task: FoldTask, attempt: int) -> concurrent.futures.Future:
        executor = self._current()
        future = executor.submit(run_fold, task, self.setup)
        self._owner[future] = executor
        return future

    def wait(self, handles: Iterable[Any], timeout: float) -> set[Any]:
        done, _ = concurrent.futures.wait(list(handles), timeout, concurrent.futures.FIRST_COMPLETED)
        return done

    def outcome(self, handle: concurrent.futures.Future) -> Outcome:
        from joblib.externals.loky.process_executor import BrokenProcessPool

        owner = self._owner.pop(handle, None)
        try:
            return Outcome(handle.result())
        except BrokenProcessPool as err:
            if owner is self._executor:
                self._executor.shutdown(wait=False, kill_workers=True)
                self._executor = None
            return Outcome(None, err, lost_worker=True)
        except Exception as err:  # noqa: BLE001 -- the task's own failure, reported by the coordinator
            return Outcome(None, err)

    def close(self, cancel: bool) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=not cancel, kill_workers=cancel)
            self._executor = None
        _forget_claims(self.setup)


class DaskPool:
    """``--executor dask``: a client to a running scheduler, or a LocalCluster of worker processes.

    Dask already reschedules the task of a worker that dies (up to its
    ``distributed.scheduler.allowed-failures``); a task that raises comes back to the
    coordinator, which submits it again under a new key.
    """

    name = "dask"
    capacity = None

    def __init__(
        self, scheduler: str | None, jobs: int, setup: WorkerSetup, store_dir: str, echo: Callable[[str], None]
    ) -> None:
        try:
            import dask
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise EnsError(
                "--executor dask needs dask.distributed: pip install 'ens[dask]' (or pip install 'dask[distributed]')"
            ) from None
        self.cluster = None
        self.token = uuid.uuid4().hex[:8]
        if scheduler:
            try:
                self.client = Client(scheduler)  # waits distributed.comm.timeouts.connect (Dask's config)
            except (OSError, TimeoutError) as err:
                raise EnsError(
                    f"cannot reach the Dask scheduler at {scheduler} ({err}); start one with "
                    "`dask scheduler` and its workers with `dask worker ADDRESS`"
                ) from None
            self.setup = setup  # remote workers bring their own GPU (CUDA_VISIBLE_DEVICES / dask-cuda)
            self._check_workers(scheduler, store_dir, echo)
        else:
            # non-daemonic workers may start DataLoader processes; no memory limit: training is not
            # Dask data, and a nanny killing a worker for it would only make the task run again
            with dask.config.set({"distributed.worker.daemon": False}):
                # Dask's own log lines (a task's traceback, a nanny restarting a worker) would tear the
                # progress display; the coordinator reports both itself
                self.cluster = LocalCluster(
                    n_workers=jobs,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    memory_limit=0,
                    silence_logs=logging.CRITICAL,
                )
            self.client = Client(self.cluster)
            self.setup = setup

    def _check_workers(self, scheduler: str, store_dir: str, echo: Callable[[str], None]) -> None:
        """Fail early, by name, on workers that lack ens or do not see the store we write."""
        from .. import __version__

        if not self.client.scheduler_info().get("workers"):
            echo(f"the scheduler at {scheduler} has no workers yet; tasks wait until `dask worker` joins")
            return
        try:
            seen = self.client.run(probe, store_dir)
        except Exception as err:  # noqa: BLE001 -- typically: ens is not importable on a worker
            raise EnsError(
                f"the Dask workers of {scheduler} cannot run ens tasks ({first_line(err)}); "
                "install ens in the workers' Python environment"
            ) from None
        blind = [w for w, info in seen.items() if not info["store"]]
        if blind:
            raise EnsError(
                f"{len(blind)} Dask worker(s) do not see the member store {store_dir} "
                f"(e.g. {blind[0]}): workers must share the store and dataset paths"
            )
        other = sorted({info["ens"] for info in seen.values()} - {__version__})
        if other:
            echo(f"warning: Dask workers run ens {', '.join(other)}, this process {__version__}")

    def submit(self, task: FoldTask, attempt: int) -> Any:
        key = f"ens-train-{self.token}-{task.key}-attempt{attempt}"  # a retry must not reuse the erred key
        return self.client.submit(run_fold, task, self.setup, key=key, pure=False)

    def wait(self, handles: Iterable[Any], timeout: float) -> set[Any]:
        from dask.distributed import wait

        handles = list(handles)
        with contextlib.suppress(TimeoutError):
            wait(handles, timeout=timeout, return_when="FIRST_COMPLETED")
        return {h for h in handles if h.done()}

    def outcome(self, handle: Any) -> Outcome:
        try:
            return Outcome(handle.result())
        except Exception as err:  # noqa: BLE001 -- KilledWorker included: Dask's own retries are spent
            return Outcome(None, err)
        finally:
            handle.release()

    def close(self, cancel: bool) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()
            _forget_claims(self.setup)


def make_pool(
    executor: str,
    jobs: int | None,
    scheduler: str | None,
    device: str,
    store_dir: str,
    echo: Callable[[str], None],
    *,
    lease_token: str | None = None,
) -> Pool:
    """The pool of ``--executor processes`` or ``--executor dask`` (local cluster, or ``scheduler``)."""
    if executor == "dask" and scheduler:
        if jobs:
            echo("note: --jobs has no effect with --scheduler: the cluster's workers set the parallelism")
        return DaskPool(scheduler, 0, WorkerSetup(lease_token=lease_token), store_dir, echo)
    gpus = visible_gpus() if device in ("auto", "cuda") else ()
    n = jobs or default_jobs(gpus)
    setup = local_setup(n, device, gpus)
    return ProcessPool(n, setup) if executor == "processes" else DaskPool(None, n, setup, store_dir, echo)
