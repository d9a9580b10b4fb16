"""Segmentation member training images/s (the seed's U-Nets), against the bound of the same model on tensors
that never move, at the same threads.

    python bench/seg_throughput.py [--models lighter-unet@16,unet] [--size 64] [--images 96] [--device cpu]

The member is ens's FoldTrainer on a synthetic image/mask dataset (albumentations on image and mask,
Dice loss, Adam), epochs 2 and 3 of 4; the bound is forward + backward + step on one random batch, as
many steps as those two epochs have.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ensemble.data.dataset import Dataset
from ensemble.data.splits import Fold
from ensemble.optim import build
from ensemble.learn.losses import segmentation_loss
from ensemble.learn.model import create_model
from ensemble.learn.trainer import FoldTrainer, TrainConfig


def bound(model_name: str, size: int, batch: int, steps: int, device: str) -> float:
    model = create_model(model_name, 1).to(device)
    opt, _ = build("adam", model.parameters(), epochs=1, steps_per_epoch=steps, lr=1e-4, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    y = (torch.rand(batch, size, size, device=device) > 0.8).long()
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        loss = segmentation_loss(model(x), y, "dice")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def member(model_name: str, size: int, batch: int, n: int, device: str, threads: int) -> float:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    masks = (rng.random((n, size, size)) > 0.8).astype(np.uint8)
    fold = Fold(0, np.arange(n), np.arange(min(n, batch)))
    ds = Dataset(
        "bench",
        "seg:bench",
        ["background", "foreground"],
        np.array([str(i) for i in range(n)]),
        np.zeros(n, np.int64),
        images,
        [fold],
        "bench",
        "cv5",
        masks=masks,
    )
    cfg = TrainConfig(
        model=model_name,
        epochs=4,
        batch_size=batch,
        size=size,
        device=device,
        workers=0,
        threads=threads,
        pretrained=False,
        head_lr_factor=1.0,
        lr=1e-4,
        loss="dice",
        normalise="half",
        keep_weights=False,
    )
    marks = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = FoldTrainer(ds, fold, "Adam", cfg, seed=0, checkpoint=Path(tmp) / "c.pt")
        trainer.on_epoch = lambda e, loss, acc: marks.append(time.perf_counter())
        trainer.run()
    return 2 * n / (marks[2] - marks[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lighter-unet@16,lighter-unet@128,unet")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"segmentation training at {args.size}x{args.size}, batch {args.batch_size}, {args.images} images, "
        f"{args.threads} thread(s), {args.device}"
    )
    for name in args.models.split(","):
        ub = bound(name, args.size, args.batch_size, 2 * max(2, args.images // args.batch_size), args.device)
        mb = member(name, args.size, args.batch_size, args.images, args.device, args.threads)
        print(f"  {name:18s} member {mb:7.1f} img/s, bound {ub:7.1f} img/s, ratio {mb / ub:.2f}")


if __name__ == "__main__":
    main()
