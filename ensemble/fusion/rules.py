"""Fusion rules: how stacked member probabilities (M, N, C) -- or probability maps (M, N, C, H, W) --
become one score per class (and pixel).

Every rule returns scores that sum to 1 over the classes (axis 1; so AUC can read them) and
whose argmax is the fused prediction.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def sum_rule(p: np.ndarray) -> np.ndarray:
    """The paper's rule: average of the softmax vectors."""
    return p.mean(axis=0)


def product_rule(p: np.ndarray) -> np.ndarray:
    """Product of probabilities (as a sum of logs, floored at 1e-12), renormalised."""
    log = np.log(np.clip(p, 1e-12, None)).sum(axis=0)
    log = log - log.max(axis=1, keepdims=True)
    e = np.exp(log)
    return e / e.sum(axis=1, keepdims=True)


def max_rule(p: np.ndarray) -> np.ndarray:
    """Largest probability any member gives each class, renormalised."""
    m = p.max(axis=0)
    return m / m.sum(axis=1, keepdims=True)


def vote_rule(p: np.ndarray) -> np.ndarray:
    """Majority vote; ties broken by the summed probabilities (which add less than one vote)."""
    n_members, n_classes = p.shape[0], p.shape[2]
    winners = p.argmax(axis=2)  # (M, N, ...)
    votes = np.stack([(winners == c).sum(axis=0) for c in range(n_classes)], axis=1).astype(np.float64)
    score = votes + p.sum(axis=0) / (n_members + 1)
    return score / score.sum(axis=1, keepdims=True)


RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sum": sum_rule,
    "product": product_rule,
    "max": max_rule,
    "vote": vote_rule,
}
