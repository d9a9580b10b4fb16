"""Metrics of a fused (or single) segmentation: per image, then averaged over images (SPEC §7).

* Dice of the foreground, ``2|P & G| / (|P| + |G|)``, and IoU, ``|P & G| / |P | G|``; with several
  foreground classes, their mean over the classes.
* HD95: the 95th percentile of the pooled surface distances, in pixels of the stored size --
  distances from every boundary pixel of the prediction to the nearest boundary pixel of the truth
  and back (medpy's ``hd95``). Boundary pixels are the mask minus its erosion (4-connected).

Empty masks: prediction and truth both empty score Dice 1, IoU 1, HD95 0 (nothing to find, nothing
found); exactly one of them empty scores Dice 0, IoU 0 and HD95 the image diagonal (the largest
distance the image allows), so a missed or invented lesion is never left out of the mean.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """95% Hausdorff distance of two boolean masks, in pixels (see the module docstring for empty masks)."""
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float(np.hypot(*pred.shape))
    sp, st = _surface(pred), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~st)[sp]
    to_pred = ndimage.distance_transform_edt(~sp)[st]
    return float(np.percentile(np.concatenate([to_truth, to_pred]), 95))


def overlap(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of two boolean masks; both empty is (1, 1)."""
    inter = np.count_nonzero(pred & truth)
    total = np.count_nonzero(pred) + np.count_nonzero(truth)
    if total == 0:
        return 1.0, 1.0
    return 2.0 * inter / total, inter / (total - inter)


def per_image(masks: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Dice, IoU and HD95 of every image, each the mean over the foreground classes."""
    n = len(masks)
    out = {"dice": np.zeros(n), "iou": np.zeros(n), "hd95": np.zeros(n)}
    for i in range(n):
        scores = []
        for c in range(1, n_classes):
            p, t = predicted[i] == c, masks[i] == c
            scores.append((*overlap(p, t), hd95(p, t)))
        out["dice"][i], out["iou"][i], out["hd95"][i] = np.mean(scores, axis=0)
    return out


def segmentation_scores(masks: np.ndarray, scores: np.ndarray, fold_of: np.ndarray | None = None) -> dict[str, float]:
    """Mean (and std over images) of Dice, IoU and HD95 of the argmax of ``scores`` (N, C, H, W); their
    fold means and stds when folds are given."""
    values = per_image(masks, scores.argmax(axis=1), scores.shape[1])
    out: dict[str, float] = {}
    for name, v in values.items():
        out[name] = float(v.mean())
        out[f"{name}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    if fold_of is not None and len(np.unique(fold_of)) > 1:
        for name in ("dice", "hd95"):
            means = [float(values[name][fold_of == k].mean()) for k in np.unique(fold_of)]
            out[f"{name}_fold_mean"] = float(np.mean(means))
            out[f"{name}_fold_std"] = float(np.std(means, ddof=1))
    return out
