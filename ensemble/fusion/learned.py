"""Learned fusion, honestly validated: weights, greedy selection and stacking fitted on other rows.

Each method is fitted on the validation split when every member has one (MedMNIST), else
cross-fitted over folds: the rows of fold k are fused by a model fitted on the other folds'
rows. Nothing is ever fitted on the rows it is scored on.

* ``weighted`` -- one weight per label on the simplex (softmax-parameterised), applied to each
  label's sum-rule average, fitted by minimising the NLL (L-BFGS);
* ``greedy`` -- forward selection with replacement from the pool of all members (Caruana et al.,
  2004): up to ``GREEDY_ROUNDS`` additions, each the member that lowers the NLL of the running
  average most; the best prefix is kept;
* ``stacking`` -- scikit-learn's ``LogisticRegression`` (C = 1, lbfgs) on the members'
  concatenated probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from ..errors import UsageError
from ..store import Member
from .core import aligned
from .stats import nll

LEARNED = ("weighted", "greedy", "stacking")
GREEDY_ROUNDS = 25
NAMES = {
    "weighted": "weighted sum, one weight per label",
    "greedy": "greedy selection with replacement (Caruana)",
    "stacking": "stacking (logistic regression)",
}

Fitter = Callable[[np.ndarray, np.ndarray, list[int]], Callable[[np.ndarray], np.ndarray]]


def _weighted(probs: np.ndarray, y: np.ndarray, groups: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    labels = sorted(set(groups))
    index = np.array(groups)

    def per_label(p: np.ndarray) -> np.ndarray:
        return np.stack([p[index == g].mean(axis=0) for g in labels])  # (L, N, C)

    means = per_label(probs)

    def loss(theta: np.ndarray) -> float:
        w = np.exp(theta - theta.max())
        w /= w.sum()
        return nll(y, np.tensordot(w, means, axes=1))

    theta = minimize(loss, np.zeros(len(labels)), method="L-BFGS-B").x
    w = np.exp(theta - theta.max())
    w /= w.sum()
    return lambda p: np.tensordot(w, per_label(p), axes=1)


def _greedy(probs: np.ndarray, y: np.ndarray, groups: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    counts = np.zeros(len(probs))
    total = np.zeros(probs.shape[1:])
    best, best_counts = np.inf, None
    for k in range(1, GREEDY_ROUNDS + 1):
        losses = [nll(y, (total + probs[m]) / k) for m in range(len(probs))]
        m = int(np.argmin(losses))
        counts[m] += 1
        total += probs[m]
        if losses[m] < best - 1e-12:
            best, best_counts = losses[m], counts.copy()
    w = best_counts / best_counts.sum()
    return lambda p: np.tensordot(w, p, axes=1)


def _stacking(probs: np.ndarray, y: np.ndarray, groups: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    n_classes = probs.shape[2]

    def features(p: np.ndarray) -> np.ndarray:
        return p.transpose(1, 0, 2).reshape(p.shape[1], -1)  # (N, M*C)

    present = np.unique(y)
    model = LogisticRegression(C=1.0, max_iter=2000).fit(features(probs), y)

    def predict(p: np.ndarray) -> np.ndarray:
        out = np.zeros((p.shape[1], n_classes))
        out[:, present] = model.predict_proba(features(p))  # a class absent from the fit rows gets 0
        return out

    return predict


FITTERS: dict[str, Fitter] = {"weighted": _weighted, "greedy": _greedy, "stacking": _stacking}


@dataclass
class HonestPool:
    """The members an honest selection or fit may use, and what it is fitted on: their validation predictions
    (``val_by_label``), or -- None -- the other folds' rows (cross-fitting, which needs two folds or more).
    ``dropped`` are members left out because they lack the validation predictions the others have."""

    by_label: dict[str, list[Member]]
    val_by_label: dict[str, list[Member]] | None
    dropped: list[Member] = field(default_factory=list)

    def notes(self) -> list[str]:
        return [
            f"{m.name} has no validation predictions (val-*.npz): left out of the honest selection and the "
            "learned fusions, which are chosen on the validation split"
            for m in self.dropped
        ]


def honest_pool(by_label: dict[str, list[Member]]) -> HonestPool:
    """What can be chosen on without the rows it is scored on. Every member's validation split when all have
    one; else the other folds' rows when there are two folds or more; else (one test fold) the members that
    have validation predictions, the others dropped by name. With none, nothing is honest: a UsageError."""
    members = [m for ms in by_label.values() for m in ms]
    vals = {id(m): m.validation() for m in members}
    if all(v is not None for v in vals.values()):
        return HonestPool(by_label, {lab: [vals[id(m)] for m in ms] for lab, ms in by_label.items()})
    if len(np.unique(np.concatenate([m.fold_of for m in members]))) >= 2:
        return HonestPool(by_label, None)
    kept = {lab: [m for m in ms if vals[id(m)] is not None] for lab, ms in by_label.items()}
    kept = {lab: ms for lab, ms in kept.items() if ms}
    if not kept:
        raise UsageError(
            "no honest selection: the members have one test fold and no validation predictions (val-*.npz), "
            "so there is nothing to choose on but the rows scored"
        )
    dropped = [m for m in members if vals[id(m)] is None]
    return HonestPool(kept, {lab: [vals[id(m)] for m in ms] for lab, ms in kept.items()}, dropped)


def learned_fusion(method: str, by_label: dict[str, list[Member]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(scores, labels, fold_of, how it was fitted) of ``method`` over the members of ``by_label`` that
    :func:`honest_pool` keeps; never fitted on zero rows, nor on the rows scored."""
    pool = honest_pool(by_label)
    by_label = pool.by_label
    members = [m for ms in by_label.values() for m in ms]
    groups = [i for i, ms in enumerate(by_label.values()) for _ in ms]
    probs, y, fold_of, _ = aligned(members)
    probs = probs.astype(np.float64)
    fit = FITTERS[method]
    if pool.val_by_label is not None:
        val_probs, val_y, _, _ = aligned([v for vs in pool.val_by_label.values() for v in vs])
        if not len(val_y):
            raise UsageError("the validation predictions hold no rows: nothing to fit on")
        return fit(val_probs.astype(np.float64), val_y, groups)(probs), y, fold_of, "fitted on validation split"
    scores = np.zeros(probs.shape[1:])
    for k in np.unique(fold_of):
        rows = fold_of == k
        scores[rows] = fit(probs[:, ~rows], y[~rows], groups)(probs[:, rows])
    return scores, y, fold_of, "cross-fitted over folds"
