"""Member-training images/s against the same model on synthetic tensors already on the device.

    python bench/train_throughput.py [--model resnet50] [--size 224] [--images 120] [--device cuda]

The upper bound is forward + backward + optimizer step on one random batch that never moves;
the member figure is ens's real FoldTrainer (augmentation, data feeding, checkpoint) on a
synthetic dataset of the same size. Their ratio is what the data path costs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

from ensemble.data.dataset import Dataset
from ensemble.data.splits import Fold
from ensemble.optim import build
from ensemble.train.trainer import FoldTrainer, TrainConfig


def upper_bound(model_name: str, size: int, batch: int, steps: int, device: str) -> float:
    model = timm.create_model(model_name, num_classes=4).to(device)
    opt, _ = build("dgrad", model.parameters(), epochs=1, steps_per_epoch=steps)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 4, (batch,), device=device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for i in range(steps + 2):
        if i == 2:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def member(model_name: str, size: int, batch: int, n: int, device: str, workers: int) -> float:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, n)
    fold = Fold(0, np.arange(n), np.arange(min(n, batch)))
    ds = Dataset("bench", "bench", list("abcd"), np.array([str(i) for i in range(n)]), labels, images, [fold],
                 "bench", "cv5")
    cfg = TrainConfig(model=model_name, epochs=2, batch_size=batch, size=size, device=device, workers=workers,
                      pretrained=False)
    seen = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = FoldTrainer(ds, fold, "DGrad", cfg, 0, Path(tmp), on_batch=seen.append)
        marks = []
        trainer.on_epoch = lambda e, loss, acc: marks.append(time.perf_counter())
        trainer.run()
    return n / (marks[1] - marks[0])  # the second epoch: no warm-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=30)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    steps = max(2, args.images // args.batch_size)
    ub = upper_bound(args.model, args.size, args.batch_size, steps, args.device)
    mb = member(args.model, args.size, args.batch_size, args.images, args.device, args.workers)
    print(f"{args.model} {args.size}x{args.size} batch {args.batch_size} on {args.device}")
    print(f"synthetic tensors on device (upper bound): {ub:8.1f} images/s")
    print(f"ens member training (augment + feed):      {mb:8.1f} images/s   ratio {mb / ub:.2f}")


if __name__ == "__main__":
    main()
