"""The ``ens`` command line: one click group, one subcommand per job.

Heavy imports (torch, timm) happen inside the commands so ``ens --help`` is instant.
User errors (:class:`ensemble.errors.EnsError`) print one line and exit with their code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from .errors import EnsError, UsageError
from .options import Checksum, Device, SchedulerAddress
from .recipe import click_options

MAX_MEMBERS = 1000  # per optimizer and call; a paper uses 7 to 35

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


class EnsGroup(click.Group):
    """The ``ens`` group: errors the API raises with data are phrased here, for a person at a terminal."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except EnsError as err:
            from .fusion.core import MissingMembers

            if isinstance(err, MissingMembers):
                raise UsageError(
                    f"{err}; add the rest (with the recipe of those there) with:\n  {err.command}"
                ) from None
            raise


@click.group(cls=EnsGroup, context_settings=CONTEXT)
@click.version_option(package_name="ens")
def cli() -> None:
    """ens -- deep ensembles of CNNs for medical image classification.

    \b
      ens demo                                      # a small end-to-end run, no download
      ens train --dataset hela --opt dgrad --n 7    # make sure 7 DGrad members exist
      ens fuse --dataset hela "SGD14+DGrad7+Cos1_7" # sum-rule fusion of stored members
      ens compare --dataset hela SGD7+DGrad7 SGD14  # paired tests of two ensembles
      ens report                                    # tables and figures from members/
    """


# --------------------------------------------------------------------------- optimizers
@cli.command()
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also draw the cyclic terms of Cos1/Cos2 and the CLMR/TASO schedules to this PNG.",
)
def optimizers(plot_path: Path | None) -> None:
    """List the optimizers of the registry (label, kind, defaults, paper)."""
    from rich.console import Console
    from rich.table import Table

    from .optim import REGISTRY, SETTINGS
    from .options import describe

    table = Table(title="ens optimizers")
    for col in ("label", "kind", "defaults", "paper"):
        table.add_column(col, overflow="fold")
    for info in REGISTRY.values():
        defaults = ", ".join(f"{k}={v}" for k, v in info.defaults.items())
        table.add_row(info.label, info.kind, defaults, info.paper)
    console = Console()
    console.print(table)
    settings = Table(title="settings (ens train --set [OPT.]KEY=VALUE)")
    for col in ("setting", "accepts", "optimizers"):
        settings.add_column(col, overflow="fold")
    for key, ptype in SETTINGS.items():
        users = ", ".join(info.label for info in REGISTRY.values() if key in info.defaults)
        settings.add_row(key, describe(ptype), users)
    console.print(settings)
    if plot_path is not None:
        from .optim.plot import plot_schedules
        from .outputs import check_output

        check_output(plot_path, what="--plot", overwrite=True)  # a plot is redrawn in place, as before

        click.echo(f"wrote {plot_schedules(plot_path)}")


# --------------------------------------------------------------------------- data
@cli.group()
def data() -> None:
    """List, check and download datasets."""


DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("datasets"),
    help="Where named datasets live (datasets/hela, datasets/medmnist/NAME.npz, ...).",
)


@data.command("list")
@DATA_DIR
def data_list(data_dir: Path) -> None:
    """Every dataset: where it is expected, whether it is there, images per class; then MedMNIST 2D at each
    size with its official checksums."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .data.scan import scan
    from .data.sources import listed, resolve

    table = Table(title=Text(f"datasets (data dir: {data_dir})"))
    for col in ("dataset", "protocol", "expected at", "status", "images per class"):
        table.add_column(col, overflow="fold")
    notes = []
    for spec, show_absent in listed(data_dir):
        ref = resolve(spec, data_dir)
        where = str(ref.given_path) if ref.given_path else "(built in)"
        if not ref.present:
            if show_absent:
                table.add_row(
                    Text(spec),
                    ref.info.protocol,
                    Text(where),
                    Text("missing", "yellow"),
                    Text(f"ens data fetch {spec}"),
                )
            continue
        try:
            listing = scan(ref)
        except EnsError as err:
            table.add_row(Text(spec), ref.info.protocol, Text(where), Text("error", "red"), Text(str(err)))
            continue
        counts = ", ".join(f"{c}: {int((listing.labels == i).sum())}" for i, c in enumerate(listing.classes))
        table.add_row(
            Text(spec), ref.info.protocol, Text(where), Text(f"present ({len(listing.ids)})", "green"), Text(counts)
        )
        notes += listing.warnings
    console = Console()
    console.print(table)
    console.print(_medmnist_table(data_dir))
    console.print(
        "Any image folder: folder:PATH (or the PATH alone); a manifest of images: csv:PATH "
        "(columns path, label[, patient, split]); your own folds: ens train --splits FILE."
    )
    for note in notes:
        console.print(Text("warning: ", "yellow") + Text(note), highlight=False)


def _medmnist_table(data_dir: Path):  # noqa: ANN202 - a rich Table
    """MedMNIST 2D: one row per dataset, one line per size (28 px first) with its MD5 and whether it is here --
    narrow enough for 100 columns."""
    from rich.table import Table
    from rich.text import Text

    from .data.catalog import MEDMNIST, MEDMNIST_SIZES, medmnist_file

    table = Table(
        title=Text("MedMNIST 2D (v2 and MedMNIST+): ens data fetch medmnist:NAME[@SIZE], 28 px if no size"),
        show_lines=True,
    )
    table.add_column("medmnist:NAME", no_wrap=True)
    table.add_column("task", overflow="fold")
    table.add_column("images", no_wrap=True)
    table.add_column("@SIZE  md5 of the official file", no_wrap=True)
    for name, entry in MEDMNIST.items():
        lines = []
        for size in MEDMNIST_SIZES:
            here = (data_dir / "medmnist" / medmnist_file(name, size)).exists()
            lines.append(Text(f"@{size:<4d} {entry.md5[size]}" + (" here" if here else "")))
        task = f"{entry.task} ({entry.n_classes})"
        counts = "\n".join(f"{part:<5} {n:>6}" for part, n in zip(("train", "val", "test"), entry.split))
        table.add_row(Text(name), task, counts, Text("\n").join(lines))
    return table


@data.command("split")
@click.argument("dataset")
@DATA_DIR
@click.option(
    "--members-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("members"),
    help="The member store whose recorded split is written, where it has one.",
)
@click.option("--name", default=None, help="The dataset's name in the store [default: the catalog's, or the folder's].")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The JSON file to write (a list of folds, {train: [ids], val: [ids]}); edit it, then train --splits.",
)
def data_split(dataset: str, data_dir: Path, members_dir: Path, name: str | None, out: Path) -> None:
    """Write the folds DATASET is trained on: the store's recorded ones, else its own protocol's."""
    from .data.dataset import dataset_folds
    from .data.scan import scan
    from .data.sources import resolve
    from .data.splits import splits_document
    from .io import atomic_write_json
    from .outputs import check_output
    from .store import Store

    check_output(out, stores=[members_dir])  # before the dataset is scanned
    ref = resolve(dataset, data_dir)
    store_name = name or ref.name
    doc = Store(members_dir).recorded_splits(store_name) if ref.splits is None else None
    where = f"recorded in {members_dir / store_name}"
    if doc is None:
        listing = scan(ref)
        doc = splits_document(listing.ids, dataset_folds(ref, listing))
        where = "your --splits file's" if ref.splits else f"its {ref.info.protocol} protocol"
    atomic_write_json(out, doc)
    click.echo(f"{dataset}: {len(doc)} fold(s) ({where}) written to {out}")


@data.command("fetch")
@click.argument("name")
@DATA_DIR
@click.option("--url", help="Download from this address instead of the official one (a mirror).")
@click.option("--checksum", type=Checksum(), help="Expected checksum of the download, as md5:HEX or sha256:HEX.")
def data_fetch(name: str, data_dir: Path, url: str | None, checksum: str | None) -> None:
    """Download NAME from its official source, verify its checksum and unpack it."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from .data.catalog import Source
    from .data.fetch import fetch
    from .data.sources import resolve

    ref = resolve(name, data_dir)
    source = None
    if checksum and not url:
        raise click.UsageError("--checksum goes with --url (catalogue downloads carry their own)")
    if url:
        if not re.match(r"https?://[^/\s]+", url):
            raise click.BadParameter(f"{url!r} is not an http:// or https:// address", param_hint="'--url'")
        filename = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(url.split("?")[0]).name).lstrip(".") or "download"
        source = Source(url, checksum, filename)
    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(f"fetching {name}", total=None)
        path = fetch(
            ref, source=source, on_progress=lambda done, total: bar.update(task, completed=done, total=total or None)
        )
    click.echo(f"{name}: installed at {path}")


# --------------------------------------------------------------------------- train
def _train_options(f):  # noqa: ANN001, ANN202 - a click decorator stack
    """The store and recipe sources, then every training option of :data:`ensemble.recipe.OPTIONS`."""
    options = [
        click.option(
            "--members-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path("members"),
            help="The member store.",
        ),
        DATA_DIR,
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Where decoded datasets are cached [default: the user cache dir, or $ENS_CACHE_DIR].",
        ),
        click.option(
            "--recipe",
            default=None,
            help="Named preset of every training option (`ens recipes`) [default: paper; unet for "
            "segmentation datasets].",
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="YAML file of recipe keys (and a `set:` mapping); explicit flags win.",
        ),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="[OPT.]KEY=VALUE",
            help="An optimizer setting of the registry (`ens optimizers`), for every optimizer of the "
            "job or, as dgrad.lr=1e-4, for one. Repeatable.",
        ),
    ]
    f = click_options(f)
    for option in reversed(options):
        f = option(f)
    return f


_RUN_PARAMS = (
    "dataset",
    "opt",
    "count",
    "runs",
    "members_dir",
    "data_dir",
    "cache_dir",
    "executor",
    "jobs",
    "scheduler",
    "no_progress",
    "variant",
    "name",
    "restart",
    "splits",
    "lock_timeout",
)


def parse_train_args(args: list[str]):  # noqa: ANN201 - (the job's parameters, a TrainConfig)
    """``ens train ARGS`` parsed and composed exactly as the command does, without training: the job's own
    parameters (dataset, optimizers, runs, ...) and the effective TrainConfig. A recorded ``command`` gives
    back the configuration its member was trained with."""
    with train.make_context("train", list(args)) as ctx:
        params = dict(ctx.params)
    job = {k: params.pop(k) for k in _RUN_PARAMS}
    from .api import compose_train_config

    return job, compose_train_config(job["opt"], dataset=job["dataset"], **params)


def _check_opts(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[str]:
    """``--opt sgd --opt dgrad`` or ``--opt sgd,dgrad``: registry labels, each checked."""
    from .optim import get

    labels = []
    for name in (n.strip() for value in values for n in value.split(",")):
        try:
            labels.append(get(name).label)
        except ValueError as err:
            raise click.BadParameter(str(err)) from None
    return list(dict.fromkeys(labels))


def _check_variant(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from .store import check_variant

    try:
        return None if value is None else check_variant(value)
    except EnsError as err:
        raise click.BadParameter(str(err)) from None


def _check_store_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from .store import check_name

    try:
        return None if value is None else check_name(value, "name")
    except EnsError as err:
        raise click.BadParameter(str(err)) from None


@cli.command()
@click.option(
    "--dataset",
    required=True,
    help="hela, bg, lar, digits, medmnist:NAME[@SIZE], folder:PATH, seg:PATH (images/ + masks/), csv:PATH "
    "(a manifest), or a PATH alone (a folder by its layout, or a .csv/.tsv).",
)
@click.option(
    "--opt",
    required=True,
    multiple=True,
    callback=_check_opts,
    help="Optimizer label (see `ens optimizers`); several (--opt sgd,dgrad or repeated) make one job.",
)
@click.option(
    "--n",
    "count",
    type=click.IntRange(min=1, max=MAX_MEMBERS),
    default=None,
    help="Complete members wanted, per optimizer [default: 1].",
)
@click.option(
    "--run",
    "runs",
    type=click.IntRange(min=0, max=10**6 - 1),
    multiple=True,
    help="Train exactly these run indices (repeatable) instead of --n; a run's seeds follow its index.",
)
@_train_options
@click.option(
    "--executor",
    type=click.Choice(["local", "processes", "dask"]),
    default="local",
    help="Where the (run, fold) tasks run.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Parallel workers for processes/dask [default: GPU count, or 2].",
)
@click.option(
    "--scheduler",
    type=SchedulerAddress(),
    default=None,
    help="Dask scheduler address (tcp://host:8786, tls://host:8786) for --executor dask.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (logs, batch jobs).")
@click.option(
    "--variant",
    default=None,
    callback=_check_variant,
    help="Store these members apart under Label@VARIANT (another recipe beside the default one); "
    "fuse them as e.g. DGrad@VARIANT7.",
)
@click.option(
    "--name",
    default=None,
    callback=_check_store_name,
    help="The dataset's name in the store [default: the catalog's, or the folder's name].",
)
@click.option(
    "--restart",
    is_flag=True,
    help="A run staged under another recipe is moved aside (kept as .<run>.stale-*) and started clean.",
)
@click.option(
    "--splits",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Your own folds: a JSON list of {train: [ids], val: [ids]} (nnU-Net's splits_final.json; val is the "
    "fold's test part). Part of the dataset: the same as DATASET?splits=FILE.",
)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0, max=7 * 86400),
    default=900,
    metavar="SECONDS",
    help="How long to wait for a label another `ens train` is training before giving up (then the runs it "
    "left missing are trained).",
)
def train(
    dataset: str,
    opt: list[str],
    count: int | None,
    runs: tuple[int, ...],
    members_dir: Path,
    data_dir: Path,
    cache_dir: Path | None,
    executor: str,
    jobs: int | None,
    scheduler: str | None,
    no_progress: bool,
    variant: str | None,
    name: str | None,
    restart: bool,
    splits: Path | None,
    lock_timeout: float,
    **kw,
) -> None:  # noqa: ANN003
    """Make sure N complete members of each optimizer exist; train only the missing ones.

    Every option starts from a named recipe (--recipe paper, the seed paper's protocol; see
    `ens recipes`), then --config FILE, then the flags given. Members of one label share one
    recipe: asking for more under other settings is refused with what differs, unless they go to
    a --variant. Every missing (run, fold) of every optimizer named is one task of a single job,
    run here (--executor local), in worker processes (processes) or on a Dask cluster (dask).
    """
    if count is not None and runs:
        raise click.UsageError("--n and --run exclude each other")
    from .data.sources import with_splits

    dataset = with_splits(dataset, splits)  # the folds travel with the dataset: into workers and retrain commands
    from .api import compose_train_config

    cfg = compose_train_config(opt, dataset=dataset, **kw)  # every option checked before torch is imported
    from .api import run_training

    run_training(
        cfg,
        dataset=dataset,
        optimizers=opt,
        n=count,
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
        progress=not no_progress and sys.stderr.isatty(),
        echo=click.echo,
        lock_timeout=lock_timeout,
    )


@cli.command()
@click.argument("names", nargs=-1)
def recipes(names: tuple[str, ...]) -> None:
    """List the named recipes (presets of every `ens train` option) with every value."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .recipe import RECIPE_HELP, RECIPE_KEYS, RECIPES

    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise click.BadParameter(f"unknown recipe {unknown[0]!r}; valid: {', '.join(RECIPES)}", param_hint="NAMES")
    shown = list(names) or list(RECIPES)
    table = Table(title="ens recipes (ens train --recipe NAME; flags and --config override any value)")
    table.add_column("key")
    for n in shown:
        table.add_column(n, overflow="fold")
    for key in RECIPE_KEYS:
        table.add_row(key, *(Text(str(RECIPES[n][key])) for n in shown))
    console = Console()
    console.print(table)
    for n in shown:
        console.print(Text(f"{n}: {RECIPE_HELP[n]}"))


# --------------------------------------------------------------------------- demo
@cli.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="A new (or empty) folder for the demo's store, cache and report [default: ./ens-demo-<date>-<time>].",
)
@click.option("--n", "count", type=click.IntRange(min=1, max=10), default=3, help="Members per optimizer.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch CPU threads while training [default: every usable core].",
)
def demo(out: Path | None, count: int, threads: int | None) -> None:
    """Train small members of SGD, Adam and DGrad on BreastMNIST (shipped with ens), fuse them, set members
    against ensembles with 95% intervals and write the HTML report -- all into one fresh folder."""
    from .demo import check_out, run_demo

    if out is not None:
        check_out(out)
    run_demo(out, n=count, threads=threads, progress=sys.stderr.isatty(), echo=click.echo)


# --------------------------------------------------------------------------- fuse
FORMATS = ("table", "csv", "markdown", "latex", "json")


FUSE_OPTIONS = [
    click.option("--dataset", required=True, help="Dataset as given to ens train (hela, lar, medmnist:NAME, ...)."),
    click.option("--rule", type=click.Choice(["sum", "product", "max", "vote"]), default="sum", help="Fusion rule."),
    click.option(
        "--calibrate",
        type=click.Choice(["none", "temperature"]),
        default="none",
        help="Temperature-scale each member first (fitted on the validation split, else cross-fitted "
        "over folds: never on the rows it scores).",
    ),
    click.option(
        "--resamples",
        type=click.IntRange(min=1000, max=1_000_000),
        default=1000,
        help="Bootstrap resamples (stratified by class, seed 0) for intervals and paired tests.",
    ),
    click.option(
        "--members-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("members"),
        help="The member store.",
    ),
]


def _fuse_options(f):  # noqa: ANN001, ANN202 - a click decorator stack
    for option in reversed(FUSE_OPTIONS):
        f = option(f)
    return f


@cli.command()
@click.argument("expressions", nargs=-1, required=True)
@_fuse_options
@click.option("--ci", is_flag=True, help="95% bootstrap intervals of accuracy, macro-F1 and AUC.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", help="Output format.")
@click.option(
    "--details",
    is_flag=True,
    help="The full table (every metric, fold spread, interval bounds), per-class precision/recall/F1 and the "
    "confusion matrix. The default terminal table shows the key columns; --format gives every column.",
)
def fuse(
    dataset: str,
    expressions: tuple[str, ...],
    rule: str,
    calibrate: str,
    resamples: int,
    members_dir: Path,
    ci: bool,
    fmt: str,
    details: bool,
) -> None:
    """Fuse stored members, one row per EXPRESSION (e.g. "SGD14+DGrad7+Cos1_7").

    Each row gives accuracy, macro-F1, AUC, NLL, Brier score and ECE (15 equal-width bins of the
    top-class confidence), pooled over folds. The terminal table shows the key columns (with --ci, each
    interval beside its metric) in the terminal's width; --details or --format csv/json/markdown/latex
    give every column.
    """
    from .api import fuse_results, store_dataset
    from .fusion import details as fusion_details
    from .reporting.tables import key_view, render

    name = store_dataset(dataset, members_dir)[1]
    results = fuse_results(
        list(expressions),
        dataset=dataset,
        members_dir=members_dir,
        rule=rule,
        calibrate=calibrate,
        ci=ci,
        resamples=resamples,
    )
    rows = [r.row() for r in results]
    title = f"{name}: {rows[0]['rule'] if rows else rule} rule"
    if fmt == "table" and not details:  # the key columns; intervals to 3 digits, so that they fit
        click.echo(render(key_view(rows, 3 if ci else 4), fmt, title=title, digits=3 if ci else 4))
    else:
        click.echo(render(rows, fmt, title=title))
    if details and fmt != "json":
        for r in results:
            if r.labels.ndim != 1:  # masks, not one class per sample: no per-class table (the full one is above)
                continue
            per, cm = fusion_details(r)
            click.echo(f"\n{r.expression}: per class")
            click.echo(render(per, fmt))
            classes = r.members[0].classes
            click.echo("confusion matrix (rows: true class, columns: predicted)")
            click.echo(
                render([{"true": c, **{p: int(v) for p, v in zip(classes, row)}} for c, row in zip(classes, cm)], fmt)
            )


@cli.command()
@click.argument("expr_a")
@click.argument("expr_b")
@_fuse_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", help="Output format.")
def compare(
    dataset: str, expr_a: str, expr_b: str, rule: str, calibrate: str, resamples: int, members_dir: Path, fmt: str
) -> None:
    """Test ensemble EXPR_A against EXPR_B on the same samples.

    Accuracy: McNemar's exact test. AUC: DeLong's test (two classes), else a paired bootstrap of
    the macro one-vs-rest AUC. Macro-F1: paired bootstrap. The last line is the verdict, with
    every p-value; a difference is only called one at p < 0.05.
    """
    from . import api
    from .reporting.tables import render

    name = api.store_dataset(dataset, members_dir)[1]
    result = api.compare(
        expr_a, expr_b, dataset=dataset, members_dir=members_dir, rule=rule, calibrate=calibrate, resamples=resamples
    )
    a, b = result.a, result.b
    if fmt == "json":
        import json

        click.echo(
            json.dumps(
                {
                    "a": a.expression,
                    "b": b.expression,
                    "samples": len(a.labels),
                    "tests": result.rows,
                    "verdict": result.verdict(),
                },
                indent=2,
            )
        )
        return
    click.echo(render(result.rows, fmt, title=f"{name}: A = {a.expression}, B = {b.expression} ({rule} rule)"))
    click.echo(result.verdict())


# --------------------------------------------------------------------------- predict, members, export
def _check_out_suffix(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and value.suffix.lower() not in (".csv", ".json", ".parquet"):
        raise click.BadParameter(f"{value}: write .csv, .json or .parquet")
    return value  # where it may be written is checked by ensemble.outputs, before any work


@cli.command()
@click.option("--dataset", default=None, help="The dataset the members were trained on (as for ens fuse).")
@click.option(
    "--from",
    "from_export",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="EXPORT_DIR",
    help="Apply the ensemble `ens export` wrote into this folder (no store, no --dataset, no EXPRESSION).",
)
@click.option(
    "--engine",
    type=click.Choice(["torch", "onnx"]),
    default="torch",
    help="With --from: apply the fold models in PyTorch, or the folder's ONNX models (onnxruntime, CPU).",
)
@click.argument("arguments", nargs=-1, required=True, metavar="[EXPRESSION] INPUTS...")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=_check_out_suffix,
    help="Write the table here (.csv, .json or .parquet) [default: CSV on standard output].",
)
@click.option(
    "--rule",
    type=click.Choice(["sum", "product", "max", "vote"]),
    default=None,
    help="Fusion rule [default: sum; with --from, the export's].",
)
@click.option(
    "--tta",
    is_flag=True,
    help="Average the softmax over the image, its left-right flip, its top-bottom flip and both flips.",
)
@click.option(
    "--fold",
    type=click.IntRange(min=0),
    default=None,
    help="Apply only fold K's model of each member [default: the mean of all fold models].",
)
@click.option("--device", type=Device(), default="auto", help="cpu, cuda, cuda:N, mps or auto.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Images per forward pass.")
@click.option(
    "--masks",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Segmentation members: write each image's fused mask here (<name>.png, the image's size).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("datasets"),
    help="Where medmnist:NAME inputs are found.",
)
@click.option(
    "--members-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("members"), help="The member store."
)
def predict(
    dataset: str | None,
    from_export: Path | None,
    engine: str,
    arguments: tuple[str, ...],
    out: Path | None,
    rule: str | None,
    tta: bool,
    fold: int | None,
    device: str,
    batch_size: int,
    masks: Path | None,
    data_dir: Path,
    members_dir: Path,
) -> None:
    """Apply the ensemble EXPRESSION of the store (or the export --from EXPORT_DIR) to INPUTS (image files,
    folders, folder:PATH, seg:PATH's images, medmnist:NAME's test split).

    One row per image: path, the fused probability of each class, the predicted class, and its
    uncertainty -- predictive entropy, the members' mutual information (epistemic part) and the
    share of members that agree with the fused prediction. Segmentation members write a mask per
    image into --masks DIR; their rows give the mask, each class's share of the pixels and the
    mean entropy and agreement over the pixels.

    With --from EXPORT_DIR the members are those `ens export` wrote there: give only INPUTS.
    """
    from click.core import ParameterSource

    from . import api
    from .prediction import write_table

    ctx = click.get_current_context()
    if from_export is not None:
        if dataset is not None:
            raise click.UsageError("--from: the export names its own dataset and members; drop --dataset")
        if ctx.get_parameter_source("members_dir") is not ParameterSource.DEFAULT:
            raise click.UsageError("--from: the export holds its own members; drop --members-dir")
        expression, inputs = None, list(arguments)
    else:
        if dataset is None:
            raise click.UsageError("give --dataset (members from the store) or --from EXPORT_DIR (an export)")
        if len(arguments) < 2:
            raise click.UsageError("give an EXPRESSION and at least one INPUT (image files, folders, dataset specs)")
        if engine != "torch":
            raise click.UsageError("--engine onnx applies an export's ONNX models: give --from EXPORT_DIR")
        expression, inputs = arguments[0], list(arguments[1:])
    table = api.predict(
        expression,
        inputs,
        dataset=dataset,
        from_export=from_export,
        engine=engine,
        members_dir=members_dir,
        data_dir=data_dir,
        rule=rule,
        device=device,
        batch_size=batch_size,
        tta=tta,
        fold=fold,
        progress=sys.stderr.isatty(),
        masks=masks,
        out=out,
    )
    for note in table.attrs.get("notes", []):
        click.echo(f"note: {note}", err=True)
    if out is None:
        click.echo(write_table(table, None), nl=False)
    else:
        click.echo(f"wrote {len(table)} row(s) to {out}", err=True)


@cli.command()
@click.option("--dataset", default=None, help="Only this dataset [default: every dataset in the store].")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", help="Output format.")
@click.option(
    "--members-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("members"), help="The member store."
)
def members(dataset: str | None, fmt: str, members_dir: Path) -> None:
    """The store at a glance: members per dataset and label, their recipe, accuracy, fold models and disk use.

    Staged runs, labels being trained, stale leases and unreadable members are flagged (with
    --format json: the members as a list on standard output, the flags on standard error).
    """
    import json

    from . import api
    from .reporting.tables import render

    rows, notes = api.inventory(dataset, members_dir=members_dir)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        for note in notes:
            click.echo(f"note: {note}", err=True)
        return
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["label"]), []).append(r)
    summary = [
        {
            "dataset": ds,
            "label": label,
            "members": len(rs),
            "recipe": rs[0]["recipe"],
            "recipe_hash": (rs[0]["recipe_hash"] or "--")[:8],
            "accuracy_mean": float(sum(r["accuracy"] or 0 for r in rs) / len(rs)),
            **(
                {"dice_mean": float(sum(r["dice"] for r in rs) / len(rs))}
                if all(r.get("dice") is not None for r in rs)
                else {}
            ),
            "fold_models": "all"
            if all(r["weights"] for r in rs)
            else "none"
            if not any(r["weights"] for r in rs)
            else "some",
            "disk_MB": round(sum(r["bytes"] for r in rs) / 2**20, 2),
        }
        for (ds, label), rs in groups.items()
    ]
    click.echo(
        render(summary, "table", title=f"members in {members_dir}")
        if summary
        else f"no complete members in {members_dir}"
    )
    for note in notes:
        click.echo(f"note: {note}")


@cli.command("export")
@click.option("--dataset", required=True, help="The dataset the members were trained on (as for ens fuse).")
@click.argument("expression")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The folder to create.")
@click.option("--rule", type=click.Choice(["sum", "product", "max", "vote"]), default="sum", help="Fusion rule.")
@click.option(
    "--onnx/--no-onnx",
    default=None,
    help="Also write ONNX models, checked against PyTorch [default: when onnx is installed].",
)
@click.option(
    "--members-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("members"), help="The member store."
)
def export_cmd(dataset: str, expression: str, out: Path, rule: str, onnx: bool | None, members_dir: Path) -> None:
    """Write the ensemble EXPRESSION as a self-contained folder: fold models, manifest, ONNX."""
    from . import api

    path = api.export(expression, out, dataset=dataset, members_dir=members_dir, rule=rule, onnx=onnx)
    click.echo(f"wrote {path} (manifest.json, fold models); apply it with: ens predict --from {path} IMAGES...")


# --------------------------------------------------------------------------- report
@cli.command()
@click.option(
    "--members-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("members"), help="The member store."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    help="Where tables and figures go (one folder per dataset).",
)
@click.option(
    "--step",
    type=click.IntRange(min=1),
    default=7,
    help="Granularity of the per-label member counts in the best-combination search, used only where searching "
    "every count would try more than 20,000 combinations.",
)
def report(members_dir: Path, out: Path, step: int) -> None:
    """Regenerate Table 1, Table 2 and figures for every dataset in the store."""
    from . import api

    for page in api.report(members_dir=members_dir, out=out, step=step, echo=lambda line: click.echo(line, err=True)):
        click.echo(f"wrote {page.parent}/ (table1, table2 as .md/.csv/.tex, figures, {page.name})")


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and an exit code."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort as err:
        if isinstance(err.__cause__, EOFError):  # click turns every EOFError into Abort: a file ended early
            from .errors import first_line

            click.echo(
                f"Error: a file ended before its end ({first_line(err.__cause__)}); it is empty or truncated", err=True
            )
            sys.exit(1)
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except EnsError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(err.exit_code)
    except UnicodeError as err:  # a name or a file that is not UTF-8, wherever it surfaced
        click.echo(
            f"Error: text that is not UTF-8 ({type(err).__name__}: {err.reason} at position {err.start}); "
            "a file or folder name with bytes from another encoding? rename it",
            err=True,
        )
        sys.exit(1)
    except OSError as err:  # a full disk, a read-only folder: the environment's fault, not a bug
        from .outputs import environment_fault

        line = environment_fault(err)
        if line is None:
            _internal(err)
        click.echo(f"Error: {line}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as err:  # a bug: one line for the user, the traceback on request
        _internal(err)


def _internal(err: Exception) -> None:
    """A bug: one line for the user, the traceback with ENS_DEBUG=1."""
    import os

    if os.environ.get("ENS_DEBUG"):
        raise err
    from .errors import first_line

    click.echo(
        f"Error: internal error ({first_line(err)}); rerun with ENS_DEBUG=1 for the traceback and report it",
        err=True,
    )
    sys.exit(1)


if __name__ == "__main__":
    main()
