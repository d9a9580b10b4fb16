"""Member training images/s against the bound of the same work on tensors that never move, like with like.

    python bench/train_throughput.py [--model resnet18] [--size 64] [--images 240] [--device cpu]
                                     [--memory-format nchw,channels-last] [--cpu-isa avx2]

Both sides use the same model (ens's factory), the same optimizer (DGrad, fused), the same batch,
the same device, the same torch threads and the same memory format; the figure is printed at 1 thread
and at every core (CPU), for each --memory-format asked, and says where the member's time goes:

* bound: forward + backward + optimizer step on one random batch already on the device;
* member: ens's real FoldTrainer on a synthetic uint8 dataset of the same size (gather, the
  batched torch augmentation, normalisation, training, bookkeeping), epochs 2 and 3 of 4;
* breakdown: data (gather + augment + normalise, timed alone), forward/backward and optimizer
  (timed apart in the bound loop), checkpoint (one save of the model and optimizer state, which
  the trainer makes at most every --checkpoint-every seconds, 60 by default).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ensemble import portable  # applied before torch runs its first kernel, when it reads the pin
from ensemble.data.dataset import Dataset
from ensemble.data.splits import Fold
from ensemble.executors.pools import usable_cores
from ensemble.io import atomic_torch_save
from ensemble.learn.model import create_model
from ensemble.learn.trainer import FoldTrainer, TrainConfig
from ensemble.optim import build


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bound(model_name: str, size: int, batch: int, steps: int, device: str, channels_last: bool) -> dict[str, float]:
    """images/s of the bare loop, and seconds per batch of forward/backward and of the optimizer step."""
    torch.manual_seed(0)
    model = create_model(model_name, 4, pretrained=False).to(device)
    opt, _ = build("dgrad", model.parameters(), epochs=1, steps_per_epoch=steps, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 4, (batch,), device=device)
    if channels_last or device == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fwd_bwd = step = 0.0
    for i in range(steps + 2):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _sync(device)
        t1 = time.perf_counter()
        opt.step()
        _sync(device)
        if i >= 2:  # warm-up excluded
            fwd_bwd += t1 - t0
            step += time.perf_counter() - t1
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        atomic_torch_save(Path(tmp) / "c.pt", {"model": model.state_dict(), "optimizer": opt.state_dict()})
        checkpoint = time.perf_counter() - t0
    return {
        "images_s": steps * batch / (fwd_bwd + step),
        "fwd_bwd": fwd_bwd / steps,
        "step": step / steps,
        "checkpoint": checkpoint,
    }


def synthetic(size: int, n: int, batch: int) -> tuple[Dataset, Fold]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    fold = Fold(0, np.arange(n), np.arange(min(n, batch)))
    ds = Dataset(
        "bench",
        "bench",
        list("abcd"),
        np.array([str(i) for i in range(n)]),
        rng.integers(0, 4, n),
        images,
        [fold],
        "bench",
        "cv5",
    )
    return ds, fold


def member(
    model_name: str, size: int, batch: int, n: int, device: str, threads: int, memory_format: str
) -> dict[str, float]:
    """images/s of the member's epochs 2 and 3, and seconds per batch of its data path alone."""
    ds, fold = synthetic(size, n, batch)
    cfg = TrainConfig(
        model=model_name,
        epochs=4,
        batch_size=batch,
        size=size,
        device=device,
        workers=0,
        threads=threads,
        memory_format=memory_format,
        pretrained=False,
        keep_weights=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = FoldTrainer(ds, fold, "DGrad", cfg, seed=0, checkpoint=Path(tmp) / "c.pt")
        marks = []
        trainer.on_epoch = lambda e, loss, acc: marks.append(time.perf_counter())
        trainer.run()
        batches, seeds = trainer._epoch_plan(0)
        images = torch.from_numpy(ds.images).permute(0, 3, 1, 2)
        gen = torch.Generator().manual_seed(int(seeds[0]))
        t0 = time.perf_counter()
        for _ in trainer._image_batches(images, torch.from_numpy(ds.labels), batches, gen):
            pass
        _sync(device)
        data = (time.perf_counter() - t0) / len(batches)
    return {"images_s": 2 * n / (marks[2] - marks[0]), "data": data}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=30)
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--memory-format", default="nchw,channels-last", help="comma-separated: nchw, channels-last")
    ap.add_argument("--cpu-isa", default="avx2", choices=portable.ISAS, help="as ens train's (default avx2)")
    args = ap.parse_args()
    portable.apply(args.cpu_isa)
    steps = 2 * max(2, args.images // args.batch_size)  # as many batches as the member's two timed epochs
    counts = sorted({1, usable_cores()}) if args.device == "cpu" else [torch.get_num_threads()]
    print(
        f"{args.model} {args.size}x{args.size}, batch {args.batch_size}, {args.images} images, on {args.device} "
        f"(torch {torch.__version__})"
    )
    print(f"  CPU kernels: {torch.backends.cpu.get_cpu_capability()} (--cpu-isa {args.cpu_isa})")
    for threads, layout in itertools.product(counts, args.memory_format.split(",")):
        torch.set_num_threads(threads)
        ub = bound(args.model, args.size, args.batch_size, steps, args.device, layout == "channels-last")
        mb = member(args.model, args.size, args.batch_size, args.images, args.device, threads, layout)
        batch_s = args.batch_size / mb["images_s"]
        print(
            f"  {threads} thread(s), {layout}: bound {ub['images_s']:7.1f} img/s, member {mb['images_s']:7.1f} img/s, "
            f"ratio {mb['images_s'] / ub['images_s']:.2f}"
        )
        print(
            f"    per batch: member {batch_s * 1e3:6.1f} ms = data {mb['data'] * 1e3:5.1f} + forward/backward "
            f"{ub['fwd_bwd'] * 1e3:6.1f} + optimizer {ub['step'] * 1e3:5.1f} + rest "
            f"{(batch_s - mb['data'] - ub['fwd_bwd'] - ub['step']) * 1e3:5.1f} ms "
            f"(one checkpoint save: {ub['checkpoint'] * 1e3:.0f} ms, at most every 60 s)"
        )


if __name__ == "__main__":
    main()
