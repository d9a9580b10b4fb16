"""Making sure N complete members of a label exist: plan the missing runs, train their folds,
assemble each run in the store.

The unit of work is one (run, fold) training (:func:`train_fold_task`); it writes its
predictions into the run's hidden staging directory, so any executor can run it (see
``ensemble.executors``). A run is assembled and renamed into place when its last fold lands.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .data.dataset import Dataset, load
from .errors import StoreError
from .io import atomic_write_json
from .optim import get, resolve
from .store import Store, run_name, write_fold
from .train.trainer import FoldTrainer, TrainConfig, _batches, derive_seed


@dataclass(frozen=True)
class FoldTask:
    """One (run, fold) training: everything a worker needs, picklable."""

    spec: str
    label: str
    run: int
    fold: int
    config: TrainConfig
    store_root: str
    data_dir: str
    cache_dir: str | None

    @property
    def key(self) -> str:
        return f"{self.label}/{run_name(self.run)}/fold-{self.fold}"


def run_seed(dataset: str, label: str, run: int, fold: int) -> int:
    """The seed of one fold training, derived from (dataset, label, run index, fold)."""
    return derive_seed(dataset, label, run, fold)


def library_versions() -> dict[str, str]:
    import albumentations
    import sklearn
    import timm
    import torch

    return {"ens": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "albumentations": albumentations.__version__}


_DATASETS: dict[tuple, Dataset] = {}


def _dataset(spec: str, data_dir: str, size: int, cache_dir: str | None, workers: int = 2) -> Dataset:
    """Datasets are loaded once per process (workers run many tasks)."""
    key = (spec, data_dir, size, cache_dir)
    if key not in _DATASETS:
        _DATASETS[key] = load(spec, data_dir=data_dir, size=size, cache_dir=Path(cache_dir) if cache_dir else None,
                              workers=workers)
    return _DATASETS[key]


def epoch_images(ds: Dataset, fold: int, batch_size: int) -> int:
    """Images one epoch of a fold pushes through training (what progress displays count)."""
    return sum(len(b) for b in _batches(ds.folds[fold].train, batch_size))


def train_fold_task(task: FoldTask, on_start: Callable[[int], None] | None = None,
                    on_batch: Callable[[int], None] | None = None,
                    on_epoch: Callable[[int, float, float], None] | None = None) -> dict[str, Any]:
    """Train one fold and write ``fold-<k>.npz`` (and ``val-<k>.npz``) into the run's staging dir.

    Idempotent: a fold whose predictions are already staged is not trained again.
    ``on_start`` gets the epoch training starts from (above 0 when resuming a checkpoint).
    """
    ds = _dataset(task.spec, task.data_dir, task.config.size, task.cache_dir, task.config.workers)
    store = Store(task.store_root)
    label = get(task.label).label
    staging = store.staging_dir(ds.name, label, task.run)
    summary_path = staging / f"fold-{task.fold}.json"
    if (staging / f"fold-{task.fold}.npz").exists() and summary_path.exists():
        if on_start is not None:
            on_start(task.config.epochs)
        return json.loads(summary_path.read_text())
    seed = run_seed(ds.name, label, task.run, task.fold)
    trainer = FoldTrainer(ds, ds.folds[task.fold], label, task.config, seed, staging / "scratch",
                          on_start=on_start, on_batch=on_batch, on_epoch=on_epoch)
    result = trainer.run()
    write_fold(staging / f"fold-{task.fold}.npz", result.probs, result.labels, result.ids)
    if result.val_probs is not None:
        fold = ds.folds[task.fold]
        write_fold(staging / f"val-{task.fold}.npz", result.val_probs, ds.labels[fold.val], ds.ids[fold.val])
    summary = {"fold": task.fold, "seed": seed, "seconds": round(result.seconds, 3), "curves": result.curves,
               "accuracy": float((result.probs.argmax(1) == result.labels).mean()) if len(result.labels) else None,
               "train": len(ds.folds[task.fold].train), "test": len(result.labels),
               "device": str(trainer.device), "threads": trainer.intra_op_threads() or torch.get_num_threads()}
    atomic_write_json(summary_path, summary)
    ckpt = trainer.checkpoint_path
    if ckpt.exists():
        ckpt.unlink()
    return summary


def assemble_run(ds: Dataset, label: str, run: int, cfg: TrainConfig, store: Store) -> Path:
    """Write member.json for a run whose folds are all staged, and rename it into place."""
    label = get(label).label
    staging = store.staging_dir(ds.name, label, run)
    summaries = []
    for k in range(len(ds.folds)):
        p = staging / f"fold-{k}.json"
        if not p.exists():
            raise StoreError(f"{staging}: fold {k} has not finished")
        summaries.append(json.loads(p.read_text()))
    probs, labels = [], []
    for k in range(len(ds.folds)):
        with np.load(staging / f"fold-{k}.npz") as z:
            probs.append(z["probs"])
            labels.append(z["labels"])
    accuracy = float((np.concatenate(probs).argmax(1) == np.concatenate(labels)).mean())
    meta = {
        "dataset": ds.name,
        "dataset_spec": ds.spec,
        "label": label,
        "run": run,
        "fingerprint": ds.fingerprint,
        "protocol": ds.protocol,
        "classes": ds.classes,
        "folds": len(ds.folds),
        "optimizer": {"name": label, **resolve(label, **cfg.optimizer_overrides()),
                      "head_lr_factor": cfg.head_lr_factor},
        "seed": [s["seed"] for s in summaries],
        "model": cfg.model,
        "pretrained": bool(cfg.pretrained or cfg.weights),
        "weights": cfg.weights,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "size": cfg.size,
        "versions": library_versions(),
        "fold_seconds": [s["seconds"] for s in summaries],
        "fold_device": [s.get("device") for s in summaries],
        "fold_threads": [s.get("threads") for s in summaries],
        "curves": [s["curves"] for s in summaries],
        "fold_accuracy": [s["accuracy"] for s in summaries],
        "accuracy": accuracy,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for k in range(len(ds.folds)):
        (staging / f"fold-{k}.json").unlink()
    return store.publish(ds.name, label, run, meta)


def plan_runs(ds: Dataset, label: str, n: int, store: Store) -> tuple[list[int], list[int]]:
    """Indices of the runs missing to reach ``n`` complete ones (lowest first), and those present."""
    existing = store.runs(ds.name, label)
    todo, r = [], 0
    while len(existing) + len(todo) < n:
        if r not in existing:
            todo.append(r)
        r += 1
    return todo, existing
