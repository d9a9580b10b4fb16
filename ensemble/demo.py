"""``ens demo``: the whole pipeline on real medical images, in about two minutes on a laptop CPU.

BreastMNIST (breast ultrasound at 28 px, MedMNIST v2's official train/val/test split; shipped
with ens, see ``ensemble/data/demo/README.md``) stands in for a hospital's dataset, timm's tiny
``test_resnet`` for ResNet50. Three members each of SGD, Adam and DGrad are trained from scratch,
fused with the sum rule, set against each other with 95% bootstrap intervals, and reported
(Tables 1-2 with the honest, validation-chosen ensemble, figures, HTML).

Everything goes into one fresh folder -- the store, the decoded-image cache and the report --
so the demo never touches an existing store, cache or the current folder's ``members/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .errors import UsageError

DATA_DIR = Path(__file__).resolve().parent / "data" / "demo"  # holds medmnist/breastmnist.npz
DATASET = "medmnist:breastmnist"
OPTIMIZERS = ("sgd", "adam", "dgrad")
# small enough for two cores, faithful to MedMNIST's protocol otherwise (0.5/0.5 inputs, epoch kept on
# validation AUC, grey copied to three channels); flips because 546 training images overfit quickly
RECIPE = dict(
    model="test_resnet",
    pretrained=False,
    size=28,
    epochs=12,
    batch_size=64,
    normalise="half",
    augment="flips",
    select="best-val-auc",
    head_lr_factor=1.0,
    weight_decay=0.0,
)
SETS = ("sgd.lr=0.02", "adam.lr=0.002", "dgrad.lr=0.002")


def default_out() -> Path:
    """``ens-demo-<date>-<time>`` in the current folder, made unique."""
    stem = Path(f"ens-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    path, k = stem, 1
    while path.exists():
        path, k = Path(f"{stem}-{k}"), k + 1
    return path


def check_out(out: Path) -> Path:
    """The demo's folder must be new (or empty): it never writes into something a user already has."""
    from .outputs import check_output

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: exists and is not an empty folder; the demo writes into a fresh one")
    return check_output(out, kind="folder")  # no system folder, a parent that can be made


def expressions(n: int) -> list[str]:
    """Every label alone (1 and n members), each mixed pair, and everything: members against ensembles."""
    labels = ["SGD", "Adam", "DGrad"]
    out = [f"{label}1" for label in labels] + [f"{label}{n}" for label in labels if n > 1]
    out += [f"{a}1+{b}1" for i, a in enumerate(labels) for b in labels[i + 1 :]]
    return [*out, "+".join(f"{label}{n}" for label in labels)]


def run_demo(
    out: Path | None = None,
    *,
    n: int = 3,
    threads: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Train, fuse, compare and report the demo into ``out``; returns what it printed, as data."""
    from . import api
    from .fusion.summary import summarise
    from .reporting.tables import render
    from .store import Store

    out = check_out(out or default_out())
    members, cache, reports = out / "members", out / "cache", out / "reports"
    echo(f"ens demo: {n} members each of SGD, Adam and DGrad on BreastMNIST (28 px), into {out}/")
    api.train(
        DATASET,
        list(OPTIMIZERS),
        n=n,
        members_dir=members,
        data_dir=DATA_DIR,
        cache_dir=cache,
        sets=SETS,
        progress=progress,
        echo=echo,
        device="cpu",
        workers=0,
        threads=threads,
        **RECIPE,
    )
    table = api.fuse(expressions(n), dataset=DATASET, members_dir=members, ci=True)
    view = [
        {
            "ensemble": r["expression"],
            "members": r["members"],
            "accuracy [95% CI]": f"{r['accuracy']:.3f} [{r['accuracy_lo']:.3f}, {r['accuracy_hi']:.3f}]",
            "AUC [95% CI]": f"{r['auc']:.3f} [{r['auc_lo']:.3f}, {r['auc_hi']:.3f}]",
        }
        for r in table.to_dict("records")
    ]
    echo(render(view, "table", title="BreastMNIST test split (156 images): members and sum-rule ensembles"))
    summary = next(s for s in summarise(Store(members), step=1))
    mean_member = float(sum(r["accuracy_mean"] * r["members"] for r in summary.table1)) / sum(
        r["members"] for r in summary.table1
    )
    honest = next(r for r in summary.table2 if "honest" in r["selection"] and "learned" not in r["selection"])
    echo(
        f"mean member accuracy {mean_member:.3f}; the ensemble chosen on the validation split (honest), "
        f"{honest['ensemble']}: {honest['accuracy']:.3f} [{honest['accuracy_lo']:.3f}, {honest['accuracy_hi']:.3f}]"
    )
    pages = api.report(members_dir=members, out=reports, step=1)
    echo(f"report: {pages[0]}")
    echo(
        f"members: {members}/; try  ens fuse --dataset {DATASET} SGD{n}+DGrad{n} --members-dir {members}"
        f"   and   ens compare --dataset {DATASET} SGD1+DGrad1 SGD{n} --members-dir {members}"
    )
    return {"table": table, "mean_member": mean_member, "honest": honest, "report": pages[0], "out": out}
