"""Time to evaluate every combination of per-label member counts with the sum rule.

    python bench/fuse.py [--labels 8] [--members 14] [--samples 10000] [--classes 4] [--step 7]

Counts per label run over 0, step, 2*step, ..., members (``ens report --step``); with the
defaults that is 3^8 - 1 = 6560 combinations of up to 8 labels x 14 members. Target <= 1 s on CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ensemble.fusion.search import count_grid, search
from ensemble.store import Member


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=int, default=8)
    ap.add_argument("--members", type=int, default=14)
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--step", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    y = rng.integers(0, args.classes, args.samples)
    ids = np.array([f"s{i}" for i in range(args.samples)])
    by_label = {}
    for lab in range(args.labels):
        ms = []
        for r in range(args.members):
            p = rng.dirichlet(np.ones(args.classes), args.samples).astype(np.float32)
            meta = {"dataset": "bench", "label": f"L{lab}", "run": r, "fingerprint": "f", "classes": list("abcd")}
            ms.append(Member(Path("."), meta, p, y, ids, np.zeros(args.samples, int)))
        by_label[f"L{lab}"] = ms
    n = np.prod([len(count_grid(args.members, args.step)) for _ in range(args.labels)]) - 1
    t0 = time.perf_counter()
    found = search(by_label, args.step)
    dt = time.perf_counter() - t0
    print(
        f"{len(found)} combinations (expected {n}) of {args.labels} labels x {args.members} members, "
        f"{args.samples} samples, {args.classes} classes: {dt:.2f} s"
    )


if __name__ == "__main__":
    main()
