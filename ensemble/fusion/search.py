"""The exhaustive search over per-label member counts behind Table 2 (``ens report``).

Every combination of counts is scored by sum-rule accuracy (see :func:`search`): every count
from 0 to what each label holds while the combinations number at most :data:`MAX_COMBINATIONS`
(:func:`search_step`), else 0, step, 2*step, ... and the label's count.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError
from ..store import Member
from .core import aligned

MAX_COMBINATIONS = 20_000  # measured 0.6 ms per combination of a HeLa-sized set (862 x 10) on a busy core


def count_grid(n: int, step: int) -> list[int]:
    """Counts a label may contribute: 0, step, 2*step, ... and n itself."""
    return sorted({0, n, *range(step, n + 1, step)})


def search_step(by_label: dict[str, list[Member]], step: int) -> int:
    """1 (every count) when all combinations of every count fit :data:`MAX_COMBINATIONS`, else ``step``."""
    return 1 if math.prod(len(ms) + 1 for ms in by_label.values()) <= MAX_COMBINATIONS else step


def search(
    by_label: dict[str, list[Member]], step: int, mask: np.ndarray | None = None
) -> list[tuple[float, dict[str, int]]]:
    """Every combination of per-label counts (from :func:`count_grid`), scored by sum-rule accuracy.

    Cumulative sums per label give each label's contribution in one lookup, and a depth-first
    walk over the labels reuses the partial sum of the labels before, so a combination costs
    about one (C, N) addition and one argmax; ``mask`` restricts the samples used for choosing.
    Returns (accuracy, counts) best first, ties broken by fewer members, then enumeration order.
    """
    labels = list(by_label)
    probs, y, _, _ = aligned([m for lab in labels for m in by_label[lab]])
    starts = np.cumsum([0] + [len(by_label[lab]) for lab in labels])
    if mask is not None:
        if not mask.any():
            raise UsageError("no samples to choose an ensemble on (the selection would score zero rows)")
        probs, y = probs[:, mask], y[mask]
    probs = np.ascontiguousarray(probs.transpose(0, 2, 1))  # (members, C, N): one class is one row
    cums = []
    for i in range(len(labels)):
        block = probs[starts[i] : starts[i + 1]]
        cums.append(np.concatenate([np.zeros((1, *block.shape[1:]), block.dtype), np.cumsum(block, axis=0)]))
    grids = [count_grid(len(by_label[lab]), step) for lab in labels]
    results: list[tuple[float, dict[str, int]]] = []
    n = max(len(y), 1)
    sums = np.empty((len(labels), *probs.shape[1:]), probs.dtype)  # one buffer per depth
    argmax = _RowArgmax(len(y), probs.dtype)

    def walk(depth: int, partial: np.ndarray | None, combo: tuple[int, ...]) -> None:
        if depth == len(labels):
            if partial is not None:
                results.append((np.count_nonzero(argmax(partial) == y) / n, dict(zip(labels, combo))))
            return
        for k in grids[depth]:
            part = cums[depth][k]
            if k and partial is not None:
                part = np.add(partial, part, out=sums[depth])
            walk(depth + 1, partial if k == 0 else part, (*combo, k))

    walk(0, None, ())
    results.sort(key=lambda r: (-r[0], sum(r[1].values())))
    return results


class _RowArgmax:
    """``scores.argmax(0)`` for a (C, N) array, without branches.

    numpy's argmax over a few classes per sample branches on the data, and on real,
    unpredictable scores that costs about four times this pass over the class rows: class
    ``c`` is flagged where it beats every class before it (strict ``>``, so the first maximum
    wins, as with argmax), and the winner is the largest flagged class.
    """

    def __init__(self, n: int, dtype: np.dtype) -> None:
        self.best = np.empty(n, dtype)
        self.index = np.empty(n, np.int16)
        self.greater = np.empty(n, bool)
        self.flag = np.empty(n, np.int16)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        best, index, greater, flag = self.best, self.index, self.greater, self.flag
        np.copyto(best, scores[0])
        index.fill(0)
        for c in range(1, len(scores)):
            np.greater(scores[c], best, out=greater)
            np.maximum(best, scores[c], out=best)
            np.multiply(greater, c, out=flag, casting="unsafe")
            np.maximum(index, flag, out=index)
        return index
