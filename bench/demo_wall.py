"""Wall time of ``ens demo`` (6 members x 5 folds of test_resnet on digits, then fusion) at two revisions.

    python bench/demo_wall.py [--before a3f5f01] [--after HEAD] [--repeats 2]

Each revision is checked out into a temporary git worktree and run with this interpreter
(``PYTHONPATH`` pointing at it), in a fresh store and cache, ``--repeats`` times in turn; the first
run of a revision also pays one-off costs (numba's compilation of the fused kernels, then cached on
disk), so the best of the later runs is the figure to compare. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo_seconds(tree: Path, scratch: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "ENS_CACHE_DIR": str(scratch / "cache")}
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ensemble.cli", "demo", "--members-dir", str(scratch / "members")],
        cwd=scratch,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="a3f5f01", help="revision before the speed work (ens 0.1.0)")
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for name in ("before", "after"):
            rev = getattr(args, name)
            trees[name] = Path(tmp) / name
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(trees[name]), rev], check=True
            )
        try:
            times: dict[str, list[float]] = {"before": [], "after": []}
            for i in range(args.repeats):
                for name, tree in trees.items():
                    scratch = Path(tmp) / f"{name}-{i}"
                    scratch.mkdir()
                    times[name].append(demo_seconds(tree, scratch))
            best = {name: min(values[1:] or values) for name, values in times.items()}
            for name, values in times.items():
                print(
                    f"{name:6s} {getattr(args, name):10s} demo wall {best[name]:6.1f} s "
                    f"(runs: {', '.join(f'{v:.1f}' for v in values)} s)"
                )
            print(f"after / before: {best['after'] / best['before']:.2f}")
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


if __name__ == "__main__":
    main()
