"""Running the (run, fold) tasks of ``ens train``: here, in worker processes, or on a Dask cluster.

The coordinating process plans the missing runs, holds each run's lock, hands out fold
tasks, and assembles a run when its last fold lands. Workers only write into the run's
hidden staging directory, so nothing partial ever becomes visible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from .data.dataset import Dataset
from .errors import EnsError
from .members import FoldTask, _dataset, assemble_run, plan_runs, train_fold_task
from .optim import get
from .store import Store, run_name
from .train.trainer import TrainConfig, _batches

EXECUTORS = ("local", "processes", "dask")


class _Speed(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} img/s" if speed else "-- img/s", style="cyan")


@dataclass
class JobStatus:
    """Counts for the one progress display of a job, whichever executor runs it."""

    done: int = 0
    running: int = 0
    failed: int = 0
    total: int = 0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"tasks {self.done}/{self.total} done, {self.running} running, {self.failed} failed"


class JobProgress:
    """A rich progress bar over images to process (so the ETA is honest), plus task counts."""

    def __init__(self, total_images: int, enabled: bool) -> None:
        self.status = JobStatus()
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            _Speed(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"), disable=not enabled, transient=False,
        )
        self.task = self.progress.add_task("training", total=total_images, status="")

    def __enter__(self) -> JobProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def advance(self, images: int) -> None:
        self.progress.advance(self.task, images)

    def describe(self, text: str) -> None:
        self.progress.update(self.task, description=text, status=self.status.line())

    def print(self, text: str) -> None:
        self.progress.console.print(text, highlight=False) if self.progress.live.is_started else print(text)


def task_images(ds: Dataset, fold: int, cfg: TrainConfig) -> int:
    """Images one fold task pushes through training (what the progress bar counts)."""
    per_epoch = sum(len(b) for b in _batches(ds.folds[fold].train, cfg.batch_size))
    return per_epoch * cfg.epochs


@dataclass
class TrainRequest:
    spec: str
    label: str
    n: int
    config: TrainConfig
    store_root: Path
    data_dir: Path
    cache_dir: Path | None = None
    executor: str = "local"
    jobs: int | None = None
    scheduler: str | None = None
    progress: bool = True


def train_members(req: TrainRequest, echo: Callable[[str], None] = print) -> list[Path]:
    """Make sure ``req.n`` complete members of ``req.label`` exist; returns the new run directories."""
    label = get(req.label).label
    cache = str(req.cache_dir) if req.cache_dir else None
    ds = _dataset(req.spec, str(req.data_dir), req.config.size, cache, req.config.workers)
    for w in ds.warnings:
        echo(f"warning: {w}")
    store = Store(req.store_root)
    todo, existing = plan_runs(ds, label, req.n, store)
    if not todo:
        echo(f"{ds.name}/{label}: {len(existing)} complete member(s) already; nothing to train")
        return []
    with contextlib.ExitStack() as stack:
        mine, busy = [], []
        for run in todo:
            got = stack.enter_context(store.try_lock(ds.name, label, run))
            if got and not store.final_dir(ds.name, label, run).exists():
                mine.append(run)
            elif not got:
                busy.append(run)
        for run in busy:
            echo(f"{ds.name}/{label}/{run_name(run)} is being trained by another process; leaving it to that one")
        if not mine:
            return []
        tasks = [FoldTask(req.spec, label, run, k, req.config, str(req.store_root), str(req.data_dir), cache)
                 for run in mine for k in range(len(ds.folds))]
        total = sum(task_images(ds, t.fold, req.config) for t in tasks)
        echo(f"{ds.name}/{label}: training run(s) {', '.join(run_name(r) for r in mine)} "
             f"({len(ds.folds)} folds each, {req.config.epochs} epochs, {req.config.model}) ...")
        with JobProgress(total, req.progress) as bar:
            bar.status.total = len(tasks)
            finished = _run_tasks(req, ds, tasks, bar)
            out = []
            for run in mine:
                if all(t.key in finished for t in tasks if t.run == run):
                    path = assemble_run(ds, label, run, req.config, store)
                    out.append(path)
                    _report_member(path, bar.print)
        if bar.status.failed:
            raise EnsError(f"{bar.status.failed} fold task(s) failed; their runs were not stored:\n  "
                           + "\n  ".join(bar.status.errors))
        return out


def _report_member(path: Path, echo: Callable[[str], None]) -> None:
    import json

    meta = json.loads((path / "member.json").read_text())
    echo(f"{meta['dataset']}/{meta['label']}/{run_name(meta['run'])}: accuracy {meta['accuracy']:.4f} over "
         f"{meta['folds']} fold(s) in {sum(meta['fold_seconds']):.0f} s -> {path}")


def _run_tasks(req: TrainRequest, ds: Dataset, tasks: list[FoldTask], bar: JobProgress) -> set[str]:
    """Run every task with the requested executor; returns the keys of those that finished."""
    if req.executor == "local":
        return _run_local(ds, tasks, bar)
    raise EnsError(f"--executor {req.executor} is not available in this version; use --executor local")


def _run_local(ds: Dataset, tasks: list[FoldTask], bar: JobProgress) -> set[str]:
    """One task after another in this process, with per-batch progress."""
    done = set()
    for t in tasks:
        epochs = t.config.epochs
        nfolds = len(ds.folds)
        bar.status.running = 1
        bar.describe(f"{t.label} {run_name(t.run)} fold {t.fold + 1}/{nfolds}")

        def on_epoch(e: int, loss: float, acc: float, t: FoldTask = t) -> None:
            bar.describe(f"{t.label} {run_name(t.run)} fold {t.fold + 1}/{nfolds} epoch {e + 1}/{epochs} "
                         f"loss {loss:.3f}")

        before = bar.progress.tasks[0].completed
        train_fold_task(t, on_batch=bar.advance, on_epoch=on_epoch)
        # a resumed or already-staged fold skips images: keep the bar's total honest
        expected = task_images(ds, t.fold, t.config)
        bar.advance(max(0, expected - (bar.progress.tasks[0].completed - before)))
        bar.status.running = 0
        bar.status.done += 1
        bar.describe(f"{t.label} {run_name(t.run)} fold {t.fold + 1}/{nfolds} done")
        done.add(t.key)
    return done
