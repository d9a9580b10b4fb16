"""Per-iteration schedules of the seeds: CLMR (cyclic lr and momentum) and TASO.

Both are ``torch.optim.lr_scheduler.LRScheduler`` subclasses stepped once per
iteration, after ``optimizer.step()``. ``last_epoch`` therefore counts
iterations: the value "at iteration i" (SPEC §3) is in ``param_groups`` right
after construction for i = 0 and after i calls of ``step()``.

A param group may carry ``lr_scale`` (the trainer gives the new head a factor
of 20); its learning rate is the schedule's value times that scale.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def triangle(i: int, lo: float, hi: float, period: int) -> float:
    """Triangle wave starting at ``lo``, peaking at ``hi`` half-way through ``period`` iterations."""
    p = (i % period) / period
    return lo + (hi - lo) * (2.0 * p if p < 0.5 else 2.0 - 2.0 * p)


def taso_lr(i: int, total: int, lr_i: float, alpha: float, beta: float, lr_f: float) -> float:
    """TASO's sigmoid at iteration ``i`` of ``total``: lr_i / (1 + exp(alpha ((i+1)/total - beta))) + lr_f."""
    return lr_i / (1.0 + math.exp(alpha * ((i + 1) / total - beta))) + lr_f


class _IterationSchedule(LRScheduler):
    """Shared shell: subclasses give the value at iteration ``self.last_epoch``."""

    def value(self, i: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:  # type: ignore[override]
        lr = self.value(self.last_epoch)
        return [lr * group.get("lr_scale", 1.0) for group in self.optimizer.param_groups]


class CLMR(_IterationSchedule):
    """Cyclic learning rate and momentum, in phase, both starting at their minimum.

    lr = triangle(i; min_lr, max_lr, c_lr * It), momentum = triangle(i; min_mr, max_mr, c_mr * It)
    with ``It`` the iterations per epoch. Meant for Nesterov SGD (the seed's choice).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        steps_per_epoch: int,
        *,
        min_lr: float = 5e-4,
        max_lr: float = 5e-2,
        c_lr: int = 20,
        min_mr: float = 0.85,
        max_mr: float = 0.95,
        c_mr: int = 20,
    ) -> None:
        if steps_per_epoch < 1 or c_lr < 1 or c_mr < 1:
            raise ValueError("steps_per_epoch, c_lr and c_mr must be >= 1")
        self.min_lr, self.max_lr, self.c_lr = min_lr, max_lr, c_lr
        self.min_mr, self.max_mr, self.c_mr = min_mr, max_mr, c_mr
        self.steps_per_epoch = steps_per_epoch
        super().__init__(optimizer)

    def value(self, i: int) -> float:
        return triangle(i, self.min_lr, self.max_lr, self.c_lr * self.steps_per_epoch)

    def momentum(self, i: int) -> float:
        return triangle(i, self.min_mr, self.max_mr, self.c_mr * self.steps_per_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        mr = self.momentum(self.last_epoch)
        for group in self.optimizer.param_groups:
            group["momentum"] = mr
        return super().get_lr()


class TASO(_IterationSchedule):
    """Training Aware Sigmoidal Optimizer: constant first, then a sigmoid decay to ``final_lr``.

    lr(i) = lr_i / (1 + exp(alpha * ((i + 1) / (It * E) - beta))) + final_lr,
    the seed's formula with the epoch k = (i + 1) / It made fractional.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        steps_per_epoch: int,
        epochs: int,
        *,
        lr: float = 1e-3,
        alpha: float = 25.0,
        beta: float = 0.7,
        final_lr: float | None = None,
    ) -> None:
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError("TASO needs the planned epochs and steps_per_epoch (each >= 1)")
        self.lr_i, self.alpha, self.beta = lr, alpha, beta
        self.final_lr = lr / 20.0 if final_lr is None else final_lr
        self.total = steps_per_epoch * epochs
        super().__init__(optimizer)

    def value(self, i: int) -> float:
        return taso_lr(i, self.total, self.lr_i, self.alpha, self.beta, self.final_lr)
