"""Paired comparison of two fused expressions on the same samples (``ens compare``).

Accuracy: McNemar's exact test. AUC: DeLong's test for two classes, else a paired bootstrap of
the macro one-vs-rest AUC. Macro-F1: paired bootstrap. The verdict states every p-value and
calls a difference a difference only at p < 0.05 (see :mod:`.stats` for the methods).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .core import FusionResult, IncompatibleMembers, aligned
from .stats import CI_RESAMPLES, delong, mcnemar_exact, paired_bootstrap

ALPHA = 0.05


@dataclass
class Comparison:
    a: FusionResult
    b: FusionResult
    rows: list[dict]  # metric, A, B, difference (A - B), test, p

    def table(self):  # noqa: ANN201 - a pandas DataFrame
        """The tests as a DataFrame: metric, A, B, difference (A - B), test, p."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def verdict(self) -> str:
        """One line: each metric's difference and p-value; 'higher' only where p < 0.05."""
        parts, significant = [], []
        for r in self.rows:
            if math.isnan(r["p"]):
                parts.append(f"{r['metric']} {r['A']:.4f} vs {r['B']:.4f} (no test: {r['test']})")
                continue
            parts.append(
                f"{r['metric']} {r['A']:.4f} vs {r['B']:.4f} ({r['difference']:+.4f}, {r['test']} p = {r['p']:.4g})"
            )
            if r["p"] < ALPHA and r["difference"] != 0:
                significant.append(f"{'A' if r['difference'] > 0 else 'B'} has the higher {r['metric']}")
        head = f"A = {self.a.expression} vs B = {self.b.expression} on {len(self.a.labels)} samples: "
        tail = (
            ("; ".join(significant) + f" (p < {ALPHA})")
            if significant
            else f"no difference is significant at the {ALPHA:g} level"
        )
        return head + "; ".join(parts) + ". " + tail[0].upper() + tail[1:] + "."


def compare_results(a: FusionResult, b: FusionResult, resamples: int = CI_RESAMPLES) -> Comparison:
    """Test A against B; both must be fused from members of the same samples, labels and folds."""
    try:
        aligned([a.members[0], b.members[0]])
    except IncompatibleMembers as err:
        raise IncompatibleMembers(f"{a.expression} and {b.expression} cannot be compared: {err}") from None
    return Comparison(a, b, a.task.compare_rows(a, b, resamples))


def classification_rows(a: FusionResult, b: FusionResult, resamples: int = CI_RESAMPLES) -> list[dict]:
    """Accuracy (McNemar exact), AUC (DeLong for two classes, else a paired bootstrap), macro-F1 (bootstrap)."""
    y = a.labels
    pred_a, pred_b = a.scores.argmax(1), b.scores.argmax(1)
    _, _, p_acc = mcnemar_exact(y, pred_a, pred_b)
    boot = paired_bootstrap(y, a.scores, b.scores, resamples=resamples)
    rows = [
        {
            "metric": "accuracy",
            "A": float(np.mean(pred_a == y)),
            "B": float(np.mean(pred_b == y)),
            "test": "McNemar exact",
            "p": p_acc,
        }
    ]
    if a.scores.shape[1] == 2:
        auc_a, auc_b, p_auc = delong(y, a.scores[:, 1], b.scores[:, 1])
        rows.append({"metric": "auc", "A": auc_a, "B": auc_b, "test": "DeLong", "p": p_auc})
    else:
        rows.append(
            {
                "metric": "auc",
                "A": a.metrics["auc"],
                "B": b.metrics["auc"],
                "test": "paired bootstrap",
                "p": boot["auc"][1],
            }
        )
    rows.append(
        {
            "metric": "f1_macro",
            "A": a.metrics["f1_macro"],
            "B": b.metrics["f1_macro"],
            "test": "paired bootstrap",
            "p": boot["f1_macro"][1],
        }
    )
    for r in rows:
        r["difference"] = r["A"] - r["B"]
    return [{k: r[k] for k in ("metric", "A", "B", "difference", "test", "p")} for r in rows]


def segmentation_rows(a: FusionResult, b: FusionResult) -> list[dict]:
    """Dice, IoU and HD95 per image of A and B, each pair put to Wilcoxon's signed-rank test."""
    from scipy.stats import wilcoxon

    from .segmentation import per_image

    va = per_image(a.labels, a.scores.argmax(1), a.scores.shape[1])
    vb = per_image(b.labels, b.scores.argmax(1), b.scores.shape[1])
    rows = []
    for metric in ("dice", "iou", "hd95"):
        diff = va[metric] - vb[metric]
        p = float(wilcoxon(va[metric], vb[metric]).pvalue) if np.any(diff != 0) else 1.0
        # HD95 is better lower: the difference is kept as A - B, the verdict reads it as "higher"
        rows.append(
            {
                "metric": metric,
                "A": float(va[metric].mean()),
                "B": float(vb[metric].mean()),
                "difference": float(diff.mean()),
                "test": "Wilcoxon signed-rank",
                "p": p,
            }
        )
    return rows
