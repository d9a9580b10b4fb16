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
from ..optim import get
from ..plan import plan_labels, prepare_run
from ..runs import FoldTask, load_dataset
from ..store import Store, check_name, check_variant, run_name
from ..train.recipe import train_command
from ..train.trainer import TrainConfig, resolve_device
from .job import Job, run_local, run_pool
from .lease import Lease, take_over
from .pools import cpu_threads, make_pool
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
    variant: str | None = None  # members stored and addressed apart, as Label@variant
    name: str | None = None  # the dataset's name in the store [default: the catalog's]
    restart: bool = False  # set aside a run staged under another recipe instead of refusing
    runs: list[int] | None = None  # exactly these run indices instead of n

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
    if req.variant is not None:
        check_variant(req.variant)
    if req.name is not None:
        check_name(req.name, "--name")
    cache = str(Path(req.cache_dir).resolve()) if req.cache_dir else None
    ds = load_dataset(req.spec, str(req.data_dir), req.config.size, cache, req.config.workers)
    for w in ds.warnings:
        echo(f"warning: {w}")
    dataset = req.name or ds.name
    store = Store(req.store_root)
    plans = plan_labels(
        store,
        dataset=dataset,
        ds=ds,
        optimizers=req.labels,
        variant=req.variant,
        n=req.n,
        cfg=req.config,
        runs=req.runs,
    )
    for p in plans:
        if not p.todo:
            echo(f"{dataset}/{p.label}: {len(p.existing)} complete member(s) already; nothing to train")
    if not any(p.todo for p in plans):
        return []
    _preflight(req, ds)
    with contextlib.ExitStack() as stack:
        # workers may run elsewhere (another cwd, another machine on the shared filesystem): absolute paths
        spec = _absolute_spec(req.spec)
        root, data_dir = str(Path(req.store_root).resolve()), str(Path(req.data_dir).resolve())
        cfg = req.config
        device = resolve_device(cfg.device).type if not req.scheduler else cfg.device
        if cfg.threads is None and device == "cpu":  # fixed here, so every task of the job uses the same count
            cfg = replace(cfg, threads=cpu_threads(req.executor, req.jobs, remote=bool(req.scheduler)))
        if cfg.weights:
            cfg = replace(cfg, weights=str(Path(cfg.weights).resolve()))
        tasks, runs = [], []
        for p in plans:
            if not p.todo:
                continue
            if not stack.enter_context(store.try_lock(dataset, p.label)):
                echo(f"{dataset}/{p.label} is being trained by another process; leaving it to that one")
                continue
            for run in p.todo:
                rd = store.run_dir(dataset, p.label, run)
                if rd.final.exists():
                    continue
                folds = prepare_run(rd, p.recipe, folds=len(ds.folds), restart=req.restart, echo=echo)
                runs.append((p, run))
                tasks += [
                    FoldTask(spec, dataset, p.label, run, k, cfg, p.recipe_hash, root, data_dir, cache) for k in folds
                ]
        if not runs:
            return []
        where = req.executor + (f" ({req.scheduler})" if req.scheduler else "")
        for p in plans:
            names = [run_name(r) for q, r in runs if q is p]
            if names:
                echo(
                    f"{dataset}/{p.label}: training run(s) {', '.join(names)} ({len(ds.folds)} fold(s) each, "
                    f"{cfg.epochs} epoch(s), {cfg.model}) on {where} ..."
                )
        lease = None
        if req.scheduler and tasks:  # remote workers cannot watch our pid: they watch this lease instead
            labels = {p.label for p, _ in runs}
            lease = stack.enter_context(
                contextlib.closing(take_over(Lease([store.label_dir(dataset, label) for label in labels]), echo))
            )
        bar = JobProgress(len(tasks), req.progress)
        commands = {
            (p.label, r): train_command(
                spec=req.spec,
                data_dir=str(req.data_dir),
                label=p.label,
                run=r,
                cfg=req.config,
                name=req.name,
                device=device,
                threads=cfg.threads,
            )
            for p, r in runs
        }
        job = Job(ds, dataset, cfg, store, tasks, {(p.label, r): p.recipe for p, r in runs}, bar, commands)
        with bar:
            job.publish_staged()  # runs whose folds were all staged already (a publish interrupted earlier)
            if tasks and req.executor == "local":
                if req.jobs:
                    echo("note: --jobs has no effect with --executor local")
                run_local(job)
            elif tasks:
                pool = make_pool(
                    req.executor,
                    req.jobs,
                    req.scheduler,
                    cfg.device,
                    str(store.label_dir(dataset, runs[0][0].label).resolve()),
                    bar.print,
                    lease_token=lease.token if lease else None,
                )
                run_pool(job, pool)
        if bar.status.errors:
            raise EnsError(
                f"{len(job.failed_runs)} run(s) not stored, {len(job.published)} stored; "
                "failures:\n  " + "\n  ".join(bar.status.errors)
            )
        return job.published


def _absolute_spec(spec: str) -> str:
    from ..data.sources import resolve

    return resolve(spec).absolute_spec  # folder:/seg: paths made absolute; others as written


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
    create_model(
        cfg.model, len(ds.classes), pretrained=cfg.pretrained, weights=Path(cfg.weights) if cfg.weights else None
    )
