"""Metrics of a fused (or single) prediction: accuracy, macro F1 (the paper's F-measure), AUC,
and the proper scores and calibration error of :mod:`.stats` (NLL, Brier, ECE).

Pooled over all folds, plus mean and std over folds. AUC follows MedMNIST: the score of
class 1 for two classes, else the mean one-vs-rest AUC.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from ..auc import auc
from .stats import calibration_scores

__all__ = ["auc", "per_class", "scores_table"]


def scores_table(labels: np.ndarray, scores: np.ndarray, fold_of: np.ndarray | None = None) -> dict[str, float]:
    """accuracy, f1_macro and auc pooled; their fold mean and std when folds are given."""
    pred = scores.argmax(axis=1)
    n_classes = scores.shape[1]
    out = {
        "accuracy": float((pred == labels).mean()),
        "f1_macro": float(f1_score(labels, pred, average="macro", labels=list(range(n_classes)), zero_division=0)),
        "auc": auc(labels, scores),
        **calibration_scores(labels, scores),
    }
    if fold_of is not None and len(np.unique(fold_of)) > 1:
        accs, f1s = [], []
        for k in np.unique(fold_of):
            m = fold_of == k
            accs.append(float((pred[m] == labels[m]).mean()))
            f1s.append(
                float(f1_score(labels[m], pred[m], average="macro", labels=list(range(n_classes)), zero_division=0))
            )
        out.update(
            accuracy_fold_mean=float(np.mean(accs)),
            accuracy_fold_std=float(np.std(accs, ddof=1)),
            f1_fold_mean=float(np.mean(f1s)),
            f1_fold_std=float(np.std(f1s, ddof=1)),
        )
    return out


def per_class(labels: np.ndarray, scores: np.ndarray, classes: list[str]) -> tuple[list[dict], np.ndarray]:
    """Per-class precision/recall/F1/support and the confusion matrix (rows: true class)."""
    pred = scores.argmax(axis=1)
    idx = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=idx, zero_division=0)
    rows = [
        {"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(classes)
    ]
    return rows, confusion_matrix(labels, pred, labels=idx)
