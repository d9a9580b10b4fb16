"""Temperature scaling per member, never fitted on the rows it is scored on.

A member stores probabilities, not logits; since ``log p`` differs from the logits by a
per-row constant, ``softmax(log p / T)`` is exactly ``softmax(logits / T)``. T is fitted by
minimising the NLL (bounded search over log T in [-3, 3]):

* on the member's validation predictions when the dataset has a validation split (MedMNIST);
* otherwise cross-fitted: the rows of fold k are scaled with the T fitted on the member's
  rows of the other folds.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.optimize import minimize_scalar

from ..errors import UsageError
from ..store import Member

CALIBRATIONS = ("none", "temperature")
_EPS = np.finfo(np.float64).eps


def scale(probs: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """softmax(log p / T), row-wise; ``temperature`` a scalar or one value per row."""
    z = np.log(np.clip(probs.astype(np.float64), _EPS, None)) / np.reshape(temperature, (-1, 1))
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The T minimising the NLL of ``scale(probs, T)`` on these rows."""
    logp = np.log(np.clip(probs.astype(np.float64), _EPS, None))
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z -= z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, labels]))

    return float(np.exp(minimize_scalar(loss, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-6}).x))


def row_temperatures(member: Member, val: Member | None = None) -> np.ndarray:
    """The temperature applied to each of ``member``'s rows (fitted without that row's fold)."""
    if val is not None:
        return np.full(len(member.labels), fit_temperature(val.labels, val.probs))
    folds = np.unique(member.fold_of)
    if len(folds) < 2:
        raise UsageError(
            f"{member.name}: temperature scaling needs a validation split or at least 2 folds "
            "(it is never fitted on the rows it scores)"
        )
    out = np.empty(len(member.labels))
    for k in folds:
        rows = member.fold_of == k
        out[rows] = fit_temperature(member.labels[~rows], member.probs[~rows])
    return out


def calibrate(members: list[Member], method: str = "temperature") -> list[Member]:
    """The members with calibrated probabilities (``method`` ``none`` returns them as they are)."""
    if method not in CALIBRATIONS:
        raise UsageError(f"unknown calibration {method!r}; valid: {', '.join(CALIBRATIONS)}")
    if method == "none":
        return members
    out = []
    for m in members:
        out.append(replace(m, probs=scale(m.probs, row_temperatures(m, m.validation())).astype(np.float32)))
    return out
