"""Training time of one ``ens train`` member, this working tree against another revision, like with like.

    python bench/finetune_wall.py --rev f9ccd0c [--model tf_efficientnet_lite0] [--size 112] [--epochs 2]
                                  [--threads 1] [--images 120] [--dataset folder:PATH]

Both sides train the same DGrad member (same data, model, size, epochs, batch and --threads, from random
initialisation: the starting weights do not change the cost of a step) into a fresh store, through this
interpreter with ``PYTHONPATH`` at the tree (``--rev`` is checked out into a temporary git worktree). The
figure is the sum of the member's ``fold_seconds`` (training and the fold's predictions; not the process
start or the data decoding), the best of ``--repeats`` runs. The working tree trains with its defaults
(channels-last, --cpu-isa avx2 from ens 0.4); the old revision with its own. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def synthetic_folder(root: Path, images: int, side: int = 101) -> Path:
    """A 4-class folder of RGB PNGs of LAR's patch size (the class shifts the mean colour)."""
    rng = np.random.default_rng(0)
    for i in range(images):
        c = i % 4
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        pixels = np.clip(rng.normal(60 + 40 * c, 40, (side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"c{c}" / f"{i:04d}.png")
    return root


def train_seconds(tree: Path, store: Path, dataset: str, args: argparse.Namespace) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATEN_", "DNNL_", "ONEDNN_", "MKL_CBWR", "NUMBA_"))}
    env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, "-c", "from ensemble.cli import main; main()", "train", "--dataset", dataset]
    cmd += ["--opt", "dgrad", "--n", "1", "--model", args.model, "--size", str(args.size), "--no-pretrained"]
    cmd += ["--epochs", str(args.epochs), "--threads", str(args.threads), "--device", "cpu", "--workers", "0"]
    cmd += ["--no-progress", "--no-keep-weights", "--members-dir", str(store)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=store.parent)
    if res.returncode:
        raise SystemExit(f"ens train failed in {tree}:\n{res.stderr[-2000:]}")
    (meta,) = store.glob("*/DGrad/000/member.json")
    return float(sum(json.loads(meta.read_text())["fold_seconds"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", required=True, help="the git revision to compare with (e.g. f9ccd0c)")
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dataset", default=None, help="a dataset spec instead of the synthetic folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset or f"folder:{synthetic_folder(Path(tmp) / 'patches', args.images)}"
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old), args.rev], check=True)
        try:
            best = {}
            for name, tree in (("working tree", ROOT), (args.rev, old)):
                runs = []
                for i in range(args.repeats):
                    store = Path(tmp) / f"{name.replace(' ', '-')}-{i}" / "members"
                    store.parent.mkdir(parents=True)
                    runs.append(train_seconds(tree, store, dataset, args))
                best[name] = min(runs)
                print(f"{name:>14}: {best[name]:7.1f} s of fold training (runs {', '.join(f'{r:.1f}' for r in runs)})")
            print(
                f"{args.model} at {args.size} px, {args.epochs} epoch(s), {args.threads} thread(s): the working tree "
                f"trains {best[args.rev] / best['working tree']:.2f}x as fast as {args.rev}"
            )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)


if __name__ == "__main__":
    main()
