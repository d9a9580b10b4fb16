"""What the report shows for a multi-label dataset, computed from the store: Table 1 (stand-alone members:
macro AUC, mean per-label accuracy and exact match, mean ± std over members), Table 2 (sum-rule ensembles:
every label whole, mixed pairs, everything), each ensemble's AUC per label, and the best ensemble's
per-label table. :mod:`ensemble.reporting` only renders these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..store import Member, recipe_summary
from .core import aligned
from .expr import term_text
from .multilabel import label_aucs, multilabel_scores, per_label, per_label_rule


def fused(members: list[Member]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(targets, sum-rule probabilities, fold of each row) of ``members``."""
    probs, targets, fold_of, _ = aligned(members)
    return targets, per_label_rule("sum")(probs), fold_of


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def ml_table1(by_label: dict[str, list[Member]]) -> list[dict]:
    rows = []
    for label, members in by_label.items():
        scores = [multilabel_scores(*fused([m])[:2]) for m in members]
        auc, acc = np.array([s["auc"] for s in scores]), np.array([s["accuracy"] for s in scores])
        rows.append(
            {
                "label": label,
                "members": len(members),
                "auc_mean": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
                "auc_std": _std(auc[np.isfinite(auc)]),
                "accuracy_mean": float(acc.mean()),
                "accuracy_std": _std(acc),
                "exact_match_mean": float(np.mean([s["exact_match"] for s in scores])),
                "learnt_nothing": sum(m.meta.learnt_nothing for m in members),
                "model": members[0].meta.recipe.get("model", ""),
                "setup": recipe_summary(members[0].meta.recipe),
            }
        )
    return rows


def ensembles(by_label: dict[str, list[Member]]) -> list[tuple[str, str, list[Member]]]:
    """(expression, kind, members): every label whole, each pair mixed half and half, and everything."""
    out = [(term_text(label, len(ms)), "one label", ms) for label, ms in by_label.items()]
    labels = list(by_label)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            n = min(len(by_label[a]), len(by_label[b]))
            if n >= 2:
                k = (n + 1) // 2
                mixed = by_label[a][:k] + by_label[b][: n - k]
                out.append((f"{term_text(a, k)}+{term_text(b, n - k)}", "mixed", mixed))
    if len(by_label) > 1:
        everything = [m for ms in by_label.values() for m in ms]
        out.append(("+".join(term_text(lab, len(ms)) for lab, ms in by_label.items()), "all members", everything))
    return out


def ml_table2(by_label: dict[str, list[Member]]) -> tuple[list[dict], list[dict]]:
    """Table 2 (macro AUC, mean per-label accuracy, exact match, macro F1) and each ensemble's AUC per label."""
    from .summary import distinct

    classes = next(iter(by_label.values()))[0].classes
    rows, per = [], []
    for expression, kind, members in ensembles(by_label):
        targets, scores, fold_of = fused(members)
        s = multilabel_scores(targets, scores, fold_of)
        rows.append(
            {
                "ensemble": expression,
                "kind": kind,
                "members": len(members),
                "auc": s["auc"],
                "accuracy": s["accuracy"],
                "exact_match": s["exact_match"],
                "f1_macro": s["f1_macro"],
                "auc_labels": s["auc_labels"],
            }
        )
        per.append({"ensemble": expression, **dict(zip(classes, label_aucs(targets, scores)))})
    return distinct(rows, "ensemble"), distinct(per, "ensemble")


@dataclass
class MultiLabelSummary:
    """Everything the report shows for one multi-label dataset version."""

    name: str
    fingerprint: str
    by_label: dict[str, list[Member]]
    table1: list[dict]
    table2: list[dict]
    label_auc: list[dict]  # one row per ensemble of Table 2: its AUC per label

    @property
    def best(self) -> str:
        finite = [r for r in self.table2 if np.isfinite(r["auc"])]
        return max(finite or self.table2, key=lambda r: r["auc"] if finite else r["accuracy"])["ensemble"]

    def per_label(self) -> list[dict]:
        """The best ensemble's per-label AUC, accuracy, precision, recall and F1."""
        from .expr import parse

        members = [m for t in parse(self.best) for m in self.by_label[t.label][: t.count]]
        targets, scores, _ = fused(members)
        return per_label(targets, scores, members[0].classes)


def summarise_multilabel(name: str, fingerprint: str, by_label: dict[str, list[Member]]) -> MultiLabelSummary:
    table2, label_auc = ml_table2(by_label)
    return MultiLabelSummary(name, fingerprint, by_label, ml_table1(by_label), table2, label_auc)


__all__ = ["MultiLabelSummary", "summarise_multilabel"]
