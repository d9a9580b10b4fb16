"""`ens predict` images/s against the bound: the same fold models called directly in a loop.

    python bench/predict.py [--members 3] [--model resnet18] [--size 64] [--images 400] [--device cpu]

Trains ``--members`` tiny members (1 epoch, 5 folds) on a synthetic image folder, then times
``ens predict`` of all of them on the folder's images (decoding included, as a user sees it),
and the bound: every fold model applied to the already-decoded, already-normalised tensor in
batches of the same size. Prints both, their ratio, and the disk size of one fold model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ensemble.prediction import collect_inputs, load_fold_model, predict  # noqa: E402
from ensemble.store import Store  # noqa: E402
from ensemble.learn.infer import Normaliser, nchw  # noqa: E402
from ensemble.learn.trainer import TrainConfig, resolve_device  # noqa: E402
from ensemble.training import TrainRequest, train_members  # noqa: E402


def make_images(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % 3
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        img = (rng.integers(0, 80, (size, size, 3)) + 60 * c).astype(np.uint8)
        Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_images(Path(tmp) / "imgs", args.images, args.size)
        cfg = TrainConfig(model=args.model, epochs=1, size=args.size, pretrained=False, device=args.device, workers=0)
        train_members(
            TrainRequest(f"folder:{folder}", "SGD", args.members, cfg, Path(tmp) / "M", Path(tmp), progress=False),
            echo=lambda line: None,
        )
        store = Store(Path(tmp) / "M")
        expr = f"SGD{args.members}"
        members = store.members("imgs", "SGD")
        inputs = collect_inputs([str(folder)], Path(tmp))
        predict(
            store,
            "imgs",
            "SGD1",
            collect_inputs([str(folder)], Path(tmp)),
            device=args.device,
            batch_size=args.batch_size,
        )  # warm-up: allocator, oneDNN primitives
        t0 = time.perf_counter()
        predict(store, "imgs", expr, inputs, device=args.device, batch_size=args.batch_size)
        ens_seconds = time.perf_counter() - t0
        models = [load_fold_model(m, k, device) for m in members for k in range(m.meta.folds)]
        x = Normaliser(device)(nchw(inputs.images(args.size)))
        t0 = time.perf_counter()
        with torch.no_grad():
            for model in models:
                for start in range(0, len(x), args.batch_size):
                    torch.softmax(model(x[start : start + args.batch_size]), 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        bound_seconds = time.perf_counter() - t0
        fold_bytes = members[0].model_file(0).stat().st_size
        dtype = members[0].meta.fold_models.get("dtype", ["?"])[0]
    views = args.images * len(models)
    print(
        f"{args.members} members x 5 folds of {args.model} at {args.size} px on {device}, {args.images} images, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"ens predict : {views / ens_seconds:8.1f} image-model passes/s ({args.images / ens_seconds:.1f} images/s, "
        f"{ens_seconds:.2f} s incl. decoding)"
    )
    print(f"bound       : {views / bound_seconds:8.1f} image-model passes/s ({bound_seconds:.2f} s)")
    print(f"ratio       : {bound_seconds / ens_seconds:.2f}")
    print(f"fold model  : {fold_bytes / 2**20:.2f} MiB on disk ({dtype})")


if __name__ == "__main__":
    main()
