"""Running the (run, fold) tasks of ``ens train``: here, in worker processes, or on a Dask cluster.

The coordinating process plans the missing runs, holds each run's lock, hands out fold
tasks (:mod:`.pools`), and assembles a run when its last fold lands (:mod:`.job`).
Workers (:mod:`.worker`) only write into the run's hidden staging directory, so nothing
partial ever becomes visible, and report progress through files there (:mod:`.progress`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..data.dataset import Dataset
from ..errors import EnsError, UsageError
from ..members import FoldTask, _dataset, plan_runs
from ..optim import get
from ..store import Store, run_name
from ..train.trainer import TrainConfig
from .job import Job, run_local, run_pool
from .pools import make_pool
from .progress import JobProgress

EXECUTORS = ("local", "processes", "dask")

__all__ = ["EXECUTORS", "TrainRequest", "train_members"]


@dataclass
class TrainRequest:
    """One ``ens train``: ``n`` members of each optimizer in ``label`` (one label, or several)."""

    spec: str
    label: str | Sequence[str]
    n: int
    config: TrainConfig
    store_root: Path
    data_dir: Path
    cache_dir: Path | None = None
    executor: str = "local"
    jobs: int | None = None
    scheduler: str | None = None
    progress: bool = True

    @property
    def labels(self) -> list[str]:
        names = [self.label] if isinstance(self.label, str) else list(self.label)
        return list(dict.fromkeys(get(name).label for name in names))  # registry spelling, no repeats


def train_members(req: TrainRequest, echo: Callable[[str], None] = print) -> list[Path]:
    """Make sure ``req.n`` complete members of each label exist; returns the new run directories.

    All missing folds of all labels form one job, so a pool is kept busy across optimizers.
    """
    if req.executor not in EXECUTORS:
        raise UsageError(f"unknown executor {req.executor!r}; use {', '.join(EXECUTORS)}")
    if req.scheduler and req.executor != "dask":
        raise UsageError("--scheduler is for --executor dask")
    labels = req.labels
    cache = str(Path(req.cache_dir).resolve()) if req.cache_dir else None
    ds = _dataset(req.spec, str(req.data_dir), req.config.size, cache, req.config.workers)
    for w in ds.warnings:
        echo(f"warning: {w}")
    store = Store(req.store_root)
    todo = {}
    for label in labels:
        todo[label], existing = plan_runs(ds, label, req.n, store)
        if not todo[label]:
            echo(f"{ds.name}/{label}: {len(existing)} complete member(s) already; nothing to train")
    if not any(todo.values()):
        return []
    _preflight(req, ds)
    with contextlib.ExitStack() as stack:
        mine: list[tuple[str, int]] = []
        for label, runs in todo.items():
            for run in runs:
                got = stack.enter_context(store.try_lock(ds.name, label, run))
                if not got:
                    echo(f"{ds.name}/{label}/{run_name(run)} is being trained by another process; "
                         "leaving it to that one")
                elif not store.final_dir(ds.name, label, run).exists():
                    mine.append((label, run))
        if not mine:
            return []
        # workers may run elsewhere (another cwd, another machine on the shared filesystem): absolute paths
        spec = _absolute_spec(req.spec)
        root, data_dir = str(Path(req.store_root).resolve()), str(Path(req.data_dir).resolve())
        cfg = req.config
        if cfg.weights:
            cfg = replace(cfg, weights=str(Path(cfg.weights).resolve()))
        tasks = [FoldTask(spec, label, run, k, cfg, root, data_dir, cache)
                 for label, run in mine for k in range(len(ds.folds))]
        where = req.executor + (f" ({req.scheduler})" if req.scheduler else "")
        for label in labels:
            runs = [run_name(r) for lab, r in mine if lab == label]
            if runs:
                echo(f"{ds.name}/{label}: training run(s) {', '.join(runs)} ({len(ds.folds)} fold(s) each, "
                     f"{cfg.epochs} epoch(s), {cfg.model}) on {where} ...")
        bar = JobProgress(len(tasks), req.progress)
        job = Job(ds, cfg, store, tasks, bar)
        with bar:
            if req.executor == "local":
                if req.jobs:
                    echo("note: --jobs has no effect with --executor local")
                run_local(job)
            else:
                pool = make_pool(req.executor, req.jobs, req.scheduler, cfg.device,
                                 str(store.label_dir(ds.name, mine[0][0]).resolve()), bar.print)
                run_pool(job, pool)
        if bar.status.errors:
            raise EnsError(f"{len(job.failed_runs)} run(s) not stored, {len(job.published)} stored; "
                           "failures:\n  " + "\n  ".join(bar.status.errors))
        return job.published


def _absolute_spec(spec: str) -> str:
    kind, _, path = spec.partition(":")
    if kind == "folder" and path:
        return f"folder:{Path(path).expanduser().resolve()}"
    return spec


def _preflight(req: TrainRequest, ds: Dataset) -> None:
    """Errors every task would hit (unknown model, missing weights, no CUDA) are raised once, here.

    On a remote Dask cluster the devices and the weights are the workers' own, so only the
    model name is checked.
    """
    import timm

    from ..train.model import create_model
    from ..train.trainer import resolve_device

    if req.executor == "dask" and req.scheduler:
        if not timm.is_model(req.config.model):
            create_model(req.config.model, len(ds.classes), pretrained=False)  # raises the helpful error
        return
    cfg = req.config
    resolve_device(cfg.device)
    create_model(cfg.model, len(ds.classes), pretrained=cfg.pretrained,
                 weights=Path(cfg.weights) if cfg.weights else None)
