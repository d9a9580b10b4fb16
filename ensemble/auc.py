"""MedMNIST's AUC, the one definition shared by model selection in training and by every table."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """MedMNIST's AUC; NaN when a class is missing from ``labels`` (AUC is undefined then)."""
    n_classes = scores.shape[1]
    if len(np.unique(labels)) < n_classes or n_classes < 2:
        return math.nan
    if n_classes == 2:
        return float(roc_auc_score(labels, scores[:, 1]))
    return float(roc_auc_score(labels, scores, multi_class="ovr", average="macro", labels=list(range(n_classes))))
