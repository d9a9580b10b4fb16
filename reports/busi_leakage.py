"""How much near-duplicates flatter BUSI's ungrouped cross-validation: writes ``reports/busi_leakage.md``.

``members/busi_lite0`` was cross-validated by image (StratifiedKFold): an image whose near-duplicate
(``reports/busi_groups.csv``, see ``busi_groups.py``) sat in that fold's training part was, in effect, seen
in training. This splits each member's test predictions, and the sum rule of all of them, into images with
such a twin in training and images without, and compares their accuracy (Fisher's exact test); the
grouped members (``members/busi_grouped_lite0``) had no twin in training by construction.

    python reports/busi_leakage.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from scipy.stats import fisher_exact

from ensemble.store import read_member

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def twins_in_training(dataset: Path, group_of: dict[str, str]) -> dict[str, bool]:
    """Per test id: did another image of its group sit in the training part of its fold?"""
    out = {}
    for fold in json.loads((dataset / "splits.json").read_text()):
        train_groups = {group_of[i] for i in fold["train"]}
        for i in fold["val"]:
            out[i] = group_of[i] in train_groups
    return out


def main() -> None:
    rows = list(csv.DictReader((HERE / "busi_groups.csv").open()))
    group_of = {r["path"]: r["group"] for r in rows}
    dataset = ROOT / "members" / "busi_lite0"
    twin = twins_in_training(dataset, group_of)
    runs = sorted(p.parent for p in dataset.glob("*/*/member.json"))
    members = [read_member(run) for run in runs]
    order = list(members[0].ids)
    probs = {}
    for m in members:
        index = {i: k for k, i in enumerate(m.ids)}
        probs[f"{m.label}{m.run + 1 if m.run else ''}"] = m.probs[[index[i] for i in order]]
    labels = members[0].labels
    probs["sum rule (all)"] = np.mean(list(probs.values()), axis=0)
    has_twin = np.array([twin[i] for i in order])
    lines = [
        "# BUSI: accuracy on images with and without a near-duplicate in training",
        "",
        f"`members/busi_lite0` (cross-validated by image). {int(has_twin.sum())} of {len(order)} test images had "
        "a near-duplicate (`reports/busi_groups.csv`) in their fold's training part. Made by "
        "`reports/busi_leakage.py`.",
        "",
        "| member | with a twin in training | without | difference | Fisher p |",
        "|---|---|---|---|---|",
    ]
    for name, p in probs.items():
        right = p.argmax(1) == labels
        a, b = right[has_twin], right[~has_twin]
        _, pvalue = fisher_exact([[a.sum(), (~a).sum()], [b.sum(), (~b).sum()]])
        lines.append(
            f"| {name} | {a.mean():.3f} ({a.sum()}/{len(a)}) | {b.mean():.3f} ({b.sum()}/{len(b)}) | "
            f"{a.mean() - b.mean():+.3f} | {pvalue:.3g} |"
        )
    (HERE / "busi_leakage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
