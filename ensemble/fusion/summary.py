"""What the report shows, computed from the store: Table 1 (stand-alone members), Table 2 (ensembles),
and the arrays behind the figures. :mod:`ensemble.reporting` only renders these.

Members are grouped by dataset fingerprint: members trained on different versions of a
dataset are reported separately and never fused together.

Table 2's search over per-label member counts picks the best combination on the same
test folds it reports -- optimistic. The honest variant picks it without looking at the
samples it is scored on: on the validation split when the dataset has one (MedMNIST), else
cross-validated over folds (for each fold, the combination that is best on the other folds).
Learned fusions (weighted sum, greedy selection, stacking; :mod:`.learned`) are fitted the same
honest way and shown beside the sum rule. Every Table 2 row has a 95% bootstrap interval of its
accuracy and its calibration (NLL, Brier, ECE); :func:`mixed_vs_single` puts the seed paper's
central question -- a mixed ensemble against a one-optimizer ensemble of the same size -- to a
paired test, and :func:`diversity` measures how differently the labels err.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError
from ..optim import REGISTRY
from ..store import Member, Store, check_one_recipe, read_member, recipe_summary, split_key
from ..tasks import get_task
from .calibrate import calibrate
from .compare import compare_results
from .core import aligned
from .expr import parse, term_text
from .learned import LEARNED, NAMES, honest_pool, learned_fusion
from .metrics import per_class, scores_table
from .rules import sum_rule
from .search import search, search_step
from .stats import bootstrap_ci, pair_diversity

SEED_ENSEMBLES = [
    "Adam7",
    "diffGrad7",
    "DGrad7",
    "Cos1_7",
    "Cos2_7",
    "DGrad7+Cos1_7",
    "DGrad7+Cos1_7+Cos2_7",
    "DGrad7+Cos1_7+diffGrad7",
    "DGrad14",
    "DGrad14+Cos1_7",
    "SGD14",
    "SGD7",
    "SGD7+DGrad7",
    "SGD14+DGrad7+Cos1_7",
    "SGD14+DGrad7+Cos1_7+diffGrad7",
]


def table1(by_label: dict[str, list[Member]]) -> list[dict]:
    """Per label (and variant): mean and std of the stand-alone members, and the recipe they share."""
    rows = []
    for label, members in by_label.items():
        s = [scores_table(m.labels, m.probs) for m in members]
        acc, f1 = np.array([x["accuracy"] for x in s]), np.array([x["f1_macro"] for x in s])
        rows.append(
            {
                "label": label,
                "members": len(members),
                "accuracy_mean": acc.mean(),
                "accuracy_std": acc.std(ddof=1) if len(acc) > 1 else 0.0,
                "f1_mean": f1.mean(),
                "f1_std": f1.std(ddof=1) if len(f1) > 1 else 0.0,
                "nll_mean": float(np.mean([x["nll"] for x in s])),
                "ece_mean": float(np.mean([x["ece"] for x in s])),
                "ece_temperature_mean": _calibrated_ece(members),
                "learnt_nothing": sum(m.meta.learnt_nothing for m in members),
                "recipe": members[0].recipe_hash[:8] or "--",
                "setup": recipe_summary(members[0].meta.recipe),
            }
        )
    return rows


def _calibrated_ece(members: list[Member]) -> float:
    """Mean ECE of the members after temperature scaling (NaN when it cannot be fitted honestly)."""
    try:
        return float(np.mean([scores_table(m.labels, m.probs)["ece"] for m in calibrate(members)]))
    except UsageError:
        return float("nan")


def _expr(counts: dict[str, int]) -> str:
    return "+".join(term_text(lab, k) for lab, k in counts.items() if k)


def _fused(by_label: dict[str, list[Member]], counts: dict[str, int]):
    members = [m for lab, k in counts.items() for m in by_label[lab][:k]]
    probs, y, fold_of, _ = aligned(members)
    return sum_rule(probs), y, fold_of, len(members)


def table2(
    by_label: dict[str, list[Member]],
    step: int,
    top: int = 5,
    val_by_label: dict[str, list[Member]] | None = None,
    notes: list[str] | None = None,
) -> list[dict]:
    """The seed's ensembles, the best combinations on the test folds (every count up to what each label holds
    when that search is affordable, :func:`.search.search_step`), the honest selection and the learned
    fusions. ``notes`` collects what was left out and why (members without validation predictions, a
    selection that cannot be made honestly). ``val_by_label`` is read from the members themselves now."""
    notes = notes if notes is not None else []
    rows = []
    for expr in SEED_ENSEMBLES:
        terms = parse(expr)
        if all(t.label in by_label and len(by_label[t.label]) >= t.count for t in terms):
            scores, y, fold_of, n = _fused(by_label, {t.label: t.count for t in terms})
            rows.append({"ensemble": expr, "selection": "seed's list", "members": n, **_metrics(y, scores, fold_of)})
    grid = search_step(by_label, step)
    found = search(by_label, grid)
    optimistic = (
        "best on test folds (optimistic)" if grid == 1 else f"best on test folds (optimistic; counts by {grid})"
    )
    for _, counts in found[:top]:
        scores, y, fold_of, n = _fused(by_label, counts)
        rows.append({"ensemble": _expr(counts), "selection": optimistic, "members": n, **_metrics(y, scores, fold_of)})
    rows = distinct(rows, "ensemble", "selection")  # the search may find a seed's-list ensemble again
    try:
        pool = honest_pool(by_label)
    except UsageError as err:
        notes.append(str(err))
        return rows
    notes += pool.notes()
    rows.append(_honest(pool.by_label, step, pool.val_by_label))
    total = sum(len(ms) for ms in pool.by_label.values())
    for method in LEARNED:
        if total < 2:
            break
        try:
            scores, y, fold_of, how = learned_fusion(method, pool.by_label)
        except UsageError as err:
            notes.append(f"{NAMES[method]}: {err}")
            continue
        rows.append(
            {
                "ensemble": f"all {total} members: {NAMES[method]}",
                "selection": f"learned, {how} (honest)",
                "members": total,
                **_metrics(y, scores, fold_of),
            }
        )
    return rows


def _metrics(y: np.ndarray, scores: np.ndarray, fold_of: np.ndarray) -> dict[str, float]:
    m = scores_table(y, scores, fold_of)
    ci = bootstrap_ci(y, scores)
    return {
        "accuracy": m["accuracy"],
        "accuracy_lo": ci["accuracy_lo"],
        "accuracy_hi": ci["accuracy_hi"],
        "f1_macro": m["f1_macro"],
        "auc": m["auc"],
        "nll": m["nll"],
        "brier": m["brier"],
        "ece": m["ece"],
    }


def mixed_vs_single(by_label: dict[str, list[Member]], resamples: int = 1000) -> list[dict]:
    """For labels A and B: the mixed ensemble A{k}+B{k} against each single-optimizer ensemble of the same
    size the store holds, A{2k} and B{2k}, with the paired tests (k is the largest that allows one). A
    sum-rule ensemble is a multiset (A1+B1 is B1+A1), so each mixed ensemble is built once, written in the
    store's label order, and each comparison is one row."""
    from .core import fuse_members

    rows = []
    labels = list(by_label)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            n_a, n_b = len(by_label[a]), len(by_label[b])
            k = min(max(n_a, n_b) // 2, n_a, n_b)
            if k < 1:
                continue
            mixed = fuse_members(by_label[a][:k] + by_label[b][:k], "sum", f"{term_text(a, k)}+{term_text(b, k)}")
            for lab in (a, b):
                if len(by_label[lab]) < 2 * k:
                    continue
                single = fuse_members(by_label[lab][: 2 * k], "sum", term_text(lab, 2 * k))
                cmp = compare_results(mixed, single, resamples)
                acc, auc = cmp.rows[0], cmp.rows[1]
                rows.append(
                    {
                        "mixed": mixed.expression,
                        "single": single.expression,
                        "accuracy_mixed": acc["A"],
                        "accuracy_single": acc["B"],
                        "difference": acc["difference"],
                        "p_mcnemar": acc["p"],
                        "auc_mixed": auc["A"],
                        "auc_single": auc["B"],
                        f"p_auc ({auc['test']})": auc["p"],
                        "verdict": _short_verdict(acc["difference"], acc["p"]),
                    }
                )
    return distinct(rows, "mixed", "single")


def multiset(expression: str) -> object:
    """What a sum-rule expression fuses, order aside: its (label, members) pairs, so "SGD1+DGrad1" is
    "DGrad1+SGD1"; text that is no expression (a learned fusion's name) stands for itself."""
    try:
        terms = parse(expression)
    except UsageError:
        return expression
    counts: dict[str, int] = defaultdict(int)
    for t in terms:
        counts[t.label] += t.count
    return frozenset((lab, k) for lab, k in counts.items() if k)


def distinct(rows: list[dict], column: str, *also: str) -> list[dict]:
    """The rows with the first of each distinct ensemble in ``column`` (a multiset; with ``also``, per
    value of those columns too), in order."""
    seen: set = set()
    out = []
    for row in rows:
        key = (multiset(str(row[column])), *(row[c] for c in also))
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _short_verdict(difference: float, p: float) -> str:
    if not p < 0.05 or difference == 0:
        return f"no significant difference (p = {p:.3g})"
    return f"{'mixed' if difference > 0 else 'single'} more accurate (p = {p:.3g})"


def diversity(by_label: dict[str, list[Member]]) -> list[dict]:
    """Yule's Q, double-fault and error correlation between labels: the mean over pairs of distinct members."""
    rows = []
    correct = {}
    for label, members in by_label.items():
        probs, y, _, _ = aligned(members)
        correct[label] = probs.argmax(2) == y  # (members, N)
    labels = list(by_label)
    for i, a in enumerate(labels):
        for b in labels[i:]:
            pairs = [
                pair_diversity(ca, cb)
                for x, ca in enumerate(correct[a])
                for z, cb in enumerate(correct[b])
                if a != b or x < z
            ]
            if not pairs:
                continue
            rows.append(
                {
                    "label_a": a,
                    "label_b": b,
                    "pairs": len(pairs),
                    **{k: _nanmean([p[k] for p in pairs]) for k in pairs[0]},
                }
            )
    return rows


def _nanmean(values: list[float]) -> float:
    """Mean of the defined values (Yule's Q is undefined for two members that never disagree)."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _honest(by_label: dict[str, list[Member]], step: int, val_by_label: dict[str, list[Member]] | None) -> dict:
    """The combination chosen without the samples it is scored on: on ``val_by_label`` (the same members'
    validation predictions), else cross-validated over the folds (:func:`.learned.honest_pool` says which)."""
    step = search_step(by_label, step)
    if val_by_label:
        counts = search(val_by_label, step)[0][1]
        scores, y, fold_of, n = _fused(by_label, counts)
        return {
            "ensemble": _expr(counts),
            "selection": "chosen on validation split (honest)",
            "members": n,
            **_metrics(y, scores, fold_of),
        }
    probs, y, fold_of, _ = aligned([m for ms in by_label.values() for m in ms])
    chosen = []
    full = np.zeros((len(y), probs.shape[2]))
    for k in np.unique(fold_of):
        counts = search(by_label, step, mask=fold_of != k)[0][1]  # refuses a mask of zero rows
        chosen.append(_expr(counts))
        scores, _, _, _ = _fused(by_label, counts)
        full[fold_of == k] = scores[fold_of == k]
    return {
        "ensemble": " | ".join(dict.fromkeys(chosen)),
        "selection": "cross-validated over folds (honest)",
        "members": "per fold",
        **_metrics(y, full, fold_of),
    }


@dataclass
class GroupSummary:
    """Everything the report shows for one dataset version: its members, both tables, the best ensemble."""

    name: str  # the report's folder: the dataset, or dataset-fingerprint when the store holds several versions
    fingerprint: str
    by_label: dict[str, list[Member]]
    table1: list[dict]
    table2: list[dict]
    comparison: list[dict]
    diversity: list[dict]
    notes: list[str] = field(default_factory=list)  # what Table 2 left out, and why

    @property
    def best(self) -> str:
        return next(r for r in self.table2 if r["selection"].startswith("best"))["ensemble"]

    def per_class(self) -> list[dict]:
        """Precision, recall, F1 and support per class of the best ensemble."""
        scores, y, _, _ = _fused(self.by_label, {t.label: t.count for t in parse(self.best)})
        return per_class(y, scores, next(iter(self.by_label.values()))[0].classes)[0]


def groups(store: Store, dataset: str) -> dict[str, dict[str, list[Member]]]:
    """fingerprint -> label key -> members (by run index); every member read and checked, and the dataset's
    content record (:meth:`ensemble.store.Store.check_members_content`)."""
    out: dict[str, dict[str, list[Member]]] = defaultdict(lambda: defaultdict(list))
    everyone: list[Member] = []
    for label in store.labels(dataset):
        members = [read_member(p) for p in store.member_dirs(dataset, label)]
        check_one_recipe(members)
        everyone += members
        for m in members:
            out[m.fingerprint][label].append(m)
    store.check_members_content(dataset, everyone)
    order = {lab: i for i, lab in enumerate(REGISTRY)}

    def registry_order(item: tuple[str, list[Member]]) -> tuple[int, str]:
        return order.get(split_key(item[0])[0], 99), item[0]

    return {fp: dict(sorted(d.items(), key=registry_order)) for fp, d in out.items()}


def val_members(by_label: dict[str, list[Member]]) -> dict[str, list[Member]] | None:
    """The members' validation predictions, when every member has them (MedMNIST's split)."""
    vals = {lab: [m.validation() for m in ms] for lab, ms in by_label.items()}
    return vals if all(v is not None for vs in vals.values() for v in vs) else None


def summarise_classification(name: str, fingerprint: str, by_label: dict[str, list[Member]], step: int) -> GroupSummary:
    """Table 1, Table 2 (with the honest selection, and notes on what it left out), mixed against single,
    diversity."""
    notes: list[str] = []
    return GroupSummary(
        name,
        fingerprint,
        by_label,
        table1(by_label),
        table2(by_label, step, notes=notes),
        mixed_vs_single(by_label),
        diversity(by_label),
        notes,
    )


def summarise(store: Store, step: int = 7) -> list[Any]:
    """Read and check the whole store, then have each dataset version's task compute its tables: a bad file
    fails before anything is written."""
    loaded = [(dataset, groups(store, dataset)) for dataset in store.datasets()]
    out = []
    for dataset, by_fp in loaded:
        for fp, by_label in sorted(by_fp.items()):
            name = dataset if len(by_fp) == 1 else f"{dataset}-{fp}"
            task = get_task(next(iter(by_label.values()))[0].meta.task)
            out.append(task.summarise(name, fp, by_label, step))
    return out


def confusion_of(by_label: dict[str, list[Member]], expr: str) -> tuple[np.ndarray, list[str]]:
    scores, y, _, _ = _fused(by_label, {t.label: t.count for t in parse(expr)})
    classes = next(iter(by_label.values()))[0].classes
    return per_class(y, scores, classes)[1], classes
