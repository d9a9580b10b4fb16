"""The Python API: everything the ``ens`` command line does, as functions that return data.

The CLI (:mod:`ensemble.cli`) only parses arguments, calls these and prints what they return.
Tables come back as pandas DataFrames, one row per ensemble (``fuse``), test (``compare``) or
image (``predict``); errors are :class:`ensemble.errors.EnsError` with a one-line message.

    import ensemble as ens

    store = ens.open_store("members")
    for member in store:                       # every complete member, read and checked
        print(member.name, member.meta.accuracy)
    table = ens.fuse(["SGD2+DGrad2", "SGD4"], dataset="lar")
    tests = ens.compare("SGD2+DGrad2", "SGD4", dataset="lar")
    rows = ens.predict("SGD2+DGrad2", ["new/"], dataset="lar")

Nothing here imports torch until a function needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UsageError
from .store import Store

if TYPE_CHECKING:
    import pandas as pd

    from .exported import ExportedEnsemble
    from .fusion.compare import Comparison
    from .fusion.core import FusionResult
    from .recipe import TrainConfig

PathLike = str | Path
REPORT_BYTES = 4 * 2**20  # what one dataset's report takes at most (tables, six figures, the page)

__all__ = [
    "compare",
    "train",
    "train_config",
    "export",
    "fuse",
    "fuse_results",
    "inventory",
    "load_export",
    "members",
    "open_store",
    "predict",
    "report",
]


def train_config(
    optimizers: Sequence[str],
    *,
    dataset: str = "",
    recipe: str | None = None,
    config: PathLike | None = None,
    sets: Sequence[str] = (),
    **options: object,
) -> TrainConfig:
    """The effective training options: the preset (``recipe``; by default the one that suits the dataset's
    task), then the ``config`` YAML file, then ``options`` (checked as their ``ens train`` flags check
    them), then ``sets`` (``[OPT.]KEY=VALUE``). Every value and every combination is checked here, before
    any work, and nothing heavy is imported."""
    from .recipe import OPTION

    converted = {}
    for key, value in options.items():
        if key not in OPTION:
            raise UsageError(f"unknown training option {key!r}; valid: {', '.join(OPTION)}")
        converted[key] = _checked(key, value)
    return compose_train_config(
        list(optimizers), dataset=dataset, recipe=recipe, config_file=config, sets=sets, **converted
    )


def _checked(key: str, value: object) -> object:
    import click

    from .recipe import OPTION

    if value is None:
        return None
    try:
        return OPTION[key].check(value)
    except click.BadParameter as err:
        raise UsageError(f"{key}: {err.message}") from None


def compose_train_config(
    labels: list[str],
    *,
    dataset: str,
    recipe: str | None,
    config_file: PathLike | None,
    sets: Sequence[str],
    **options: object,
) -> TrainConfig:
    """:func:`train_config` for values already converted (the CLI's, by click): None means "not given"."""
    from .data.sources import resolve
    from .optim import get
    from .recipe import DEFAULT_RECIPE, OPTIONS, check_recipe, compose_config

    try:
        labels = list(dict.fromkeys(get(name).label for name in labels))
    except ValueError as err:
        raise UsageError(str(err)) from None
    task = resolve(dataset).task if dataset else None  # the task is a property of the dataset
    if recipe is None:  # and so is the preset that suits it
        recipe = DEFAULT_RECIPE[task] if task else "paper"
    if options.get("weights") is not None and options.get("pretrained") is False:
        raise UsageError("--weights and --no-pretrained exclude each other")
    explicit = {o.name: options.pop(o.name, None) for o in OPTIONS if o.in_presets}
    run_only = {k: v for k, v in options.items() if v is not None}
    cfg = compose_config(
        recipe,
        config_file=str(config_file) if config_file else None,
        explicit=explicit,
        sets=list(sets),
        labels=labels,
        **run_only,
    )
    for label in labels if task else ():
        check_recipe(cfg, label, task)
    return cfg


def train(
    dataset: str,
    optimizers: str | Sequence[str],
    *,
    n: int | None = None,
    runs: Sequence[int] | None = None,
    members_dir: PathLike = "members",
    data_dir: PathLike = "datasets",
    cache_dir: PathLike | None = None,
    recipe: str | None = None,
    config: PathLike | None = None,
    sets: Sequence[str] = (),
    executor: str = "local",
    jobs: int | None = None,
    scheduler: str | None = None,
    variant: str | None = None,
    name: str | None = None,
    restart: bool = False,
    progress: bool = False,
    echo: Callable[[str], None] = print,
    lock_timeout: float = 900.0,
    **options: object,
) -> list[Path]:
    """Make sure ``n`` complete members of each optimizer exist (or exactly the run indices ``runs``),
    training only the missing ones; returns the new run folders. ``options`` are the training options of
    ``ens train`` by name (``epochs=3``, ``model="resnet18"``, ``lr=1e-3``; ``ens recipes`` lists them).

    ``train("lar", ["sgd", "dgrad"], n=7)`` is ``ens train --dataset lar --opt sgd,dgrad --n 7``.
    """
    labels = [optimizers] if isinstance(optimizers, str) else list(optimizers)
    cfg = train_config(labels, dataset=dataset, recipe=recipe, config=config, sets=sets, **options)
    return run_training(
        cfg,
        dataset=dataset,
        optimizers=labels,
        n=n,
        runs=runs,
        members_dir=members_dir,
        data_dir=data_dir,
        cache_dir=cache_dir,
        executor=executor,
        jobs=jobs,
        scheduler=scheduler,
        variant=variant,
        name=name,
        restart=restart,
        progress=progress,
        echo=echo,
        lock_timeout=lock_timeout,
    )


def run_training(
    cfg: TrainConfig,
    *,
    dataset: str,
    optimizers: Sequence[str],
    n: int | None,
    runs: Sequence[int] | None,
    members_dir: PathLike,
    data_dir: PathLike,
    cache_dir: PathLike | None,
    executor: str,
    jobs: int | None,
    scheduler: str | None,
    variant: str | None,
    name: str | None,
    restart: bool,
    progress: bool,
    echo: Callable[[str], None],
    lock_timeout: float = 900.0,
) -> list[Path]:
    """The job of :func:`train` for a composed configuration (the CLI composes it first, torch-free)."""
    from . import portable

    portable.apply(cfg.cpu_isa)  # before this process (and so its workers) first runs a torch, oneDNN or MKL kernel
    from .optim import get
    from .training import TrainRequest, train_members

    if n is not None and runs:
        raise UsageError("--n and --run exclude each other")
    labels = list(dict.fromkeys(get(o).label for o in optimizers))
    request = TrainRequest(
        dataset,
        labels,
        n or 1,
        cfg,
        Path(members_dir),
        Path(data_dir),
        Path(cache_dir) if cache_dir else None,
        executor,
        jobs,
        scheduler,
        progress=progress,
        variant=variant,
        name=name,
        restart=restart,
        runs=list(dict.fromkeys(runs)) if runs else None,
        lock_timeout=lock_timeout,
    )
    return train_members(request, echo=echo)


def open_store(members_dir: PathLike = "members") -> Store:
    """The member store at ``members_dir``; iterate it for every complete member (:class:`ensemble.store.Member`)."""
    return Store(members_dir)


def dataset_name(dataset: str, store: Store) -> str:
    """The store's name for ``dataset``: as written when the store has it, else as the catalog names it."""
    from .data.sources import resolve
    from .errors import EnsError

    if dataset in store.datasets():
        return dataset
    try:
        return resolve(dataset).name
    except EnsError:
        return dataset


def store_dataset(dataset: str, members_dir: PathLike = "members") -> tuple[Store, str]:
    """The store and the dataset's name in it; a :class:`UsageError` listing what the store holds when it
    has no members of it."""
    store = Store(members_dir)
    name = dataset_name(dataset, store)
    if name not in store.datasets():
        known = ", ".join(store.datasets()) or "none"
        raise UsageError(f"no members of {name!r} in {members_dir} (datasets there: {known})")
    return store, name


def fuse_results(
    expressions: str | Sequence[str],
    *,
    dataset: str,
    members_dir: PathLike = "members",
    rule: str = "sum",
    calibrate: str = "none",
    ci: bool = False,
    resamples: int = 1000,
) -> list[FusionResult]:
    """One :class:`ensemble.fusion.FusionResult` per expression: the fused scores, targets, folds and metrics."""
    from .fusion import fuse as fuse_expression

    store, name = store_dataset(dataset, members_dir)
    results = [fuse_expression(store, name, e, rule, calibrate) for e in _as_list(expressions)]
    if ci:
        for r in results:
            r.add_ci(resamples)
    return results


def fuse(
    expressions: str | Sequence[str],
    *,
    dataset: str,
    members_dir: PathLike = "members",
    rule: str = "sum",
    calibrate: str = "none",
    ci: bool = False,
    resamples: int = 1000,
) -> pd.DataFrame:
    """Fuse stored members, one row per expression (e.g. ``"SGD14+DGrad7+Cos1_7"``): the task's metrics
    (classification: accuracy, macro-F1, AUC, NLL, Brier, ECE, pooled over folds; with ``ci`` their 95%
    bootstrap intervals; segmentation: Dice, IoU, HD95)."""
    import pandas as pd

    rows = [
        r.row()
        for r in fuse_results(
            expressions,
            dataset=dataset,
            members_dir=members_dir,
            rule=rule,
            calibrate=calibrate,
            ci=ci,
            resamples=resamples,
        )
    ]
    return pd.DataFrame(rows)


def compare(
    a: str,
    b: str,
    *,
    dataset: str,
    members_dir: PathLike = "members",
    rule: str = "sum",
    calibrate: str = "none",
    resamples: int = 1000,
) -> Comparison:
    """Paired tests of ensemble ``a`` against ``b`` on the same samples. ``.table()`` is a DataFrame (metric,
    A, B, difference, test, p); ``.verdict()`` the one-line reading, calling a difference one at p < 0.05."""
    from collections import Counter

    from .fusion.compare import compare_results

    first, second = fuse_results(
        [a, b], dataset=dataset, members_dir=members_dir, rule=rule, calibrate=calibrate, resamples=resamples
    )
    if Counter(m.path for m in first.members) == Counter(m.path for m in second.members):
        raise UsageError(f"{a} and {b} are the same ensemble (the same members); compare two different ones")
    return compare_results(first, second, resamples)


def predict(
    expression: str | None = None,
    inputs: PathLike | Iterable[PathLike] | np.ndarray | None = None,
    *,
    dataset: str | None = None,
    from_export: PathLike | None = None,
    engine: str = "torch",
    members_dir: PathLike = "members",
    data_dir: PathLike = "datasets",
    rule: str | None = None,
    tta: bool = False,
    fold: int | None = None,
    device: str = "auto",
    batch_size: int = 64,
    masks: PathLike | None = None,
    progress: bool = False,
    out: PathLike | None = None,
) -> pd.DataFrame:
    """Apply the ensemble ``expression`` to new images: one row per image (see :mod:`ensemble.prediction`).

    ``inputs`` are image files, folders, dataset specs (``folder:PATH``, ``medmnist:NAME``), or an array of
    images (N, H, W) or (N, H, W, 3) uint8 (rows are then named ``array:0``, ``array:1``, ...).
    Segmentation members write one mask per image into ``masks``. The members come from the store
    (``expression`` and ``dataset``) or from an ``ens export`` folder (``from_export``, nothing else needed;
    ``engine`` ``onnx`` applies its ONNX models). ``rule`` None is the sum rule, or the export's own.
    ``out`` (.csv, .json or .parquet) also writes the table there, atomically; it and ``masks`` are checked
    (:func:`ensemble.outputs.check_output`) before anything is read.
    """
    from .outputs import check_free_space, check_output
    from .prediction import collect_inputs, write_table
    from .prediction import predict as run_predict

    if inputs is None:
        raise UsageError("inputs: give the images to predict (files, folders, dataset specs or an array)")
    if from_export is not None and (expression is not None or dataset is not None):
        raise UsageError("--from: an export names its own members and dataset; give no expression or --dataset")
    if from_export is None and (expression is None or dataset is None):
        raise UsageError("give an EXPRESSION and --dataset (members from the store), or --from an export folder")
    readonly = [Path(from_export)] if from_export is not None else [Path(members_dir)]
    if out is not None:
        check_output(Path(out), what="--out", kind="file", stores=readonly)
    if masks is not None:
        check_output(Path(masks), what="--masks", kind="folder", stores=readonly)
    ensemble = load_export(from_export, engine=engine) if from_export is not None else None
    if isinstance(inputs, np.ndarray):
        items = _array_inputs(inputs)
    else:
        paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        items = collect_inputs([str(p) for p in paths], Path(data_dir))
    if out is not None:  # a row per image: its path and a dozen numbers
        check_free_space(Path(out), len(items) * 512, what=f"--out {out}")
    if masks is not None and items.files is not None:  # a PNG per image, at most a byte per pixel
        check_free_space(Path(masks), sum(h * w for h, w in items.shapes()), what=f"--masks {masks}")
    options = {
        "device": device,
        "batch_size": batch_size,
        "tta": tta,
        "fold": fold,
        "progress": progress,
        "masks": Path(masks) if masks is not None else None,
    }
    if ensemble is not None:
        table = ensemble.predict(items, rule=rule, **options)
    else:
        if engine != "torch":
            raise UsageError(f"--engine {engine} applies an export's ONNX models: give --from EXPORT_DIR")
        store, name = store_dataset(dataset, members_dir)
        table = run_predict(store, name, expression, items, rule=rule or "sum", **options)
    if not isinstance(inputs, np.ndarray):
        table.attrs["notes"] = items.notes  # an input given twice, predicted once
    if out is not None:
        write_table(table, Path(out))
    return table


def load_export(path: PathLike, *, engine: str = "torch") -> ExportedEnsemble:
    """An ``ens export`` folder read back and checked (its manifest is untrusted input); its ``predict``
    gives the rows :func:`predict` gives from the store."""
    from .exported import load_export as load

    return load(Path(path), engine=engine)


def _array_inputs(images: np.ndarray):  # noqa: ANN202 - an ensemble.prediction.Inputs
    from .prediction import Inputs

    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)) or not len(images):
        raise UsageError(f"inputs: an array of images is (N, H, W) or (N, H, W, 3); got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.number):
        raise UsageError(f"inputs: an array of images holds numbers, got dtype {images.dtype}")
    return Inputs([f"array:{i}" for i in range(len(images))], pixels=images)


def inventory(dataset: str | None = None, *, members_dir: PathLike = "members") -> tuple[list[dict], list[str]]:
    """Every complete member as a dict (dataset, label, run, recipe, accuracy, dice, fold models, disk use,
    path), and the notes on the store: staged runs, labels being trained, stale leases, unreadable members."""
    if not Path(members_dir).is_dir():
        raise UsageError(f"--members-dir {members_dir}: no such folder (the member store `ens train` writes)")
    store = Store(members_dir)
    return store.inventory(dataset_name(dataset, store) if dataset else None)


def members(dataset: str | None = None, *, members_dir: PathLike = "members") -> pd.DataFrame:
    """:func:`inventory`'s members as a DataFrame, one row per member (its notes are dropped)."""
    import pandas as pd

    return pd.DataFrame(inventory(dataset, members_dir=members_dir)[0])


def export(
    expression: str,
    out: PathLike,
    *,
    dataset: str,
    members_dir: PathLike = "members",
    rule: str = "sum",
    onnx: bool | None = None,
) -> Path:
    """Write the ensemble as a self-contained folder (fold models, manifest, ONNX when available)."""
    from .exporting import export as export_folder
    from .outputs import check_output

    check_output(Path(out), what="--out", kind="folder", must_be_new=True, stores=[Path(members_dir)])
    store, name = store_dataset(dataset, members_dir)
    return export_folder(store, name, expression, Path(out), rule=rule, onnx=onnx)


def report(
    *,
    members_dir: PathLike = "members",
    out: PathLike = "reports",
    step: int = 7,
    echo: Callable[[str], None] | None = None,
) -> list[Path]:
    """Regenerate Table 1, Table 2 and the figures of every dataset in the store; returns the HTML pages.
    ``echo`` gets one warning line per thing Table 2 left out (members without validation predictions...)."""
    from .outputs import check_free_space, check_output
    from .reporting.build import report as build_report

    check_output(Path(out), what="--out", kind="folder", stores=[Path(members_dir)])
    store = Store(members_dir)
    if not store.datasets():
        raise UsageError(f"no members in {members_dir}; train some first (ens train ... or ens demo)")
    check_free_space(Path(out), REPORT_BYTES * len(store.datasets()), what=f"--out {out}")
    return build_report(store, Path(out), step, echo)


def _as_list(expressions: str | Sequence[str]) -> list[str]:
    out = [expressions] if isinstance(expressions, str) else list(expressions)
    if not out:
        raise UsageError("give at least one expression (e.g. SGD2+DGrad2)")
    return out
