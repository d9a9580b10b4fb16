"""Choose the fine-tuning learning rate (and epoch count) of each optimizer on inner validation, never test folds.

    python reports/tune_rates.py --dataset folder:../shared/data/lar_fold3 --threads 2

For every (optimizer, lr) it trains fold 0's training part (80% of the images) with a stratified 10%
inner split held out, under the committed runs' recipe (pretrained Lite0, 112 px, the `paper`
structure), and prints the inner-validation accuracy after each epoch. The test part of fold 0 is
never scored. The rates the committed runs use are the best here (reports/README.md says which).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from ensemble import portable

portable.apply("avx2")

from ensemble.api import compose_train_config  # noqa: E402
from ensemble.learn.trainer import FoldTrainer  # noqa: E402
from ensemble.runs import load_dataset  # noqa: E402

GRID = {"sgd": (1e-2, 1e-3), "dgrad": (1e-3, 1e-4), "cos1": (1e-3, 1e-4), "adam": (1e-3, 1e-4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--opt", default="sgd,dgrad,cos1")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for opt in args.opt.split(","):
        for lr in GRID[opt]:
            cfg = compose_train_config(
                [opt],
                dataset=args.dataset,
                recipe="paper",
                config_file=None,
                sets=[],
                model="tf_efficientnet_lite0",
                weights="lite0",
                size=args.size,
                epochs=args.epochs,
                lr=lr,
                select="best-val-auc",
                device="cpu",
                threads=args.threads,
                workers=0,
                keep_weights=False,
            )
            ds = load_dataset(args.dataset, "datasets", cfg.size, None, 0)
            with tempfile.TemporaryDirectory() as tmp:
                trainer = FoldTrainer(ds, ds.folds[0], opt, cfg, seed=0, checkpoint=Path(tmp) / "c.pt")
                val_acc = []
                trainer.on_curves = None
                state = trainer.prepare()
                tools = trainer.epoch_tools()
                for epoch in range(cfg.epochs):
                    trainer.train_epoch(state, tools, epoch)
                    probs = trainer.predict(state.model, trainer.select_idx, None)
                    val_acc.append(float(np.mean(probs.argmax(1) == ds.labels[trainer.select_idx])))
            print(f"{opt:6s} lr {lr:g}: inner-validation accuracy by epoch {' '.join(f'{a:.3f}' for a in val_acc)}")


if __name__ == "__main__":
    main()
