"""``ens train`` as one job: make sure N complete members of each optimizer exist, training only the missing.

The steps, each small: load the dataset and plan what is missing (:mod:`.plan`); check once what
every fold task would hit (:func:`preflight`); take each label's lock and stage its runs
(:func:`stage_runs`); run the fold tasks here, in worker processes or on a Dask cluster
(:mod:`.executors`), publishing each run when its last fold lands (:mod:`.executors.job`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .data.dataset import Dataset
from .data.splits import splits_document
from .errors import EnsError, UsageError
from .executors.job import Job, run_local, run_pool
from .executors.lease import Lease, take_over
from .executors.pools import cpu_threads, make_pool
from .executors.progress import JobProgress
from .optim import get
from .plan import LabelPlan, plan_labels, prepare_run
from .recipe import TrainConfig, resolve_normalisation, train_command
from .runs import FoldTask, load_dataset
from .store import Store, check_name, check_variant, run_name, split_key

EXECUTORS = ("local", "processes", "dask")
LOCK_TIMEOUT = 900.0  # seconds a second `ens train` of a label waits for the first before it gives up

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
    lock_timeout: float = LOCK_TIMEOUT  # seconds to wait for a label another `ens train` is training

    @property
    def labels(self) -> list[str]:
        names = [self.label] if isinstance(self.label, str) else list(self.label)
        return list(dict.fromkeys(get(name).label for name in names))  # registry spelling, no repeats

    def check(self) -> None:
        """The request's own values, before the dataset is read."""
        if self.executor not in EXECUTORS:
            raise UsageError(f"unknown executor {self.executor!r}; use {', '.join(EXECUTORS)}")
        if self.scheduler and self.executor != "dask":
            raise UsageError("--scheduler is for --executor dask")
        if self.variant is not None:
            check_variant(self.variant)
        if self.name is not None:
            check_name(self.name, "--name")

    @property
    def cache(self) -> str | None:
        return str(Path(self.cache_dir).resolve()) if self.cache_dir else None


@dataclass
class StagedJob:
    """The runs a job trains (plan, run index), their fold tasks, and the configuration every task uses."""

    runs: list[tuple[LabelPlan, int]]
    tasks: list[FoldTask]
    config: TrainConfig
    device: str


def train_members(req: TrainRequest, echo: Callable[[str], None] = print) -> list[Path]:
    """Make sure ``req.n`` complete members of each label exist; returns the new run directories.

    All missing folds of all labels form one job, so a pool is kept busy across optimizers.
    """
    req.check()
    ds = load_dataset(req.spec, str(req.data_dir), req.config, req.cache, fresh=True)
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
    # the same bytes as the members there were trained on (the fingerprint sees names only), or refused
    note = store.check_content(dataset, ds.content.hashes, where=ds.content.where, spec=ds.spec)
    params = preflight(req, ds, echo)
    check_training_space(req, ds, plans, params)
    store.record_splits(dataset, splits_document(ds.ids, ds.folds))  # the same for every member, or refused
    store.record_content(dataset, ds.content.hashes)
    if note:
        echo(note)
    with contextlib.ExitStack() as stack:
        staged = stage_runs(req, ds, store, dataset, plans, stack, echo)
        if not staged.runs:
            return []
        announce(req, ds, dataset, plans, staged, echo)
        return run_job(req, ds, store, dataset, staged, stack, echo)


def job_config(req: TrainRequest) -> tuple[TrainConfig, str]:
    """The configuration every task of the job uses, and the device type it trains on: the CPU thread count
    fixed once (so every task computes the same bits), a weights file registered by its sha256 (the name the
    recorded command keeps, which any machine with the same file resolves) and ``--normalise auto`` resolved."""
    from .learn.trainer import resolve_device
    from .learn.weights import is_portable, register

    cfg = req.config
    device = resolve_device(cfg.device).type if not req.scheduler else cfg.device
    if cfg.threads is None and device == "cpu":
        cfg = replace(cfg, threads=cpu_threads(req.executor, req.jobs, remote=bool(req.scheduler)))
    if cfg.weights and not is_portable(cfg.weights):  # a file: named by its sha256, found in the weights cache
        cfg = replace(cfg, weights=register(Path(cfg.weights)))
    return replace(cfg, normalise=resolve_normalisation(cfg)), device


def stage_runs(
    req: TrainRequest,
    ds: Dataset,
    store: Store,
    dataset: str,
    plans: list[LabelPlan],
    stack: contextlib.ExitStack,
    echo: Callable[[str], None],
) -> StagedJob:
    """Take each label's lock (held until ``stack`` closes) and stage its missing runs; a label another
    process trains is left to it. Workers may run elsewhere (another cwd, another machine on the shared
    filesystem), so the tasks carry absolute paths."""
    from .data.sources import resolve

    spec = resolve(req.spec).absolute_spec
    root, data_dir = str(Path(req.store_root).resolve()), str(Path(req.data_dir).resolve())
    cfg, device = job_config(req)
    tasks, runs = [], []
    for i, p in enumerate(plans):
        if not p.todo:
            continue

        def waiting(label: str = p.label) -> None:
            echo(
                f"{dataset}/{label} is being trained by another `ens train`; waiting for it "
                f"(at most {req.lock_timeout:g} s, --lock-timeout), then training what is still missing"
            )

        if stack.enter_context(store.wait_lock(dataset, p.label, req.lock_timeout, waiting)):
            p = plans[i] = replan(req, ds, store, dataset, p)  # the other process published runs meanwhile
            if not p.todo:
                echo(f"{dataset}/{p.label}: {len(p.existing)} complete member(s) now; nothing left to train")
                continue
        for run in p.todo:
            rd = store.run_dir(dataset, p.label, run)
            if rd.final.exists():
                continue
            folds = prepare_run(rd, p.recipe, folds=len(ds.folds), restart=req.restart, echo=echo)
            runs.append((p, run))
            tasks += [
                FoldTask(spec, dataset, p.label, run, k, cfg, p.recipe_hash, root, data_dir, req.cache) for k in folds
            ]
    return StagedJob(runs, tasks, cfg, device)


def replan(req: TrainRequest, ds: Dataset, store: Store, dataset: str, plan: LabelPlan) -> LabelPlan:
    """The plan of one label made again (under its lock) after waiting for another process that trained it."""
    optimizer, variant = split_key(plan.label)
    return plan_labels(
        store,
        dataset=dataset,
        ds=ds,
        optimizers=[optimizer],
        variant=variant,
        n=req.n,
        cfg=req.config,
        runs=req.runs,
    )[0]


def announce(
    req: TrainRequest,
    ds: Dataset,
    dataset: str,
    plans: list[LabelPlan],
    staged: StagedJob,
    echo: Callable[[str], None],
) -> None:
    """One line per label: the runs about to train, and where."""
    where = req.executor + (f" ({req.scheduler})" if req.scheduler else "")
    for p in plans:
        names = [run_name(r) for q, r in staged.runs if q is p]
        if names:
            echo(
                f"{dataset}/{p.label}: training run(s) {', '.join(names)} ({len(ds.folds)} fold(s) each, "
                f"{staged.config.epochs} epoch(s), {staged.config.model}) on {where} ..."
            )


def run_job(
    req: TrainRequest,
    ds: Dataset,
    store: Store,
    dataset: str,
    staged: StagedJob,
    stack: contextlib.ExitStack,
    echo: Callable[[str], None],
) -> list[Path]:
    """Run the staged tasks on the request's executor and publish each run as its last fold lands."""
    lease = None
    if req.scheduler and staged.tasks:  # remote workers cannot watch our pid: they watch this lease instead
        labels = {p.label for p, _ in staged.runs}
        lease = stack.enter_context(
            contextlib.closing(take_over(Lease([store.label_dir(dataset, label) for label in labels]), echo))
        )
    bar = JobProgress(len(staged.tasks), req.progress)
    commands = {
        (p.label, r): train_command(
            spec=req.spec,
            data_dir=str(req.data_dir),
            label=p.label,
            run=r,
            cfg=staged.config,  # the weights by their portable name, --normalise auto resolved
            name=req.name,
            device=staged.device,
            threads=staged.config.threads,
        )
        for p, r in staged.runs
    }
    recipes = {(p.label, r): p.recipe for p, r in staged.runs}
    job = Job(ds, dataset, staged.config, store, staged.tasks, recipes, bar, commands)
    with bar:
        job.publish_staged()  # runs whose folds were all staged already (a publish interrupted earlier)
        if staged.tasks and req.executor == "local":
            if req.jobs:
                echo("note: --jobs has no effect with --executor local")
            run_local(job)
        elif staged.tasks:
            pool = make_pool(
                req.executor,
                req.jobs,
                req.scheduler,
                staged.config.device,
                str(store.label_dir(dataset, staged.runs[0][0].label).resolve()),
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


def preflight(req: TrainRequest, ds: Dataset, echo: Callable[[str], None] = print) -> int:
    """Errors every task would hit (unknown model, missing or ill-fitting weights, no CUDA) are raised once,
    here: the model is built and its weights loaded strictly as every fold will, and the line saying what
    loaded (by name or by position, from where) is printed.

    On a remote Dask cluster the devices and the weights are the workers' own, so only the
    model name is checked. Returns the model's number of values (0 when not built here), for the disk check.
    """
    import timm

    from .learn.model import create_model
    from .learn.trainer import resolve_device

    if req.executor == "dask" and req.scheduler:
        if not timm.is_model(req.config.model):
            create_model(req.config.model, len(ds.classes), pretrained=False)  # raises the helpful error
        return 0
    cfg = req.config
    resolve_device(cfg.device)
    resolve_normalisation(cfg)
    model = create_model(
        cfg.model, len(ds.classes), pretrained=cfg.pretrained, weights=cfg.weights or None, stem=cfg.stem
    )
    line = getattr(model, "ens_weights_line", None)
    if line:
        echo(f"weights: {line}")
    return sum(t.numel() for t in model.state_dict().values())


CHECKPOINT_FACTOR = 4  # a checkpoint: the model, the optimizer's moments and a copy of the gradient (float32)


def training_bytes(req: TrainRequest, ds: Dataset, plans: list[LabelPlan], params: int) -> int:
    """What the job will write: every fold's predictions and model (float16, as most are kept; the margin of
    :func:`ensemble.outputs.check_free_space` covers some float32 ones), and the checkpoints alive at once
    (one per parallel task, twice while one is replaced)."""
    from .tasks import get_task

    folds = sum(len(p.todo) for p in plans) * len(ds.folds)
    model = 2 * params if req.config.keep_weights else 0  # float16, as most fold models are kept
    predictions = get_task(ds.task).prediction_bytes(len(ds.ids), len(ds.classes), req.config.size)
    parallel = 1 if req.executor == "local" else max(req.jobs or 2, 1)
    checkpoints = parallel * 2 * CHECKPOINT_FACTOR * 4 * params
    runs = sum(len(p.todo) for p in plans)
    return folds * model + runs * 2 * predictions + checkpoints  # test and validation predictions


def check_training_space(req: TrainRequest, ds: Dataset, plans: list[LabelPlan], params: int) -> None:
    """Refuse, before any fold trains, a job the store's disk cannot hold (once, clearly: not a fold
    trained twice before "No space left on device")."""
    from .outputs import check_free_space

    if params:
        check_free_space(
            Path(req.store_root), training_bytes(req, ds, plans, params), what=f"training into {req.store_root}"
        )
