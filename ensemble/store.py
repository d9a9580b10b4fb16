"""The member store (SPEC §5): the one place that reads and writes ``members/``.

    members/<dataset>/<Label>/<run>/member.json    (written last)
    members/<dataset>/<Label>/<run>/fold-<k>.npz   (probs, labels, ids)

A run is built in a hidden staging directory ``.<run>.staging`` and renamed into place
when complete, so readers (which ignore names beginning with ``.``) never see half a
member. A per-run lock file (``flock``, released by the OS when a process dies, even
by ``kill -9``) keeps two processes from training the same run; the staging directory
keeps finished folds and the last epoch's checkpoint so a killed run resumes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError
from .io import atomic_write_bytes, atomic_write_json

RUN_DIGITS = 3


def run_name(run: int) -> str:
    return f"{run:0{RUN_DIGITS}d}"


def write_fold(path: Path, probs: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
    """One fold's predictions: probs (n, C) float32 rows summing to 1, labels int64, ids str."""
    import io

    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) != len(ids):
        raise StoreError(f"{path}: probs {probs.shape}, labels {len(labels)} and ids {len(ids)} disagree")
    buf = io.BytesIO()
    np.savez(buf, probs=probs, labels=np.asarray(labels, dtype=np.int64), ids=np.asarray(ids, dtype=str))
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- reading
@dataclass
class Member:
    """One complete member: its metadata and its predictions on every test sample, fold by fold."""

    path: Path
    meta: dict[str, Any]
    probs: np.ndarray  # (N, C) float32, folds concatenated in fold order
    labels: np.ndarray  # (N,) int64
    ids: np.ndarray  # (N,) str
    fold_of: np.ndarray  # (N,) int: the fold each row came from

    @property
    def label(self) -> str:
        return self.meta["label"]

    @property
    def run(self) -> int:
        return int(self.meta["run"])

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def name(self) -> str:
        return f"{self.meta['dataset']}/{self.label}/{run_name(self.run)}"


def read_member(path: Path, split: str = "fold") -> Member:
    """Read a complete run directory; ``split="val"`` reads its validation predictions instead."""
    meta_path = path / "member.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StoreError(f"cannot read {meta_path}: {err}") from None
    parts = []
    for k in range(int(meta["folds"])):
        f = path / f"{split}-{k}.npz"
        if split != "fold" and not f.exists():
            continue
        try:
            with np.load(f) as z:
                parts.append((z["probs"], z["labels"], z["ids"], np.full(len(z["labels"]), k)))
        except (OSError, KeyError, ValueError) as err:
            raise StoreError(f"cannot read {f}: {err}") from None
    if not parts:
        raise StoreError(f"{path} has no {split}-*.npz predictions")
    probs, labels, ids, fold_of = (np.concatenate(x) for x in zip(*parts))
    return Member(path, meta, probs.astype(np.float32), labels.astype(np.int64), ids.astype(str), fold_of)


class Store:
    """A members/ directory."""

    def __init__(self, root: Path | str = "members") -> None:
        self.root = Path(root)

    def label_dir(self, dataset: str, label: str) -> Path:
        return self.root / dataset / label

    def datasets(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def labels(self, dataset: str) -> list[str]:
        d = self.root / dataset
        if not d.exists():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))

    def runs(self, dataset: str, label: str) -> list[int]:
        """Indices of the complete runs of a label (visible directories with a member.json)."""
        d = self.label_dir(dataset, label)
        if not d.exists():
            return []
        out = []
        for p in d.iterdir():
            if p.name.startswith(".") or not p.is_dir() or not p.name.isdigit():
                continue
            if (p / "member.json").exists():
                out.append(int(p.name))
        return sorted(out)

    def members(self, dataset: str, label: str, count: int | None = None, split: str = "fold") -> list[Member]:
        """The first ``count`` complete members of a label, by run index."""
        runs = self.runs(dataset, label)[:count]
        return [read_member(self.label_dir(dataset, label) / run_name(r), split) for r in runs]

    # ---------------------------------------------------------------- writing
    def staging_dir(self, dataset: str, label: str, run: int) -> Path:
        return self.label_dir(dataset, label) / f".{run_name(run)}.staging"

    def final_dir(self, dataset: str, label: str, run: int) -> Path:
        return self.label_dir(dataset, label) / run_name(run)

    @contextlib.contextmanager
    def try_lock(self, dataset: str, label: str, run: int) -> Iterator[bool]:
        """Yield True while holding the run's lock, False if another process holds it."""
        d = self.label_dir(dataset, label)
        d.mkdir(parents=True, exist_ok=True)
        lock_path = d / f".{run_name(run)}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def publish(self, dataset: str, label: str, run: int, meta: dict[str, Any]) -> Path:
        """Write member.json into the staging directory, drop scratch files, rename into place."""
        staging = self.staging_dir(dataset, label, run)
        final = self.final_dir(dataset, label, run)
        if final.exists():
            raise StoreError(f"{final} already exists; a finished member is never overwritten")
        missing = [k for k in range(int(meta["folds"])) if not (staging / f"fold-{k}.npz").exists()]
        if missing:
            raise StoreError(f"{staging} lacks fold(s) {missing}; the run is not complete")
        scratch = staging / "scratch"
        if scratch.exists():
            shutil.rmtree(scratch)
        atomic_write_json(staging / "member.json", meta)
        os.rename(staging, final)
        return final
