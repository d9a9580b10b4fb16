"""A coordinator's lease on the labels it trains, so remote fold tasks stop when it is gone.

Workers of pools ens starts itself watch the coordinator's process id; workers on a remote
Dask cluster (``--scheduler``) cannot. For those jobs the coordinator therefore writes
``<label>/.lease.json`` -- a job token and a beat counter -- every ``BEAT_SECONDS``, and a
fold task checks it while it trains
(throttled to every ``CHECK_SECONDS``): a lease taken by another job, removed, or whose beat
has not moved for ``LEASE_SECONDS`` of the task's own clock (no clock is compared across
machines) stops the task. A new ``ens train`` that finds a lease of a job that died waits
``LEASE_SECONDS`` plus a check before it trains, so a fold is never trained twice at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import EnsError
from ..io import atomic_write_json
from ..store import LEASE_FILE
from .progress import worker_name

BEAT_SECONDS = 5.0
LEASE_SECONDS = 30.0
CHECK_SECONDS = 2.0


class CoordinatorGone(EnsError):
    """The ``ens train`` that handed out this task is gone or was replaced: the task stops."""


def read_lease(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


class Lease:
    """Coordinator side: beats on every label directory of the job until :meth:`close`."""

    def __init__(self, label_dirs: list[Path], every: float = BEAT_SECONDS) -> None:
        self.paths = [Path(d) / LEASE_FILE for d in label_dirs]
        self.token, self.every, self.beat = uuid.uuid4().hex, every, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def previous_holders(self) -> list[str]:
        """Owners of leases left by jobs that died (their label locks are free now, or we would not be here)."""
        return [str(lease.get("owner")) for p in self.paths if (lease := read_lease(p)) is not None]

    def _write(self) -> None:
        self.beat += 1
        for p in self.paths:
            atomic_write_json(p, {"token": self.token, "beat": self.beat, "owner": worker_name()})

    def start(self) -> Lease:
        self._write()
        self._thread = threading.Thread(target=self._run, name="ens-lease", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(OSError):  # a store briefly unreachable: the next beat tries again
                self._write()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for p in self.paths:
            lease = read_lease(p)
            if lease is not None and lease.get("token") == self.token:
                p.unlink(missing_ok=True)


class LeaseCheck:
    """Task side: raises :class:`CoordinatorGone` once the job's lease is lost."""

    def __init__(
        self, label_dir: Path, token: str, timeout: float = LEASE_SECONDS, every: float = CHECK_SECONDS
    ) -> None:
        self.path, self.token, self.timeout, self.every = Path(label_dir) / LEASE_FILE, token, timeout, every
        self._beat, self._seen, self._checked = None, time.monotonic(), 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.every:
            return
        self._checked = now
        lease = read_lease(self.path)
        if lease is None or lease.get("token") != self.token:
            raise CoordinatorGone(
                f"the ens train that started this task (pid {os.getpid()} saw it at "
                f"{self.path}) was replaced or ended; the task stops"
            )
        if lease.get("beat") != self._beat:
            self._beat, self._seen = lease.get("beat"), now
        elif now - self._seen > self.timeout:
            raise CoordinatorGone(
                f"the ens train that started this task ({lease.get('owner')}) has not renewed "
                f"its lease for {self.timeout:.0f} s; the task stops"
            )


def take_over(lease: Lease, echo: Callable[[str], None], timeout: float = LEASE_SECONDS) -> Lease:
    """Start ``lease``; when a job that died left one, wait until its remote tasks must have stopped."""
    holders = lease.previous_holders()
    lease.start()  # our token replaces theirs: their tasks stop at their next check
    if holders:
        echo(
            f"a previous ens train ({', '.join(sorted(set(holders)))}) left its lease; waiting "
            f"{timeout + 2 * CHECK_SECONDS:.0f} s for any of its remote tasks to stop"
        )
        time.sleep(timeout + 2 * CHECK_SECONDS)
    return lease
