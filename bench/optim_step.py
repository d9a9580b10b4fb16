"""Median ``step()`` time of every optimizer on timm's ResNet50 parameters, as a ratio to Adam.

    python bench/optim_step.py [--device cuda] [--repeats 30] [--threads 1]

Target: <= 1.2x torch.optim.Adam(foreach=True) for diffgrad, dgrad, cos1, cos2.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from ensemble.optim import REGISTRY, build


def median_step_seconds(opt: torch.optim.Optimizer, params: list[torch.Tensor], repeats: int, device: str) -> float:
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    for _ in range(3):  # warm-up: state allocation, allocator caches
        opt.step()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def info_is_family(label: str) -> bool:
    return REGISTRY[label].kind == "adam-like"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd step of the Adam family")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's own count]")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = timm.create_model(args.model, pretrained=False).to(args.device)
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    print(
        f"{args.model}: {len(params)} tensors, {n / 1e6:.1f} M parameters on {args.device}"
        f" (torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )

    # Same settings for everyone (the protocol's coupled L2 included); Adam is timed
    # before and after the others so drift of the machine shows.
    def adam_seconds() -> float:
        adam = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4, foreach=True)
        return median_step_seconds(adam, params, args.repeats, args.device)

    base = adam_seconds()
    print(f"{'torch.optim.Adam(foreach=True)':32s} {base * 1e3:8.2f} ms   1.00x")
    for label in REGISTRY:
        opt, _ = build(label, params, epochs=20, steps_per_epoch=10, weight_decay=1e-4)
        t = median_step_seconds(opt, params, args.repeats, args.device)
        print(f"{label:32s} {t * 1e3:8.2f} ms   {t / base:.2f}x")
        del opt
        if args.compile and info_is_family(label):
            opt, _ = build(label, params, epochs=20, steps_per_epoch=10, weight_decay=1e-4, compile=True)
            t0 = time.perf_counter()
            opt.step()
            opt.step()  # the step count becomes dynamic on the second call: one recompilation
            compile_s = time.perf_counter() - t0
            t = median_step_seconds(opt, params, args.repeats, args.device)
            print(f"{label + ' (compiled)':32s} {t * 1e3:8.2f} ms   {t / base:.2f}x   (compilation {compile_s:.0f} s)")
            del opt
    again = adam_seconds()
    print(f"{'torch.optim.Adam, again':32s} {again * 1e3:8.2f} ms   {again / base:.2f}x")


if __name__ == "__main__":
    main()
