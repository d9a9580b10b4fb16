"""The coordinator's side of a training job: who runs what, retries, assembly, the one display.

Whatever executes the fold tasks, the coordinating process alone decides what is
retried and assembles a run (SPEC §5: member.json last, then the rename into place) the
moment its last fold lands. A task that fails is submitted once more; a task whose
worker process died under it is resubmitted without counting against it (up to
``MAX_LOST_WORKERS`` times, as Dask's own ``allowed-failures``). A task that still fails
is reported with its error while the others go on; its run stays hidden in staging, to
be resumed by the next ``ens train``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.dataset import Dataset
from ..errors import first_line
from ..io import atomic_write_bytes
from ..learn.trainer import TrainConfig
from ..outputs import NoSpace, environment_fault, is_no_space
from ..runs import FoldTask, assemble_run, epoch_images, train_fold_task
from ..store import RunDir, Store, read_meta, run_name
from .pools import Outcome, Pool
from .progress import JobProgress, read_progress
from .worker import TaskError

MAX_ATTEMPTS = 2  # a failing task is retried once
MAX_LOST_WORKERS = 3  # times a task may lose its worker process before that counts as a failure
POLL_SECONDS = 0.5


class Job:
    """Bookkeeping of one job: tasks, their attempts and progress, runs assembled or failed."""

    def __init__(
        self,
        ds: Dataset,
        dataset: str,
        cfg: TrainConfig,
        store: Store,
        tasks: list[FoldTask],
        recipes: dict[tuple[str, int], dict[str, Any]],
        bar: JobProgress,
        commands: dict[tuple[str, int], str] | None = None,
    ) -> None:
        """``recipes``: every run of the job (label key, run) -> its recipe, also runs with no task left;
        ``commands``: the `ens train` command that retrains each run, recorded in its member.json."""
        self.ds, self.dataset, self.cfg, self.store, self.tasks, self.bar = ds, dataset, cfg, store, tasks, bar
        self.recipes, self.commands = recipes, commands or {}
        self.labels = list(dict.fromkeys(t.label for t in tasks))
        per_epoch = {k: epoch_images(ds, k, cfg.batch_size) for k in range(len(ds.folds))}
        self.expected = {t.key: per_epoch[t.fold] * cfg.epochs for t in tasks}
        self.images = dict.fromkeys(self.expected, 0)
        bar.set_total(sum(self.expected.values()))
        self.attempts: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()
        self.finished: set[str] = set()
        self.failed_runs: set[tuple[str, int]] = set()
        self.published: list[Path] = []
        self.where: dict[str, str] = {}  # the process each running task last reported from
        for t in tasks:  # records of an earlier, interrupted job would read as running tasks
            t.run_dir().progress(t.fold).unlink(missing_ok=True)

    def run_dir(self, label: str, run: int) -> RunDir:
        return self.store.run_dir(self.dataset, label, run)

    def publish_staged(self) -> None:
        """Publish the runs of the job that have no task left (every fold staged earlier)."""
        for label, run in self.recipes:
            if not any((t.label, t.run) == (label, run) for t in self.tasks):
                self._assemble(label, run)

    def name(self, task: FoldTask) -> str:
        return f"{task.label} {run_name(task.run)} fold {task.fold + 1}/{len(self.ds.folds)}"

    # ------------------------------------------------------------- progress
    def redraw(self, description: str | None = None) -> None:
        self.bar.update(completed=sum(self.images.values()), description=description)

    def set_images(self, task: FoldTask, images: int) -> None:
        self.images[task.key] = min(images, self.expected[task.key])

    def poll(self, live: list[FoldTask]) -> None:
        """Read the progress files of the tasks handed out and not yet finished."""
        running = 0
        for t in live:
            record = read_progress(t.run_dir().progress(t.fold))
            if record is None:
                continue
            running += 1
            self.set_images(t, int(record.get("images", 0)))
            where, before = record.get("where"), self.where.get(t.key)
            if before and where != before:  # Dask moved it after its worker died; it resumed from a checkpoint
                self.bar.event(
                    f"{self.name(t)}: worker {before} was lost; continuing on {where} from the last checkpoint"
                )
            self.where[t.key] = where
        self.bar.status.running = running
        self.redraw()

    # ------------------------------------------------------------- outcomes
    def started(self, task: FoldTask) -> None:
        self.attempts[task.key] += 1

    def succeeded(self, task: FoldTask, summary: dict[str, Any]) -> None:
        self.finished.add(task.key)
        self.images[task.key] = self.expected[task.key]
        self.bar.status.done += 1
        self.bar.status.running = max(0, self.bar.status.running - 1)
        where = f" on {summary['where']}" if summary.get("where") else ""
        self.bar.event(f"{self.name(task)} done in {summary.get('seconds', 0):.1f} s{where}")
        if all(t.key in self.finished for t in self.tasks if (t.label, t.run) == (task.label, task.run)):
            self._assemble(task.label, task.run)
        self.redraw()

    def failed(self, task: FoldTask, outcome: Outcome) -> bool:
        """Record a failure; True when the task should be submitted again."""
        err = outcome.error
        self.where.pop(task.key, None)  # a move we ask for is not a lost worker
        where = f" on {err.where}" if isinstance(err, TaskError) and err.where else ""
        reason = str(err) if isinstance(err, TaskError) else first_line(err)
        if isinstance(err, TaskError) and err.no_space:  # the disk is full: stop the job, retry nothing
            self.failed_runs.add((task.label, task.run))
            raise NoSpace(
                f"{self.dataset}/{self.name(task)}{where}: {reason}; the job stopped "
                f"({len(self.published)} run(s) stored, finished folds kept in staging for the next `ens train`)"
            )
        if outcome.lost_worker:
            self.attempts[task.key] -= 1  # not the task's fault
            self.lost[task.key] += 1
            codes = [line.strip() for line in str(err).splitlines() if "exit code" in line]
            reason = f"worker process died ({codes[0] if codes else type(err).__name__})"
            if self.lost[task.key] < MAX_LOST_WORKERS:
                self.bar.status.retried += 1
                self.bar.event(f"{self.name(task)}: its {reason}; submitting it again")
                return True
        elif self.attempts[task.key] < MAX_ATTEMPTS:
            self.bar.status.retried += 1
            self.bar.event(f"{self.name(task)} failed{where}: {reason}; retrying once")
            return True
        self.bar.status.failed += 1
        self.failed_runs.add((task.label, task.run))
        if isinstance(err, TaskError) and err.detail:
            reason += f" (traceback: {self._keep_traceback(task, err.detail)})"
        message = f"{self.dataset}/{self.name(task)}{where}: {reason}"
        self.bar.status.errors.append(message)
        self.bar.event(
            f"{self.name(task)} failed again{where}: {reason}; run {run_name(task.run)} "
            "is left in staging for the next `ens train`"
        )
        self.redraw()
        return False

    def _keep_traceback(self, task: FoldTask, text: str) -> Path:
        """A worker's traceback, kept beside the failed run's staged folds for whoever debugs it."""
        path = task.run_dir().error_log(task.fold)  # scratch is dropped on publish
        atomic_write_bytes(path, text.encode())
        return path

    def _assemble(self, label: str, run: int) -> None:
        try:
            path = assemble_run(
                self.run_dir(label, run),
                ds=self.ds,
                dataset=self.dataset,
                label=label,
                recipe=self.recipes[(label, run)],
                command=self.commands.get((label, run), ""),
            )
        except Exception as err:  # noqa: BLE001 -- reported with the job's failures, others go on
            self.failed_runs.add((label, run))
            if is_no_space(err):  # a full disk fails every publish after this one too: stop here, once
                raise NoSpace(
                    f"{self.dataset}/{label}/{run_name(run)}: publishing failed: {environment_fault(err)}; "
                    "its folds stay in staging and the next `ens train` publishes it without training"
                ) from None
            self.bar.status.errors.append(f"{self.dataset}/{label}/{run_name(run)}: assembling failed: {err}")
            return
        self.published.append(path)
        meta = read_meta(path)
        warning = f"  WARNING: {meta.diagnosis}" if meta.learnt_nothing else ""
        score = f"Dice {meta.dice:.4f}" if meta.dice is not None else f"accuracy {meta.accuracy:.4f}"
        self.bar.print(
            f"{meta.dataset}/{meta.key}/{run_name(run)}: {score} over "
            f"{meta.folds} fold(s) in {sum(meta.fold_seconds):.0f} s -> {path}{warning}"
        )


def run_local(job: Job) -> None:
    """``--executor local``: one task after another in this process, drawn batch by batch."""
    for task in job.tasks:
        while True:
            job.started(task)
            job.bar.status.running = 1
            job.redraw(job.name(task))
            try:
                summary = train_fold_task(task, **_local_callbacks(job, task))
            except Exception as err:  # noqa: BLE001 -- retried once, then reported; KeyboardInterrupt stops
                job.bar.status.running = 0
                if job.failed(task, Outcome(None, TaskError.wrap(err))):
                    continue
                break
            job.bar.status.running = 0
            job.succeeded(task, summary)
            break


def _local_callbacks(job: Job, task: FoldTask) -> dict[str, Callable]:
    per_epoch = job.expected[task.key] // max(job.cfg.epochs, 1)
    epochs = job.cfg.epochs

    def on_start(epoch: int) -> None:
        job.set_images(task, epoch * per_epoch)
        job.redraw()

    def on_batch(n: int) -> None:
        job.images[task.key] += n
        job.redraw()

    def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
        job.redraw(f"{job.name(task)} epoch {epoch + 1}/{epochs} loss {loss:.3f}")

    return {"on_start": on_start, "on_batch": on_batch, "on_epoch": on_epoch}


def run_pool(job: Job, pool: Pool) -> None:
    """Hand every task to ``pool`` (at most ``pool.capacity`` at a time), resubmit failures, and keep
    the display current."""
    queue = list(job.tasks)
    live: dict[Any, FoldTask] = {}

    def fill() -> None:
        while queue and (pool.capacity is None or len(live) < pool.capacity):
            task = queue.pop(0)
            job.started(task)
            live[pool.submit(task, job.attempts[task.key])] = task

    ok = False
    try:
        fill()
        job.redraw(f"{'+'.join(job.labels)} on {pool.name}")
        while live:
            for handle in pool.wait(list(live), POLL_SECONDS):
                task = live.pop(handle)
                outcome = pool.outcome(handle)
                if outcome.error is None:
                    job.succeeded(task, outcome.summary or {})
                elif job.failed(task, outcome):
                    queue.insert(0, task)
            fill()
            job.poll(list(live.values()))
        ok = True
    finally:
        pool.close(cancel=not ok)
