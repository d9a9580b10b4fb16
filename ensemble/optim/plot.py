"""Figures of the schedules: the cyclic terms of Cos#1/Cos#2 and the CLMR/TASO curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

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
    """The seed's Fig. 1 (a_t and c_t over two periods) and CLMR/TASO over an ``epochs`` run: each
    schedule's learning rate and momentum in panels of their own (one above the other, sharing the epoch
    axis), so neither curve hides the other; the one legend sits below its panel."""
    t = list(range(1, 2 * period + 1))
    a, c = zip(*(cyclic_terms(s, period) for s in t))
    fig = plt.figure(figsize=(15, 5.5))
    grid = fig.add_gridspec(2, 3)
    cyc = fig.add_subplot(grid[:, 0])
    cyc.plot(t, c, label="c_t (Cos#1, Cos#2)")
    cyc.plot(t, a, label="a_t (Cos#2)")
    cyc.set(title=f"Cyclic terms, period {period}", xlabel="optimizer step t")
    cyc.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    x = [i / steps_per_epoch for i in range(epochs * steps_per_epoch)]
    for col, name in ((1, "clmr"), (2, "taso")):
        lrs, moms = schedule_curves(name, epochs, steps_per_epoch)
        top = fig.add_subplot(grid[0, col])
        bottom = fig.add_subplot(grid[1, col], sharex=top)
        top.plot(x, lrs, color="C0")
        top.set(title=f"{name.upper()} over {epochs} epochs", ylabel="learning rate")
        top.tick_params(labelbottom=False)
        bottom.plot(x, moms, color="C1")
        bottom.set(xlabel="epoch", ylabel="momentum")
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    import io

    from ..io import atomic_write_bytes

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=100, bbox_inches="tight", pad_inches=0.1)
    atomic_write_bytes(path, buf.getvalue())  # whole or not at all
    plt.close(fig)
    return path
