"""Numbers a reviewer asks for: proper scores, calibration, bootstrap intervals, paired tests, diversity.

Conventions (each one is what the README states):

* NLL is the mean of ``-log p[true class]`` with p clipped below at float64's epsilon; Brier is the
  mean over samples of the squared distance to the one-hot vector, summed over classes.
* ECE uses 15 equal-width bins on the top-class confidence, bin b = (b/15, (b+1)/15] (the first also
  holds 0), and weighs each bin's |accuracy - mean confidence| by its share of the samples.
* Bootstrap intervals resample the samples with replacement *within each true class* (so every
  resample keeps the class counts), with a fixed seed, and report the 2.5th and 97.5th percentiles.
* McNemar's exact test is statsmodels' ``mcnemar(exact=True)`` on the discordant pairs. DeLong's test
  (binary AUC) is the fast algorithm of Sun & Xu (2014), two-sided. Macro-F1, and AUC with more than two
  classes, are compared by a paired bootstrap: p = 2 min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (B + 1), capped
  at 1 (the +1 keeps a p-value from B resamples at or above 1/(B+1), never 0).
"""

from __future__ import annotations

import math
import os

import numpy as np
from scipy.stats import norm, rankdata

ECE_BINS = 15
CI_RESAMPLES = 1000
CI_SEED = 0
MAX_RESAMPLES = 1_000_000  # a percentile of 10^6 resamples is stable to far more digits than a table shows
_EPS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------- proper scores
def nll(labels: np.ndarray, probs: np.ndarray) -> float:
    p = probs[np.arange(len(labels)), labels].astype(np.float64)
    return float(-np.mean(np.log(np.clip(p, _EPS, None)))) if len(labels) else math.nan


def brier(labels: np.ndarray, probs: np.ndarray) -> float:
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs.astype(np.float64) - onehot) ** 2, axis=1))) if len(labels) else math.nan


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, ...]:
    """Per bin: (count, mean confidence, accuracy) of the top class; empty bins give NaN."""
    conf = probs.max(axis=1).astype(np.float64)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=bins) / count
    return count, mean_conf, accuracy


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    if not len(labels):
        return math.nan
    count, conf, acc = reliability(labels, probs, bins)
    filled = count > 0
    return float(np.sum(count[filled] / len(labels) * np.abs(acc[filled] - conf[filled])))


def calibration_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {"nll": nll(labels, probs), "brier": brier(labels, probs), "ece": ece(labels, probs)}


# --------------------------------------------------------------------------- batched metrics
def _macro_f1_batch(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro F1 of each row of (B, N) label/prediction arrays (classes with no support or prediction score 0,
    as scikit-learn's ``zero_division=0``)."""
    b = np.arange(len(y))[:, None] * n_classes
    size = len(y) * n_classes
    tp = np.bincount((b + y)[y == pred], minlength=size).reshape(len(y), n_classes)
    true = np.bincount((b + y).ravel(), minlength=size).reshape(len(y), n_classes)
    predicted = np.bincount((b + pred).ravel(), minlength=size).reshape(len(y), n_classes)
    denom = true + predicted
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    return f1.mean(axis=1)


def _binary_auc_batch(positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUC of each row (midranks, as the trapezoid rule with ties); NaN where a row lacks a class."""
    ranks = rankdata(score, axis=-1)
    n1 = positive.sum(axis=-1).astype(np.float64)
    n0 = positive.shape[-1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * positive).sum(axis=-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def auc_batch(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """MedMNIST's AUC (score of class 1 for two classes, else macro one-vs-rest) of each of B resamples:
    ``y`` (B, N), ``scores`` (B, N, C)."""
    n_classes = scores.shape[-1]
    if n_classes == 2:
        return _binary_auc_batch(y == 1, scores[..., 1])
    return np.mean([_binary_auc_batch(y == c, scores[..., c]) for c in range(n_classes)], axis=0)


def bootstrap_bytes(resamples: int, samples: int, classes: int) -> int:
    """About the peak memory of a bootstrap: indices, labels and predictions per resample (int64), the scores
    gathered per resample (float64) and the ranks of an AUC."""
    return resamples * samples * (8 * 4 + 8 * classes * 2)


def available_memory() -> int:
    """Bytes of memory free for this process now (8 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def check_resamples(resamples: int, samples: int, classes: int) -> None:
    """Refuse a bootstrap that cannot finish: more resamples than :data:`MAX_RESAMPLES`, or more memory than
    half of what is free (it would be killed for memory after minutes of work)."""
    from ..errors import UsageError

    if resamples > MAX_RESAMPLES:
        raise UsageError(
            f"--resamples {resamples}: at most {MAX_RESAMPLES} (more changes no interval or p-value shown)"
        )
    need, bound = bootstrap_bytes(resamples, samples, classes), available_memory() // 2
    if need > bound:
        most = max(bound // max(bootstrap_bytes(1, samples, classes), 1), 1)
        raise UsageError(
            f"--resamples {resamples}: the bootstrap of {samples} samples would need about {need / 2**30:.1f} GiB of "
            f"memory, over the bound of {bound / 2**30:.1f} GiB (half of what is free); use at most {most}"
        )


def stratified_resamples(labels: np.ndarray, resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> np.ndarray:
    """(resamples, N) indices: each resample draws, within every true class, as many samples as it has."""
    check_resamples(resamples, len(labels), int(labels.max()) + 1 if len(labels) else 1)
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, len(labels)), dtype=np.int64)
    pos = 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        out[:, pos : pos + len(members)] = members[rng.integers(0, len(members), size=(resamples, len(members)))]
        pos += len(members)
    return out


def _batched(labels: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    y = labels[idx]
    pred = scores.argmax(axis=1)[idx]
    return {
        "accuracy": (y == pred).mean(axis=1),
        "f1_macro": _macro_f1_batch(y, pred, scores.shape[1]),
        "auc": auc_batch(y, scores[idx]),
    }


def bootstrap_ci(
    labels: np.ndarray, scores: np.ndarray, *, resamples: int = CI_RESAMPLES, seed: int = CI_SEED, level: float = 0.95
) -> dict[str, float]:
    """``{metric}_lo`` and ``{metric}_hi`` for accuracy, f1_macro and auc: stratified percentile bootstrap."""
    idx = stratified_resamples(labels, resamples, seed)
    out = {}
    tail = (1 - level) / 2 * 100
    for name, values in _batched(labels, scores, idx).items():
        values = values[np.isfinite(values)]
        lo, hi = np.percentile(values, [tail, 100 - tail]) if len(values) else (math.nan, math.nan)
        out[f"{name}_lo"], out[f"{name}_hi"] = float(lo), float(hi)
    return out


# --------------------------------------------------------------------------- paired tests
def mcnemar_exact(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> tuple[int, int, float]:
    """(b, c, p): b = A right where B is wrong, c = the reverse; McNemar's exact (binomial) p-value."""
    from statsmodels.stats.contingency_tables import mcnemar

    right_a, right_b = pred_a == labels, pred_b == labels
    both, b = int(np.sum(right_a & right_b)), int(np.sum(right_a & ~right_b))
    c, neither = int(np.sum(~right_a & right_b)), int(np.sum(~right_a & ~right_b))
    return b, c, float(mcnemar([[both, b], [c, neither]], exact=True).pvalue)


def _midrank(x: np.ndarray) -> np.ndarray:
    return rankdata(x, method="average")


def delong(labels: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> tuple[float, float, float]:
    """(AUC A, AUC B, two-sided p) of DeLong's test for two correlated ROC curves (binary labels 0/1)."""
    pos, neg = labels == 1, labels == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        return math.nan, math.nan, math.nan
    v10, v01, aucs = [], [], []
    for s in (score_a, score_b):
        x, y = s[pos].astype(np.float64), s[neg].astype(np.float64)
        tx, ty, tz = _midrank(x), _midrank(y), _midrank(np.concatenate([x, y]))
        auc = tz[:m].sum() / (m * n) - (m + 1) / (2 * n)
        v10.append((tz[:m] - tx) / n)
        v01.append(1 - (tz[m:] - ty) / m)
        aucs.append(auc)
    cov = np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    if var <= 0:
        return aucs[0], aucs[1], 1.0 if diff == 0 else 0.0
    z = diff / math.sqrt(var)
    return float(aucs[0]), float(aucs[1]), float(2 * norm.sf(abs(z)))


def paired_bootstrap(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    *,
    resamples: int = CI_RESAMPLES,
    seed: int = CI_SEED,
) -> dict[str, tuple[float, float]]:
    """metric -> (difference A - B, two-sided p) from the same stratified resamples for both."""
    idx = stratified_resamples(labels, resamples, seed)
    a, b = _batched(labels, scores_a, idx), _batched(labels, scores_b, idx)
    out = {}
    for name in a:
        d = a[name] - b[name]
        d = d[np.isfinite(d)]
        p = min(1.0, 2 * (min(np.sum(d <= 0), np.sum(d >= 0)) + 1) / (len(d) + 1)) if len(d) else math.nan
        out[name] = (float(np.mean(d)) if len(d) else math.nan, float(p))
    return out


# --------------------------------------------------------------------------- diversity
def pair_diversity(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """Yule's Q, double-fault and the correlation of errors of two classifiers' correctness vectors."""
    a, b = correct_a.astype(bool), correct_b.astype(bool)
    n11, n00 = float(np.sum(a & b)), float(np.sum(~a & ~b))
    n10, n01 = float(np.sum(a & ~b)), float(np.sum(~a & b))
    q_den = n11 * n00 + n01 * n10
    r_den = math.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00))
    return {
        "yule_q": (n11 * n00 - n01 * n10) / q_den if q_den else math.nan,
        "double_fault": n00 / len(a) if len(a) else math.nan,
        "error_correlation": (n11 * n00 - n01 * n10) / r_den if r_den else math.nan,
    }
