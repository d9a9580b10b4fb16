"""Folds, decided once per dataset and shared by every member (nnU-Net's way).

* ``cv5`` -- stratified 5-fold cross-validation with a fixed seed;
* ``predefined`` -- the dataset's own fold folders (test on one, train on the rest);
* ``official`` -- MedMNIST's split: train on train, predict test (val is predicted too,
  for honest model selection); a manifest's ``split`` column is read the same way;
* ``cv5`` with patients -- a manifest's ``patient`` column: stratified *and grouped* 5-fold
  cross-validation (scikit-learn's ``StratifiedGroupKFold``, fixed seed, then patients moved or swapped
  between folds while that brings the classes closer to their shares: :func:`balance_units`), no
  patient in two test sets;
* ``cv5`` of a multi-label manifest -- 5-fold cross-validation stratified label by label (iterative
  stratification, fixed seed), grouped by patient when there are patients (:func:`multilabel_folds`);
* ``splits`` -- your own folds, from a JSON file (:func:`read_splits`, nnU-Net's ``splits_final.json``).

Every sample is in exactly one test set (of the folds that have one).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, UsageError

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
        try:
            splits = list(splitter.split(np.zeros(len(labels)), labels))
        except ValueError:  # scikit-learn's words for: no class has n_splits images
            largest = int(np.bincount(np.asarray(labels)).max()) if len(labels) else 0
            raise DataError(
                f"{n_splits}-fold cross-validation needs a class of at least {n_splits} images; the largest has "
                f"{largest}"
            ) from None
    return [Fold(k, tr, te, protocol="cv5", name=f"fold {k}") for k, (tr, te) in enumerate(splits)]


def grouped_folds(
    labels: np.ndarray, patients: list[str], n_splits: int = N_SPLITS, seed: int = FOLD_SEED
) -> list[Fold]:
    """Stratified and grouped k-fold: every patient's images in one test set, the classes as balanced
    across folds as the patients allow."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_patients = len(set(patients))
    if n_patients < n_splits:
        raise DataError(
            f"{n_splits}-fold cross-validation grouped by patient needs at least {n_splits} patients; "
            f"found {n_patients}"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class with fewer patients than folds is allowed, as above
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(np.zeros(len(labels)), labels, groups=np.asarray(patients)))
    names, unit = np.unique(np.asarray(patients), return_inverse=True)
    fold_of_unit = np.empty(len(names), dtype=np.int64)
    for k, (_, te) in enumerate(splits):
        fold_of_unit[unit[te]] = k
    profiles = np.zeros((len(names), int(labels.max()) + 1), dtype=np.int64)
    np.add.at(profiles, (unit, labels), 1)
    fold_of_unit = balance_units(profiles, fold_of_unit, n_splits)
    fold_of = fold_of_unit[unit]
    everyone = np.arange(len(labels))
    return [
        Fold(k, everyone[fold_of != k], everyone[fold_of == k], protocol="cv5", name=f"fold {k}")
        for k in range(n_splits)
    ]


def balance_units(profiles: np.ndarray, fold_of: np.ndarray, n_splits: int) -> np.ndarray:
    """Improve a grouped assignment by moving or swapping whole units (patients) between folds.

    scikit-learn's StratifiedGroupKFold places patients greedily and can leave a class 2 images off its
    share in a fold when patients have several images. Each step here takes the move of one patient, or
    the swap of two, that most lowers the sum over folds and classes of (count - ideal)^2, until none does:
    every step lowers it, so it ends; a patient never splits and no fold is left without a patient.
    Deterministic: among equal units, the lowest index moves. ``profiles`` is units x classes (images of
    each class), ``fold_of`` each unit's test fold.
    """
    fold_of = fold_of.copy()
    ideal = profiles.sum(0) / n_splits
    counts = np.stack([profiles[fold_of == k].sum(0) for k in range(n_splits)]).astype(np.float64)
    kinds, kind_of = np.unique(profiles, axis=0, return_inverse=True)  # few distinct profiles: search by kind
    kind_of = kind_of.reshape(-1)
    square = (kinds.astype(np.float64) ** 2).sum(1)
    swapped = kinds[None, :, :] - kinds[:, None, :]  # [u, w] = w - u: what a fold gains giving u for w
    swapped_square = (swapped.astype(np.float64) ** 2).sum(2)
    for _ in range(10 * len(profiles) + 100):  # a bound that is never reached: each step lowers the sum
        dev = counts - ideal  # folds x classes
        present = np.zeros((n_splits, len(kinds)), dtype=bool)
        present[fold_of, kind_of] = True
        units_in = np.bincount(fold_of, minlength=n_splits)
        best = (-1e-9, None)
        for a in range(n_splits):
            for b in range(n_splits):
                if a == b:
                    continue
                # move a unit of kind u from fold a to fold b: change 2 u.(dev_b - dev_a) + 2 |u|^2
                if units_in[a] > 1:
                    gain = 2 * kinds @ (dev[b] - dev[a]) + 2 * square
                    gain[~present[a]] = np.inf
                    u = int(np.argmin(gain))
                    if gain[u] < best[0]:
                        best = (gain[u], ("move", a, b, u, None))
                if a < b:  # swap u (in a) with w (in b): x = w - u, change 2 x.(dev_a - dev_b) + 2 |x|^2
                    gain = 2 * (swapped @ (dev[a] - dev[b])) + 2 * swapped_square
                    gain[~present[a], :] = np.inf
                    gain[:, ~present[b]] = np.inf
                    u, w = np.unravel_index(int(np.argmin(gain)), gain.shape)
                    if gain[u, w] < best[0]:
                        best = (gain[u, w], ("swap", a, b, int(u), int(w)))
        if best[1] is None:
            break
        what, a, b, u, w = best[1]
        first = int(np.flatnonzero((fold_of == a) & (kind_of == u))[0])
        fold_of[first] = b
        counts[a] -= kinds[u]
        counts[b] += kinds[u]
        if what == "swap":
            other = int(np.flatnonzero((fold_of == b) & (kind_of == w))[0])
            fold_of[other] = a
            counts[b] -= kinds[w]
            counts[a] += kinds[w]
    return fold_of


def check_class_sizes(labels: np.ndarray, classes: list[str], n_splits: int) -> None:
    """Stratified k-fold puts every class in every fold's test set: a class with fewer images than folds is
    refused, naming it (scikit-learn would fail, or silently leave folds without it)."""
    counts = np.bincount(labels, minlength=len(classes))
    small = [(classes[c], int(n)) for c, n in enumerate(counts) if n < n_splits]
    if small:
        name, n = min(small, key=lambda item: item[1])
        more = f" (and {len(small) - 1} other class(es) too)" if len(small) > 1 else ""
        raise DataError(
            f"class {name!r} has {n} image(s), fewer than the {n_splits} folds of cross-validation{more}: "
            f"give every class at least {n_splits} images, drop the class, or give your own folds with --splits FILE"
        )


def multilabel_folds(
    labels: np.ndarray, patients: list[str] | None, n_splits: int = N_SPLITS, seed: int = FOLD_SEED
) -> list[Fold]:
    """k-fold cross-validation of a multi-label dataset (``labels`` n x L, 0/1) by iterative stratification
    (Sechidis, Tsoumakas & Vlahavas 2011): stratifying by label *sets* would leave most sets in one image, so
    each label is balanced in turn, the rarest first -- a rare label's few positives spread over the folds
    instead of landing in one. With patients, a patient is one unit whose label counts are the sums over its
    images, so no patient is in two test sets. Seeded (ties are broken by ``seed``): the same folds every run."""
    labels = np.asarray(labels)
    n = len(labels)
    if patients is None:
        if n < n_splits:
            raise DataError(f"{n_splits}-fold cross-validation needs at least {n_splits} images; found {n}")
        unit_of = np.arange(n)
    else:
        names, unit_of = np.unique(np.asarray(patients), return_inverse=True)
        if len(names) < n_splits:
            raise DataError(
                f"{n_splits}-fold cross-validation grouped by patient needs at least {n_splits} patients; "
                f"found {len(names)}"
            )
    sizes = np.bincount(unit_of)  # images per unit
    counts = np.zeros((len(sizes), labels.shape[1]), dtype=np.int64)  # positives of each label per unit
    np.add.at(counts, unit_of, labels.astype(np.int64))
    test_of = iterative_stratification(counts, sizes, n_splits, np.random.default_rng(seed))[unit_of]
    return [
        Fold(k, np.flatnonzero(test_of != k), np.flatnonzero(test_of == k), protocol="cv5", name=f"fold {k}")
        for k in range(n_splits)
    ]


def iterative_stratification(
    counts: np.ndarray, sizes: np.ndarray, n_splits: int, rng: np.random.Generator
) -> np.ndarray:
    """The test fold of every unit (an image, or a patient's images): Sechidis et al.'s Algorithm 1 over units
    with ``counts`` (units x L) positives of each label and ``sizes`` images.

    Each fold wants 1/k of every label's positives and of the images. The label with the fewest positives left
    is dealt out first, its units (the largest first) each to the fold that wants that label most, a tie to
    the fold that wants the most images, then a seeded draw; units with no label go last, by images wanted.
    Wants are kept times k, in integers, so ties are exact. A fold with no unit yet wants the most of
    everything, so with at least k units none is left empty."""
    n_units = len(sizes)
    order = rng.permutation(n_units)  # the order equal units are met in: seeded, not the listing's
    counts, sizes = counts[order], sizes[order]
    want = np.full(n_splits, int(sizes.sum()))  # k x (images each fold still wants)
    want_label = np.tile(counts.sum(0), (n_splits, 1))  # k x (positives of each label each fold still wants)
    fold = np.full(n_units, -1)
    left = np.ones(n_units, dtype=bool)

    def place(u: int, wanted: np.ndarray) -> None:
        best = np.flatnonzero(wanted == wanted.max())
        if len(best) > 1:
            best = best[want[best] == want[best].max()]
        m = int(best[0] if len(best) == 1 else rng.choice(best))
        fold[u] = m
        want_label[m] -= n_splits * counts[u]
        want[m] -= n_splits * sizes[u]

    while True:
        remaining = counts[left].sum(0)
        if not remaining.any():
            break
        rarest = np.flatnonzero(remaining == remaining[remaining > 0].min())
        label = int(rarest[0] if len(rarest) == 1 else rng.choice(rarest))
        units = np.flatnonzero(left & (counts[:, label] > 0))
        for u in units[np.argsort(-counts[units, label], kind="stable")]:
            place(int(u), want_label[:, label])
        left[units] = False
    unlabelled = np.flatnonzero(left)
    for u in unlabelled[np.argsort(-sizes[unlabelled], kind="stable")]:
        place(int(u), want)
    out = np.empty(n_units, dtype=np.int64)
    out[order] = fold
    return out


def make_folds(protocol: str, listing) -> list[Fold]:  # noqa: ANN001 - a scan.Listing
    """The folds of a listing under ``protocol`` (``cv5-or-predefined`` and ``cv5-or-split`` pick by layout)."""
    labels, groups = listing.labels, listing.groups
    if protocol == "cv5-or-predefined":
        protocol = "predefined" if groups is not None else "cv5"
    if protocol == "cv5-or-split":  # a manifest: its split column, else cross-validation
        protocol = "official" if groups is not None else "cv5"
    if protocol == "cv5":
        patients = getattr(listing, "patients", None)
        if labels.ndim == 2:  # one 0/1 column per label: a multi-label listing (iterative stratification)
            return multilabel_folds(labels, patients)
        check_class_sizes(labels, listing.classes, N_SPLITS)
        return grouped_folds(labels, patients) if patients is not None else stratified_folds(labels)
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


# --------------------------------------------------------------------------- your own folds
def splits_document(ids: list[str] | np.ndarray, folds: list[Fold]) -> list[dict[str, list[str]]]:
    """The folds as nnU-Net's ``splits_final.json`` has them: ``{"train": [ids], "val": [ids]}`` per fold,
    ``val`` being the fold's test part; a fold's own validation split (MedMNIST's official ``val``,
    used for --select and --plateau) is kept as ``"select"``."""
    ids = [str(i) for i in ids]
    doc = []
    for fold in folds:
        entry = {"train": [ids[i] for i in fold.train], "val": [ids[i] for i in fold.test]}
        if fold.val is not None and len(fold.val):
            entry["select"] = [ids[i] for i in fold.val]
        doc.append(entry)
    return doc


SPLIT_KEYS = ("train", "val", "select")


def read_splits(path: Path, ids: list[str]) -> list[Fold]:
    """Your own folds, checked against the dataset's ids before any work; each fault is one line naming the
    file, the fold and the id.

    The file is a JSON list of folds, each ``{"train": [ids], "val": [ids]}`` (nnU-Net's
    ``splits_final.json``; ``val`` is the fold's test part) and optionally ``"select"`` (ids held out of
    training to choose the kept epoch, as MedMNIST's official ``val``). Within a fold the lists are
    disjoint and together hold every id (``train`` is the rest); with two folds or more, every id is in
    exactly one fold's ``val``.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as err:
        raise UsageError(f"--splits {path}: cannot read it ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"--splits {path}: not JSON ({err})") from None
    if not isinstance(doc, list) or not doc:
        raise UsageError(f'--splits {path}: expected a JSON list of folds, each {{"train": [...], "val": [...]}}')
    index = {sample: i for i, sample in enumerate(ids)}
    folds, tested = [], {}
    for k, fold in enumerate(doc):
        parts = _read_fold(path, k, fold, index)
        for sample in parts["val"]:
            if sample in tested:
                raise UsageError(f"--splits {path}: id {sample!r} is in the val of fold {tested[sample]} and fold {k}")
            tested[sample] = k
        select = parts.get("select")
        folds.append(
            Fold(
                k,
                np.array(sorted(index[s] for s in parts["train"]), dtype=np.int64),
                np.array(sorted(index[s] for s in parts["val"]), dtype=np.int64),
                np.array(sorted(index[s] for s in select), dtype=np.int64) if select else None,
                protocol="splits",
                name=f"fold {k}",
            )
        )
    if len(doc) > 1:
        untested = [sample for sample in ids if sample not in tested]
        if untested:
            raise UsageError(
                f"--splits {path}: id {untested[0]!r} is in no fold's val ({len(untested)} id(s) never tested; "
                "with several folds every id is tested once)"
            )
    return folds


def _read_fold(path: Path, k: int, fold: Any, index: dict[str, int]) -> dict[str, list[str]]:
    """One fold's lists, each id known and used once in the fold; ``train`` is every id not in the others."""
    if not isinstance(fold, dict) or not {"train", "val"} <= set(fold) or set(fold) - set(SPLIT_KEYS):
        keys = sorted(fold) if isinstance(fold, dict) else type(fold).__name__
        raise UsageError(f'--splits {path}: fold {k} must be {{"train": [ids], "val": [ids]}} (found {keys})')
    parts, seen = {}, {}
    for key in SPLIT_KEYS:
        if key not in fold:
            continue
        values = fold[key]
        if not isinstance(values, list) or not all(isinstance(v, (str, int)) for v in values):
            raise UsageError(f"--splits {path}: fold {k}'s {key} must be a list of ids")
        for sample in map(str, values):
            if sample not in index:
                raise UsageError(
                    f"--splits {path}: fold {k}'s {key} has id {sample!r}, which the dataset does not have"
                )
            if sample in seen:
                where = "twice in its " + key if seen[sample] == key else f"in both its {seen[sample]} and {key}"
                raise UsageError(f"--splits {path}: id {sample!r} is {where} (fold {k})")
            seen[sample] = key
        parts[key] = [str(v) for v in values]
    if not parts["val"]:
        raise UsageError(f"--splits {path}: fold {k}'s val is empty")
    missing = [sample for sample in index if sample not in seen]
    if missing:
        raise UsageError(
            f"--splits {path}: id {missing[0]!r} is in none of fold {k}'s lists ({len(missing)} id(s); "
            "a fold's train is every id not in its val)"
        )
    return parts
