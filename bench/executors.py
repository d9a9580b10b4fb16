"""Wall time of the same small training job under --executor local, processes and dask.

    python bench/executors.py [--model resnet18] [--n 2] [--epochs 2] [--jobs 2] [--device cpu]

Each executor trains N members (N x 5 fold tasks) of a generated 3-class image folder into
a fresh store, through the real `ens train` command (so process start-up, pool start-up and
assembly are counted). Prints the wall time of each and checks the members agree.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(root: Path, per_class: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = (rng.integers(0, 80, (size, size, 3)) + 60 * c).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{c}" / f"{i}.png")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_images(Path(tmp) / "imgs", args.per_class, args.size)
        common = [
            "--dataset",
            f"folder:{folder}",
            "--opt",
            "dgrad",
            "--n",
            str(args.n),
            "--model",
            args.model,
            "--epochs",
            str(args.epochs),
            "--size",
            str(args.size),
            "--no-pretrained",
            "--device",
            args.device,
            "--workers",
            "0",
            "--no-progress",
            "--cache-dir",
            str(Path(tmp) / "cache"),
        ]
        from ensemble.data.dataset import load

        load(f"folder:{folder}", size=args.size, cache_dir=Path(tmp) / "cache")  # no executor pays the decoding
        results = {}
        for executor in ("local", "processes", "dask"):
            store = Path(tmp) / f"members-{executor}"
            extra = [] if executor == "local" else ["--jobs", str(args.jobs)]
            t0 = time.perf_counter()
            res = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ensemble.cli",
                    "train",
                    *common,
                    "--members-dir",
                    str(store),
                    "--executor",
                    executor,
                    *extra,
                ],
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - t0
            if res.returncode:
                sys.exit(f"{executor} failed:\n{res.stderr}")
            probs = np.concatenate([np.load(p)["probs"] for p in sorted(store.rglob("fold-*.npz"))])
            results[executor] = (seconds, probs)
        tasks = args.n * 5
        print(
            f"{args.n} member(s) x 5 folds = {tasks} tasks, {args.model} {args.size}px, {args.epochs} epoch(s), "
            f"{3 * args.per_class} images, device {args.device}, jobs {args.jobs}"
        )
        base = results["local"][1]
        for executor, (seconds, probs) in results.items():
            diff = float(np.abs(probs - base).max())
            print(f"  {executor:<10} {seconds:7.1f} s wall   max |p - p_local| = {diff:.1e}")


if __name__ == "__main__":
    main()
