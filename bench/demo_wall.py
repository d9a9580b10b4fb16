"""Wall time of ``ens demo`` (BreastMNIST, 3 members each of SGD, Adam and DGrad, fusion, report).

    python bench/demo_wall.py [--repeats 2] [--threads N] [--rev REV]

Each run is ``ens demo --out <fresh folder>`` in a fresh working folder, through this interpreter; with
``--rev`` the revision is checked out into a temporary git worktree first (``PYTHONPATH`` pointing at it).
The first run also pays one-off costs (numba compiles the fused DGrad kernels once per install and caches
them), so the best of the later runs is the figure to quote; the goal is 3 minutes on 2 cores. Each run
also checks that the demo wrote nothing into its working folder outside its output folder, and prints
the mean member's accuracy and the honest ensemble's. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo_run(tree: Path, scratch: Path, threads: int | None) -> tuple[float, str]:
    """Seconds of one ``ens demo``, and its last lines; the working folder must hold only the output after."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = [sys.executable, "-m", "ensemble.cli", "demo", "--out", "out"]
    if threads:
        args += ["--threads", str(threads)]
    t0 = time.perf_counter()
    res = subprocess.run(args, cwd=scratch, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"ens demo failed:\n{res.stderr[-2000:]}")
    extra = sorted(p.name for p in scratch.iterdir() if p.name != "out")
    if extra:
        raise SystemExit(f"ens demo wrote outside its output folder: {extra}")
    found = re.search(r"mean member accuracy .*", res.stdout)
    return seconds, found.group(0) if found else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", default=None, help="a git revision to time instead of the working tree")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = ROOT
        if args.rev:
            tree = Path(tmp) / "tree"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), args.rev], check=True
            )
        try:
            times = []
            for i in range(args.repeats):
                scratch = Path(tmp) / f"run-{i}"
                scratch.mkdir()
                seconds, line = demo_run(tree, scratch, args.threads)
                times.append(seconds)
                print(f"run {i + 1}: {seconds:6.1f} s  {line}", flush=True)
            best = min(times[1:] or times)
            print(
                f"ens demo wall ({args.rev or 'working tree'}): {best:.1f} s, best of the runs after the first "
                f"(runs: {', '.join(f'{t:.1f}' for t in times)} s); goal 180 s"
            )
        finally:
            if args.rev:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


if __name__ == "__main__":
    main()
