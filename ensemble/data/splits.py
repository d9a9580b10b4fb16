"""Folds, decided once per dataset and shared by every member (nnU-Net's way).

* ``cv5`` -- stratified 5-fold cross-validation with a fixed seed;
* ``predefined`` -- the dataset's own fold folders (test on one, train on the rest);
* ``official`` -- MedMNIST's split: train on train, predict test (val is predicted too,
  for honest model selection).

Every sample is in exactly one test set (of the folds that have one).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

FOLD_SEED = 0
N_SPLITS = 5


@dataclass(frozen=True)
class Fold:
    """One training of a member: indices into the dataset's arrays."""

    index: int
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray | None = None
    protocol: str = "cv5"
    name: str = ""


def stratified_folds(labels: np.ndarray, n_splits: int = N_SPLITS, seed: int = FOLD_SEED) -> list[Fold]:
    from sklearn.model_selection import StratifiedKFold

    if len(labels) < n_splits:
        raise DataError(f"{n_splits}-fold cross-validation needs at least {n_splits} images; found {len(labels)}")
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class smaller than n_splits is allowed, just not in every fold
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(np.zeros(len(labels)), labels))
    return [Fold(k, tr, te, protocol="cv5", name=f"fold {k}") for k, (tr, te) in enumerate(splits)]


def make_folds(protocol: str, listing) -> list[Fold]:  # noqa: ANN001 - a scan.Listing
    """The folds of a listing under ``protocol`` (``cv5-or-predefined`` picks by layout)."""
    labels, groups = listing.labels, listing.groups
    if protocol == "cv5-or-predefined":
        protocol = "predefined" if groups is not None else "cv5"
    if protocol == "cv5":
        return stratified_folds(labels)
    groups_arr = np.asarray(groups)
    if protocol == "predefined":
        names = sorted(set(groups))
        if len(names) < 2:
            raise DataError(f"predefined folds need at least 2 fold folders; found {names}")
        return [
            Fold(k, np.flatnonzero(groups_arr != g), np.flatnonzero(groups_arr == g), protocol="predefined", name=g)
            for k, g in enumerate(names)
        ]
    if protocol == "official":
        train, test = np.flatnonzero(groups_arr == "train"), np.flatnonzero(groups_arr == "test")
        val = np.flatnonzero(groups_arr == "val")
        return [Fold(0, train, test, val if len(val) else None, protocol="official", name="test")]
    raise ValueError(f"unknown protocol {protocol!r}")
