"""The one progress display of a training job, and the small files workers report through.

Workers in other processes or on other machines cannot draw on our terminal, but they
share the store with us (SPEC §5). Each running fold task rewrites
``<staging>/scratch/progress-<k>.json`` about once a second; the coordinator reads
those files and draws a single bar (images done, images/s, ETA) with task counts,
whichever executor runs the tasks. Without a terminal the same events become log lines.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from ..io import atomic_write_json


def worker_name() -> str:
    """host:pid, how reports name the process a task ran in."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ProgressWriter:
    """Worker side: images done in one fold task, written at most every ``every`` seconds."""

    def __init__(self, path: Path, epoch_images: int, every: float = 1.0) -> None:
        self.path, self.epoch_images, self.every = path, epoch_images, every
        self.images, self.epoch, self.loss = 0, 0, None
        self._last = 0.0

    def start(self, epoch: int) -> None:
        self.images, self.epoch = epoch * self.epoch_images, epoch
        self.write()

    def batch(self, n: int) -> None:
        self.images += n
        if time.monotonic() - self._last >= self.every:
            self.write()

    def epoch_done(self, epoch: int, loss: float, accuracy: float) -> None:
        self.epoch, self.loss = epoch + 1, loss
        self.write()

    def write(self) -> None:
        self._last = time.monotonic()
        atomic_write_json(
            self.path,
            {
                "images": self.images,
                "epoch": self.epoch,
                "loss": self.loss,
                "where": worker_name(),
                "time": time.time(),
            },
        )


def read_progress(path: Path) -> dict[str, Any] | None:
    """Coordinator side: the last record of a running task, or None if it has not started."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class _Speed(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} img/s" if speed else "-- img/s", style="cyan")


@dataclass
class JobStatus:
    """Task counts of a job."""

    total: int = 0
    done: int = 0
    running: int = 0
    failed: int = 0
    retried: int = 0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"{self.done}/{self.total} tasks done, {self.running} running, {self.failed} failed"
        return text + (f", {self.retried} retried" if self.retried else "")


class JobProgress:
    """A rich bar over the images the job pushes through training (so its ETA is honest), plus task
    counts; with ``enabled=False`` (no terminal, ``--no-progress``) events are printed as lines."""

    def __init__(self, total_tasks: int, enabled: bool) -> None:
        self.enabled = enabled
        self.status = JobStatus(total=total_tasks)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            _Speed(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            disable=not enabled,
            transient=False,
        )
        self.task = self.progress.add_task("training", total=None, status=self.status.line())

    def __enter__(self) -> JobProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def set_total(self, images: int) -> None:
        self.progress.update(self.task, total=max(images, 1))

    def update(self, completed: float | None = None, description: str | None = None) -> None:
        fields: dict[str, Any] = {"status": self.status.line()}
        if completed is not None:
            fields["completed"] = completed
        if description is not None:
            fields["description"] = description
        self.progress.update(self.task, **fields)

    def event(self, text: str) -> None:
        """Something a person watching the job should know; above the bar, or a log line."""
        if self.enabled:
            self.progress.console.print(text, highlight=False)
        else:
            print(f"[{self.status.line()}] {text}", flush=True)

    def print(self, text: str) -> None:
        if self.enabled:
            self.progress.console.print(text, highlight=False)
        else:
            print(text, flush=True)
