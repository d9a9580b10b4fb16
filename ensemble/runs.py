"""A run's work: one (run, fold) training into the run's staging directory, and the run's publish.

The unit of work is one (run, fold) training (:func:`train_fold_task`); it writes its
predictions into the run's hidden staging directory (laid out by :class:`ensemble.store.RunDir`),
so any executor can run it (see ``ensemble.executors``). :func:`assemble_run` publishes a run
when its last fold has landed. What runs are missing is decided by :mod:`ensemble.plan`.
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

from . import __version__, portable
from .data.dataset import Dataset, load
from .errors import DataError, StoreError
from .io import atomic_write_bytes, atomic_write_json
from .learn.tblog import EpochLog
from .learn.trainer import FoldResult, FoldTrainer, TrainConfig, _batches, derive_seed, resolve_device
from .learn.weights import loaded
from .store import SCHEMA_VERSION, MemberMeta, RunDir, Store, check_fold_ids, recipe_hash, run_name, split_key
from .tasks import get_task


@dataclass(frozen=True)
class FoldTask:
    """One (run, fold) training: everything a worker needs, picklable.

    ``label`` is the store's label key (``DGrad`` or ``DGrad@long``); ``recipe_hash`` is the
    recipe the run was planned under, which the staged run must carry.
    """

    spec: str
    dataset: str
    label: str
    run: int
    fold: int
    config: TrainConfig
    recipe_hash: str
    store_root: str
    data_dir: str
    cache_dir: str | None

    @property
    def key(self) -> str:
        return f"{self.label}/{run_name(self.run)}/fold-{self.fold}"

    @property
    def optimizer(self) -> str:
        return split_key(self.label)[0]

    def run_dir(self) -> RunDir:
        return Store(self.store_root).run_dir(self.dataset, self.label, self.run)


def run_seed(dataset: str, label: str, run: int, fold: int) -> int:
    """The seed of one fold training, derived from (dataset, label key, run index, fold)."""
    return derive_seed(dataset, label, run, fold)


def library_versions() -> dict[str, str]:
    import albumentations
    import sklearn
    import timm

    return {
        "ens": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "albumentations": albumentations.__version__,
    }


_DATASETS: dict[tuple, Dataset] = {}


def load_dataset(spec: str, data_dir: str, cfg: TrainConfig, cache_dir: str | None, *, fresh: bool = False) -> Dataset:
    """Datasets are loaded once per process (workers run many tasks) as ``cfg`` decodes them (its size and DICOM
    window); ``fresh`` reads it again (``ens train`` does, so a process that trains twice sees files changed in
    between: their fingerprint and content)."""
    key = (spec, data_dir, cfg.size, cfg.dicom_window, cache_dir)
    if fresh:
        _DATASETS.clear()  # under any spelling: the fold tasks of this job load it again, as it is now
    if key not in _DATASETS:
        _DATASETS[key] = load(
            spec,
            data_dir=data_dir,
            size=cfg.size,
            cache_dir=Path(cache_dir) if cache_dir else None,
            workers=cfg.workers,
            dicom_window=cfg.dicom_window,
        )
    return _DATASETS[key]


def epoch_images(ds: Dataset, fold: int, batch_size: int) -> int:
    """Images one epoch of a fold pushes through training (what progress displays count)."""
    return sum(len(b) for b in _batches(ds.folds[fold].train, batch_size))


def check_staged_recipe(rd: RunDir, expected_hash: str) -> dict[str, Any]:
    """The staged run's recipe, which must be the one the task was planned under: never train on
    (or publish) folds and checkpoints of another recipe."""
    staged = rd.staged_recipe()
    if not staged or recipe_hash(staged) != expected_hash:
        raise StoreError(
            f"{rd.staging} was staged under another recipe than this task's; "
            "rerun `ens train` (it says what differs) or pass --restart"
        )
    return staged


def train_fold_task(
    task: FoldTask,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> dict[str, Any]:
    """Train one fold and write ``fold-<k>.npz`` (and ``val-<k>.npz``) into the run's staging dir.

    Idempotent: a fold whose predictions are already staged is not trained again.
    ``on_start`` gets the epoch training starts from (above 0 when resuming a checkpoint).
    """
    ds = load_dataset(task.spec, task.data_dir, task.config, task.cache_dir)
    rd = task.run_dir()
    check_planned_data(rd, task, ds)
    if task.fold in rd.finished_folds(len(ds.folds)):
        if on_start is not None:
            on_start(task.config.epochs)
        return json.loads(rd.summary(task.fold).read_text())
    seed = run_seed(task.dataset, task.label, task.run, task.fold)
    portable.check(task.config.cpu_isa, resolve_device(task.config.device).type)
    log = EpochLog(rd.staging / "tensorboard" / f"fold-{task.fold}") if task.config.log == "tensorboard" else None
    trainer = FoldTrainer(
        ds,
        ds.folds[task.fold],
        task.optimizer,
        task.config,
        seed=seed,
        checkpoint=rd.checkpoint(task.fold),
        recipe_hash=task.recipe_hash,
        on_start=on_start,
        on_batch=on_batch,
        on_epoch=on_epoch,
        on_curves=log,
    )
    try:
        result = trainer.run()
    finally:
        if log is not None:
            log.close()
    summary = stage_fold(rd, task, ds, result, seed=seed, trainer=trainer)
    rd.checkpoint(task.fold).unlink(missing_ok=True)
    return summary


def check_planned_data(rd: RunDir, task: FoldTask, ds: Dataset) -> None:
    """The staged run was planned under this task's recipe and on this very dataset: never train on (or
    publish) folds of another recipe or of data that changed since."""
    staged = check_staged_recipe(rd, task.recipe_hash)
    if staged["dataset"]["fingerprint"] != ds.fingerprint:
        raise DataError(
            f"{task.spec} has changed since this run was planned (fingerprint {ds.fingerprint}, "
            f"planned {staged['dataset']['fingerprint']})"
        )


def stage_fold(
    rd: RunDir, task: FoldTask, ds: Dataset, result: FoldResult, *, seed: int, trainer: FoldTrainer
) -> dict[str, Any]:
    """Write a trained fold into staging -- its predictions, the validation split's, the fold model -- and
    last its summary, which marks the fold finished (so a kill before it retrains the fold)."""
    task_kind = get_task(ds.task)
    rd.write_fold(task.fold, ds.task, result.probs, result.labels, result.ids)
    if result.val_probs is not None:
        fold = ds.folds[task.fold]
        rd.write_fold(
            task.fold, ds.task, result.val_probs, task_kind.targets(ds, fold.val), ds.ids[fold.val], split="val"
        )
    model = None
    if result.weights is not None:
        from safetensors.torch import save

        atomic_write_bytes(rd.model_file(task.fold), save(result.weights))
        model = {"bytes": rd.model_file(task.fold).stat().st_size, "dtype": result.weights_dtype}
    summary = {
        "fold": task.fold,
        "seed": seed,
        "seconds": round(result.seconds, 3),
        "curves": result.curves,
        "model": model,
        "accuracy": task_kind.fold_score(result.probs, result.labels),
        "train": len(ds.folds[task.fold].train),
        "test": len(result.labels),
        "device": str(trainer.device),
        "threads": trainer.intra_op_threads() or torch.get_num_threads(),
        "recipe_hash": task.recipe_hash,
        "hardware": {
            **portable.record(task.config.cpu_isa, trainer.device.type),
            "memory_format": "channels-last" if trainer.channels_last else "nchw",
        },
    }
    weights = loaded(task.config.model, weights=task.config.weights, pretrained=task.config.pretrained)
    if weights is not None:  # what the fold's model started from: source, sha256, tensors loaded and new
        summary["weights"] = weights
    atomic_write_json(rd.summary(task.fold), summary)
    return summary


def assemble_run(
    rd: RunDir, *, ds: Dataset, dataset: str, label: str, recipe: dict[str, Any], command: str = ""
) -> Path:
    """Publish a run whose folds are all staged: member.json from the fold summaries, then the rename.

    Nothing staged is deleted before the rename, so a failed or killed publish is simply
    repeated by the next ``ens train`` without retraining a fold.
    """
    folds = len(ds.folds)
    missing = [k for k in range(folds) if k not in rd.finished_folds(folds)]
    if missing:
        raise StoreError(f"{rd.staging}: fold(s) {missing} have not finished")
    staged = check_staged_recipe(rd, recipe_hash(recipe))
    summaries = rd.read_summaries(folds)
    task = get_task(ds.task)
    parts = [rd.read_fold(k, ds.task, len(ds.classes)) for k in range(folds)]
    for k, part in enumerate(parts):  # a staged file swapped for another dataset's (or fold's) is never published
        check_fold_ids(rd.fold_file(k), part[2], ds.ids[ds.folds[k].test])
        val = ds.folds[k].val
        if val is not None and len(val) and rd.fold_file(k, "val").exists():
            check_fold_ids(rd.fold_file(k, "val"), rd.read_fold(k, ds.task, len(ds.classes), "val")[2], ds.ids[val])
    probs, targets = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    scores = task.member_scores(probs, targets)  # accuracy (of images, or of pixels) and the task's own
    optimizer, variant = split_key(label)
    nothing, diagnosis = task.learnt_nothing(ds, rd, summaries, scores)
    models = [s.get("model") for s in summaries]
    kept = all(m is not None and rd.model_file(k).is_file() for k, m in enumerate(models))
    fold_models = {
        "present": kept,
        "bytes": sum(m["bytes"] for m in models if m) if kept else 0,
        "dtype": [m["dtype"] for m in models] if kept else [],
    }
    meta = MemberMeta(
        schema_version=SCHEMA_VERSION,
        dataset=dataset,
        dataset_spec=ds.spec,
        label=optimizer,
        variant=variant,
        run=rd.run,
        fingerprint=ds.fingerprint,
        protocol=ds.protocol,
        classes=list(ds.classes),
        folds=folds,
        recipe=staged,
        recipe_hash=recipe_hash(staged),
        optimizer=staged["optimizer"],
        model=staged["model"],
        epochs=staged["epochs"],
        seed=[int(s["seed"]) for s in summaries],
        versions=library_versions(),
        fold_seconds=[s["seconds"] for s in summaries],
        fold_device=[s.get("device") for s in summaries],
        fold_threads=[s.get("threads") for s in summaries],
        curves=[s["curves"] for s in summaries],
        fold_accuracy=[s["accuracy"] for s in summaries],
        accuracy=scores["accuracy"],
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        fold_models=fold_models,
        command=command,
        learnt_nothing=nothing,
        diagnosis=diagnosis,
        task=ds.task,
        dice=scores.get("dice"),
        weights=summaries[0].get("weights"),  # every fold builds the same start
        hardware=summaries[0].get("hardware"),
    )
    return rd.publish(meta)
