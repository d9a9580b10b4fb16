"""BUSI benign vs malignant with near-duplicates kept together: writes ``reports/busi_groups.csv``.

BUSI has no patient ids, and about a fifth of its images are reported as near-duplicates (the same
lesion saved twice, with and without calipers, or re-cropped). Cross-validation that puts the two copies
in different folds tests a network on an image it was trained on. This script links two images when
their 32x32 grey thumbnails correlate above ``THRESHOLD`` and takes the connected groups as the
manifest's ``group`` column, which ``ens train --dataset "csv:reports/busi_groups.csv?patient=group"``
keeps apart (StratifiedGroupKFold). The groups stand in for patients: they are found from pixels, not
read from the hospital's records, so two images of one patient that look different stay apart.

    python reports/busi_groups.py        # reads reports/busi_classes.csv and its images
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
THRESHOLD = 0.95  # above: same image (pairs checked by eye); 0.93-0.95 mixes repeats and look-alikes
THUMB = 32


def thumbnails(paths: list[Path]) -> np.ndarray:
    """Each image as a zero-mean, unit-length vector of its THUMB x THUMB grey pixels."""
    vectors = []
    for path in paths:
        with Image.open(path) as img:
            small = img.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR)
        v = np.asarray(small, np.float64).ravel()
        v -= v.mean()
        vectors.append(v / (np.linalg.norm(v) + 1e-12))
    return np.stack(vectors)


def groups(vectors: np.ndarray, threshold: float) -> list[int]:
    """Connected components of the graph "correlation above threshold" (union-find), numbered by first image."""
    similar = vectors @ vectors.T > threshold
    parent = list(range(len(vectors)))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in zip(*np.nonzero(np.triu(similar, 1))):
        parent[root(int(i))] = root(int(j))
    numbers: dict[int, int] = {}
    return [numbers.setdefault(root(i), len(numbers)) for i in range(len(vectors))]


def main() -> None:
    rows = list(csv.DictReader((HERE / "busi_classes.csv").open()))
    group_of = groups(thumbnails([HERE / r["path"] for r in rows]), THRESHOLD)
    with (HERE / "busi_groups.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group"])
        for row, g in zip(rows, group_of):
            writer.writerow([row["path"], row["label"], f"g{g:03d}"])
    sizes = np.bincount(group_of)
    mixed = sum(len({rows[i]["label"] for i in np.flatnonzero(np.array(group_of) == g)}) > 1 for g in range(len(sizes)))
    print(
        f"{len(rows)} images in {len(sizes)} groups; {int((sizes > 1).sum())} groups of 2-{sizes.max()} hold "
        f"{int(sizes[sizes > 1].sum())} images; {mixed} groups mix benign and malignant"
    )


if __name__ == "__main__":
    main()
