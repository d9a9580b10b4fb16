"""What the report shows for a segmentation dataset, computed from the store (SPEC §7): Table 1
(stand-alone members: Dice and HD95 mean ± std over members, parameters), Table 2 (sum-rule
ensembles: every label whole, mixed pairs, everything), mixed against single-optimizer
ensembles of the same size (paired Wilcoxon signed-rank test on the per-image Dice), and
the arrays behind the figures. :mod:`ensemble.reporting` only renders these.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from ..store import Member, recipe_summary
from .core import aligned
from .expr import term_text
from .rules import sum_rule
from .segmentation import per_image


@cache
def parameters(model: str, n_classes: int) -> int | None:
    """Trainable parameters of the member network (None when it cannot be built here)."""
    from ..learn.model import create_model, output_channels

    try:
        net = create_model(model, output_channels(model, n_classes), pretrained=False)
    except Exception:  # an unknown or unavailable model: the table says "--"
        return None
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def fused_images(members: list[Member]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Per-image Dice/IoU/HD95 of the mean of the members' maps; with the masks and fused maps."""
    probs, masks, fold_of, _ = aligned(members)
    fused = sum_rule(probs.astype(np.float32))
    return per_image(masks, fused.argmax(1), fused.shape[1]), masks, fused, fold_of


def _row(values: dict[str, np.ndarray]) -> dict[str, float]:
    return {
        "dice": float(values["dice"].mean()),
        "dice_std": float(values["dice"].std(ddof=1)),
        "iou": float(values["iou"].mean()),
        "hd95": float(values["hd95"].mean()),
        "hd95_std": float(values["hd95"].std(ddof=1)),
    }


def seg_table1(by_label: dict[str, list[Member]]) -> list[dict]:
    rows = []
    for label, members in by_label.items():
        scores = [_row(fused_images([m])[0]) for m in members]
        dice, hd = np.array([s["dice"] for s in scores]), np.array([s["hd95"] for s in scores])
        model = members[0].meta.recipe.get("model", "")
        rows.append(
            {
                "label": label,
                "members": len(members),
                "model": model,
                "parameters": parameters(model, len(members[0].classes)),
                "dice_mean": dice.mean(),
                "dice_std": dice.std(ddof=1) if len(dice) > 1 else 0.0,
                "iou_mean": float(np.mean([s["iou"] for s in scores])),
                "hd95_mean": hd.mean(),
                "hd95_std": hd.std(ddof=1) if len(hd) > 1 else 0.0,
                "learnt_nothing": sum(m.meta.learnt_nothing for m in members),
                "setup": recipe_summary(members[0].meta.recipe),
            }
        )
    return rows


def _model(members: list[Member]) -> str:
    return members[0].meta.recipe.get("model", "")


def mixed_pairs(by_label: dict[str, list[Member]]) -> list[tuple[str, str, int]]:
    """Pairs of labels whose members share a network, with the size both single ensembles allow."""
    labels = list(by_label)
    return [
        (a, b, min(len(by_label[a]), len(by_label[b])))
        for i, a in enumerate(labels)
        for b in labels[i + 1 :]
        if _model(by_label[a]) == _model(by_label[b]) and min(len(by_label[a]), len(by_label[b])) >= 2
    ]


def seg_table2(by_label: dict[str, list[Member]]) -> list[dict]:
    rows = []

    def add(expression: str, members: list[Member], kind: str) -> None:
        rows.append({"ensemble": expression, "kind": kind, "members": len(members), **_row(fused_images(members)[0])})

    for label, members in by_label.items():
        add(term_text(label, len(members)), members, "one label")
    for a, b, n in mixed_pairs(by_label):
        k = (n + 1) // 2
        add(f"{term_text(a, k)}+{term_text(b, n - k)}", by_label[a][:k] + by_label[b][: n - k], "mixed")
    everything = [m for ms in by_label.values() for m in ms]
    if len(by_label) > 1:
        add("+".join(term_text(lab, len(ms)) for lab, ms in by_label.items()), everything, "all members")
    return rows


def seg_mixed_vs_single(by_label: dict[str, list[Member]]) -> list[dict]:
    """A{ceil(n/2)}+B{floor(n/2)} against A{n} and B{n}: the paired test is Wilcoxon's on per-image Dice."""
    from scipy.stats import wilcoxon

    rows = []
    for a, b, n in mixed_pairs(by_label):
        k = (n + 1) // 2
        mixed_expr = f"{term_text(a, k)}+{term_text(b, n - k)}"
        mixed = fused_images(by_label[a][:k] + by_label[b][: n - k])[0]["dice"]
        for single_label in (a, b):
            single = fused_images(by_label[single_label][:n])[0]["dice"]
            diff = mixed - single
            p = float(wilcoxon(mixed, single).pvalue) if np.any(diff != 0) else 1.0
            verdict = (
                f"{'mixed' if diff.mean() > 0 else 'single'} better (p = {p:.3g})"
                if p < 0.05
                else f"no significant difference (p = {p:.3g})"
            )
            rows.append(
                {
                    "mixed": mixed_expr,
                    "single": term_text(single_label, n),
                    "dice_mixed": mixed.mean(),
                    "dice_single": single.mean(),
                    "difference": diff.mean(),
                    "p_wilcoxon": p,
                    "verdict": verdict,
                }
            )
    return rows


def dice_by_size(by_label: dict[str, list[Member]]) -> dict[str, list[float]]:
    """Mean Dice of each label's first k members fused, k = 1..n (and of the mixed pairs, alternating)."""
    curves = {
        lab: [_row(fused_images(ms[:k])[0])["dice"] for k in range(1, len(ms) + 1)] for lab, ms in by_label.items()
    }
    for a, b, n in mixed_pairs(by_label):
        alternating = [m for pair in zip(by_label[a][:n], by_label[b][:n]) for m in pair]
        curves[f"{a}+{b} (alternating)"] = [
            _row(fused_images(alternating[:k])[0])["dice"] for k in range(1, len(alternating) + 1)
        ]
    return curves


@dataclass
class SegSummary:
    """Everything the report shows for one segmentation dataset version."""

    name: str
    fingerprint: str
    by_label: dict[str, list[Member]]
    table1: list[dict]
    table2: list[dict]
    comparison: list[dict]

    @property
    def best(self) -> str:
        return max(self.table2, key=lambda r: r["dice"])["ensemble"]

    def best_members(self) -> list[Member]:
        from .expr import parse

        return [m for t in parse(self.best) for m in self.by_label[t.label][: t.count]]


def summarise_segmentation(name: str, fingerprint: str, by_label: dict[str, list[Member]]) -> SegSummary:
    return SegSummary(
        name, fingerprint, by_label, seg_table1(by_label), seg_table2(by_label), seg_mixed_vs_single(by_label)
    )


__all__ = ["SegSummary", "dice_by_size", "fused_images", "summarise_segmentation"]
