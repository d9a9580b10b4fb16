"""Multi-label fusion and metrics: several findings per image, one probability per label (not summing to 1).

Every rule of :mod:`.rules` is applied to each label as a two-class problem ``(1 - p, p)``: the sum rule is
the mean of the members' probabilities, the product rule ``prod p / (prod p + prod (1 - p))``, the max rule
``max p / (max p + max (1 - p))``, the vote the majority of the members' calls at 0.5 (ties broken by the
summed probabilities). A label is called present when its fused probability is above 0.5.

Metrics follow MedMNIST's ChestMNIST convention (ACC and AUC averaged over labels): per-label AUC
(scikit-learn's ``roc_auc_score``) and their macro mean, which leaves out -- and names -- any label whose
targets hold one class only (its AUC is undefined); mean per-label accuracy; exact match (every label
right); macro F1 at 0.5; the mean binary cross-entropy. Pooled over folds, with fold means and stds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from .rules import RULES
from .stats import CI_RESAMPLES, CI_SEED, _binary_auc_batch, delong, mcnemar_exact

THRESHOLD = 0.5  # a label is present when its probability is above this


def per_label_rule(rule: str) -> Callable[[np.ndarray], np.ndarray]:
    """Rule ``rule`` over (M, N, L) per-label probabilities: the classification rule of each label's (1 - p, p)."""
    combine = RULES[rule]

    def fused(p: np.ndarray) -> np.ndarray:
        m, n, labels = p.shape
        p = p.astype(np.float64)
        pairs = np.stack([1 - p, p], axis=-1).reshape(m, n * labels, 2)
        return combine(pairs)[:, 1].reshape(n, labels)  # float64: rounding would tie scores the AUC tells apart

    fused.__name__ = f"per_label_{combine.__name__}"
    return fused


def label_aucs(targets: np.ndarray, scores: np.ndarray) -> list[float]:
    """roc_auc_score of each label; NaN for a label whose targets are all 0 or all 1."""
    out = []
    for j in range(targets.shape[1]):
        y = targets[:, j]
        out.append(float(roc_auc_score(y, scores[:, j])) if 0 < y.sum() < len(y) else math.nan)
    return out


def macro_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """The mean AUC of the labels where it is defined (NaN where no label has both classes)."""
    defined = [a for a in label_aucs(targets, scores) if math.isfinite(a)]
    return float(np.mean(defined)) if defined else math.nan


def bce(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean binary cross-entropy per label and image (probabilities clipped to [1e-7, 1 - 1e-7])."""
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    y = targets.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _basic(targets: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    y, pred = targets.astype(bool), scores > THRESHOLD
    return {
        "accuracy": float((pred == y).mean()) if y.size else math.nan,
        "exact_match": float((pred == y).all(axis=1).mean()) if len(y) else math.nan,
        "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0)) if len(y) else math.nan,
        "auc": macro_auc(targets, scores),
    }


def multilabel_scores(targets: np.ndarray, scores: np.ndarray, fold_of: np.ndarray | None = None) -> dict[str, float]:
    """Macro AUC, mean per-label accuracy, exact match, macro F1 and BCE pooled over folds; fold means and stds
    of accuracy and AUC when folds are given."""
    aucs = label_aucs(targets, scores)
    out = {**_basic(targets, scores), "auc_labels": sum(math.isfinite(a) for a in aucs), "bce": bce(targets, scores)}
    if fold_of is not None and len(np.unique(fold_of)) > 1:
        per = [_basic(targets[fold_of == k], scores[fold_of == k]) for k in np.unique(fold_of)]
        accs, fold_aucs = [s["accuracy"] for s in per], [s["auc"] for s in per if math.isfinite(s["auc"])]
        out.update(accuracy_fold_mean=float(np.mean(accs)), accuracy_fold_std=float(np.std(accs, ddof=1)))
        if len(fold_aucs) > 1:
            out.update(auc_fold_mean=float(np.mean(fold_aucs)), auc_fold_std=float(np.std(fold_aucs, ddof=1)))
    return out


def named_label_scores(targets: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict[str, float | str]:
    """``auc:<label>`` per label (NaN where undefined), and ``auc_undefined`` naming those left out of the macro
    AUC (only when there are any)."""
    aucs = label_aucs(targets, scores)
    out: dict[str, float | str] = {f"auc:{c}": a for c, a in zip(classes, aucs)}
    undefined = [c for c, a in zip(classes, aucs) if not math.isfinite(a)]
    if undefined:
        out["auc_undefined"] = ", ".join(undefined) + " (one class in the targets: left out of the macro AUC)"
    return out


def per_label(targets: np.ndarray, scores: np.ndarray, classes: list[str]) -> list[dict]:
    """One row per label: positives, AUC, accuracy, precision, recall and F1 at 0.5."""
    rows = []
    for j, c in enumerate(classes):
        y, pred = targets[:, j].astype(bool), scores[:, j] > THRESHOLD
        tp, fp, fn = int((y & pred).sum()), int((~y & pred).sum()), int((y & ~pred).sum())
        rows.append(
            {
                "label": c,
                "positives": int(y.sum()),
                "auc": label_aucs(targets[:, [j]], scores[:, [j]])[0],
                "accuracy": float((y == pred).mean()),
                "precision": tp / (tp + fp) if tp + fp else 0.0,
                "recall": tp / (tp + fn) if tp + fn else 0.0,
                "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            }
        )
    return rows


# --------------------------------------------------------------------------- resampling
def _resamples(n: int, resamples: int, seed: int = CI_SEED) -> np.ndarray:
    """(resamples, n) indices drawn with replacement (not stratified: an image has several labels)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _macro_auc_batch(targets: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Macro AUC of each resample: the mean over the labels defined in it."""
    per = np.stack([_binary_auc_batch(targets[idx, j] == 1, scores[idx, j]) for j in range(targets.shape[1])])
    with warnings.catch_warnings():  # a resample with no defined label is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per, axis=0)


def bootstrap_intervals(
    targets: np.ndarray, scores: np.ndarray, *, resamples: int = CI_RESAMPLES, level: float = 0.95
) -> dict[str, float]:
    """Percentile bootstrap (images resampled, seed 0) of the macro AUC, mean per-label accuracy and exact match."""
    idx = _resamples(len(targets), resamples)
    y, pred = targets[idx].astype(bool), scores[idx] > THRESHOLD
    values = {
        "auc": _macro_auc_batch(targets, scores, idx),
        "accuracy": (y == pred).mean(axis=(1, 2)),
        "exact_match": (y == pred).all(axis=2).mean(axis=1),
    }
    tail = (1 - level) / 2 * 100
    out = {}
    for name, v in values.items():
        v = v[np.isfinite(v)]
        lo, hi = np.percentile(v, [tail, 100 - tail]) if len(v) else (math.nan, math.nan)
        out[f"{name}_lo"], out[f"{name}_hi"] = float(lo), float(hi)
    return out


def compare_rows(a, b, resamples: int = CI_RESAMPLES) -> list[dict]:  # noqa: ANN001 - two FusionResults
    """Macro AUC: paired bootstrap of the difference (same resampled images for both); each label's AUC:
    DeLong's test; exact match: McNemar's exact test on the images A and B get wholly right."""
    y = a.labels
    idx = _resamples(len(y), resamples)
    d = _macro_auc_batch(y, a.scores, idx) - _macro_auc_batch(y, b.scores, idx)
    d = d[np.isfinite(d)]
    p = min(1.0, 2 * (min(np.sum(d <= 0), np.sum(d >= 0)) + 1) / (len(d) + 1)) if len(d) else math.nan
    rows = [{"metric": "auc (macro)", "A": a.metrics["auc"], "B": b.metrics["auc"], "test": "paired bootstrap", "p": p}]
    exact_a = (a.scores > THRESHOLD).astype(bool) == y.astype(bool)
    exact_b = (b.scores > THRESHOLD).astype(bool) == y.astype(bool)
    ones = np.ones(len(y), dtype=np.int64)
    _, _, p_exact = mcnemar_exact(ones, exact_a.all(1).astype(np.int64), exact_b.all(1).astype(np.int64))
    rows.append(
        {
            "metric": "exact_match",
            "A": a.metrics["exact_match"],
            "B": b.metrics["exact_match"],
            "test": "McNemar exact",
            "p": p_exact,
        }
    )
    for j, c in enumerate(a.members[0].classes):
        auc_a, auc_b, p_label = delong(y[:, j].astype(np.int64), a.scores[:, j], b.scores[:, j])
        test = "DeLong" if math.isfinite(p_label) else "undefined (fewer than 2 images of a class)"
        rows.append({"metric": f"auc:{c}", "A": auc_a, "B": auc_b, "test": test, "p": p_label})
    for r in rows:
        r["difference"] = r["A"] - r["B"]
    return [{k: r[k] for k in ("metric", "A", "B", "difference", "test", "p")} for r in rows]
