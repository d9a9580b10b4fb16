"""Figures of the schedules: the cyclic terms of Cos#1/Cos#2 and the CLMR/TASO curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .diffgrad import cyclic_terms  # noqa: E402
from .registry import build  # noqa: E402


def schedule_curves(name: str, epochs: int = 20, steps_per_epoch: int = 10) -> tuple[list[float], list[float]]:
    """Learning rate and momentum a schedule gives at every iteration of a run."""
    w = torch.nn.Parameter(torch.zeros(1))
    opt, sched = build(name, [w], epochs=epochs, steps_per_epoch=steps_per_epoch)
    lrs, moms = [], []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()  # no gradient: a no-op, but keeps the optimizer-then-scheduler order
        sched.step()
    return lrs, moms


def plot_schedules(path: Path, period: int = 30, epochs: int = 20, steps_per_epoch: int = 10) -> Path:
    """The seed's Fig. 1 (a_t and c_t over two periods) and CLMR/TASO over an ``epochs`` run."""
    t = list(range(1, 2 * period + 1))
    a, c = zip(*(cyclic_terms(s, period) for s in t))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(t, c, label="c_t (Cos#1, Cos#2)")
    axes[0].plot(t, a, label="a_t (Cos#2)")
    axes[0].set(title=f"Cyclic terms, period {period}", xlabel="optimizer step t")
    axes[0].legend()
    x = [i / steps_per_epoch for i in range(epochs * steps_per_epoch)]
    for name, ax in (("clmr", axes[1]), ("taso", axes[2])):
        lrs, moms = schedule_curves(name, epochs, steps_per_epoch)
        ax.plot(x, lrs, color="C0", label="learning rate")
        ax.set(title=f"{name.upper()} over {epochs} epochs", xlabel="epoch", ylabel="learning rate")
        ax2 = ax.twinx()
        ax2.plot(x, moms, color="C1", label="momentum")
        ax2.set_ylabel("momentum")
        ax.legend(loc="upper left")
        ax2.legend(loc="upper right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
