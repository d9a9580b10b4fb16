"""The diffGrad family: Adam, diffGrad, DGrad, Cos#1 and Cos#2 (SPEC §3).

All five share one update,

    theta_t = theta_{t-1} - lr * xi_t * m^_t / (sqrt(v^_t) + eps),

and differ only in the friction factor ``xi_t``. The class below is a thin
``torch.optim.Optimizer`` shell (param groups, lazily created state, state_dict);
the arithmetic lives in :func:`_multi_tensor_step`, built from ``torch._foreach_*``
calls as torch's own Adam is, with one pluggable friction function per variant.

The step never synchronises host and device: the step counter lives on the CPU
(as in torch's non-capturable Adam) and the per-tensor maximum DGrad needs stays
a device tensor.

Interpretation choices of the SPEC, each in one small named function so that a
change is one line:

* :func:`first_moment_step_size` -- the update uses the bias-corrected ``m^``
  (the seed's eq. 10 prints ``m_t`` without the hat; diffGrad uses ``m^``).
* :func:`normalised_distance` -- DGrad's ``max(A_t)`` is taken over the elements
  of one parameter tensor, and ``D_t = 0`` where that maximum is 0.
* :func:`dgrad_distance` -- ``A_t = |g_t - v_t|`` uses the second moment *after*
  this step's update (the seed's ``avg_t``).
* :func:`cyclic_terms` -- ``a_t``/``c_t`` of the seed's eq. (15)/(17), period 30,
  with values below 9e-4 raised to 9e-4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import fused

CYCLE_FLOOR = 9e-4
"""The seed replaces zeros of its cyclic terms by 9e-4; we raise anything below it."""


# --------------------------------------------------------------------------- #
# Interpretation choices (SPEC §3) -- one function each.
# --------------------------------------------------------------------------- #
def cyclic_terms(t: int, period: int = 30) -> tuple[float, float]:
    """``(a_t, c_t)`` of the seed's eqs. (15) and (17) at optimizer step ``t`` (1-based).

    a_t = |cos(pi t / P)| * exp(-0.01 (t mod P + 1)), c_t = 2 - a_t, each raised
    to at least :data:`CYCLE_FLOOR`.
    """
    a = abs(math.cos(math.pi * t / period)) * math.exp(-0.01 * ((t % period) + 1))
    c = 2.0 - a
    return max(a, CYCLE_FLOOR), max(c, CYCLE_FLOOR)


def first_moment_step_size(lr: float, bias_correction1: float) -> float:
    """Scale of ``m_t`` in the update: ``lr / (1 - b1^t)``, i.e. the bias-corrected m^."""
    return lr / bias_correction1


def dgrad_distance(grads: list[Tensor], exp_avg_sqs: list[Tensor]) -> list[Tensor]:
    """``A_t = |g_t - v_t|`` with ``v_t`` the second moment already updated this step."""
    distance = torch._foreach_sub(grads, exp_avg_sqs)
    torch._foreach_abs_(distance)
    return distance


def normalised_distance(distance: list[Tensor], scale: float) -> list[Tensor]:
    """In place: ``scale * A / max(A)`` with the max over each tensor's elements.

    Where ``max(A) == 0`` the whole tensor ``A`` is 0, so dividing by a tiny floor
    instead of 0 gives ``D_t = 0`` as the SPEC asks, with no host synchronisation.
    The floor is ``scale`` times the smallest normal number, so ``scale / max`` stays
    finite (``4 / tiny`` would overflow float32 and turn 0 * inf into NaN).
    """
    maxima = torch._foreach_norm(distance, ord=math.inf)
    tiny = torch.finfo(distance[0].dtype).tiny * max(scale, 1.0) if distance else 0.0
    torch._foreach_clamp_min_(maxima, tiny)
    factors = torch._foreach_reciprocal(maxima)
    torch._foreach_mul_(factors, scale)
    torch._foreach_mul_(distance, factors)
    return distance


# --------------------------------------------------------------------------- #
# Friction rules: xi_t for each variant. ``None`` means xi_t = 1 (Adam).
# --------------------------------------------------------------------------- #
FrictionFn = Callable[[list[Tensor], list[Tensor], list[Tensor], int, int], "list[Tensor] | None"]


def friction_adam(grads, exp_avg_sqs, prev_grads, step, period):  # noqa: ANN001, ARG001
    """Adam: xi_t = 1."""
    return None


def friction_diffgrad(grads, exp_avg_sqs, prev_grads, step, period):  # noqa: ANN001, ARG001
    """diffGrad: xi_t = sig(|g_{t-1} - g_t|), g_0 = 0; stores g_t for the next step."""
    xi = torch._foreach_sub(prev_grads, grads)
    torch._foreach_abs_(xi)
    torch._foreach_sigmoid_(xi)
    torch._foreach_copy_(prev_grads, grads)
    return xi


def friction_dgrad(grads, exp_avg_sqs, prev_grads, step, period):  # noqa: ANN001, ARG001
    """DGrad: xi_t = sig(4 D_t), D_t = A_t / max(A_t)."""
    xi = normalised_distance(dgrad_distance(grads, exp_avg_sqs), 4.0)
    torch._foreach_sigmoid_(xi)
    return xi


def friction_cos1(grads, exp_avg_sqs, prev_grads, step, period):  # noqa: ANN001, ARG001
    """Cos#1: xi_t = sig(4 c_t D_t)."""
    _, c = cyclic_terms(step, period)
    xi = normalised_distance(dgrad_distance(grads, exp_avg_sqs), 4.0 * c)
    torch._foreach_sigmoid_(xi)
    return xi


def cos2_terms(step: int, period: int) -> tuple[float, float]:
    """Cos#2's ``(scale, offset)`` at ``step``: xi_t = sig(scale * D_t) + offset, scale = 2 c_t,
    offset = sig(4 a_t) - 0.5 (the eager step and the fused kernels both read it here)."""
    a, c = cyclic_terms(step, period)
    return 2.0 * c, 1.0 / (1.0 + math.exp(-4.0 * a)) - 0.5


def friction_cos2(grads, exp_avg_sqs, prev_grads, step, period):  # noqa: ANN001, ARG001
    """Cos#2: xi_t = sig(2 c_t D_t) + sig(4 a_t) - 0.5."""
    scale, offset = cos2_terms(step, period)
    xi = normalised_distance(dgrad_distance(grads, exp_avg_sqs), scale)
    torch._foreach_sigmoid_(xi)
    torch._foreach_add_(xi, offset)
    return xi


FRICTIONS: dict[str, FrictionFn] = {
    "adam": friction_adam,
    "diffgrad": friction_diffgrad,
    "dgrad": friction_dgrad,
    "cos1": friction_cos1,
    "cos2": friction_cos2,
}
NEEDS_PREVIOUS_GRAD = frozenset({"diffgrad"})


# (scale, offset) of xi = sig(scale * D) + offset for the fused kernels (diffGrad's scale is unused)
FUSED_SCALES: dict[str, Callable[[int, int], tuple[float, float]]] = {
    "diffgrad": lambda step, period: (1.0, 0.0),
    "dgrad": lambda step, period: (4.0, 0.0),
    "cos1": lambda step, period: (4.0 * cyclic_terms(step, period)[1], 0.0),
    "cos2": cos2_terms,
}


# --------------------------------------------------------------------------- #
# The optimizer.
# --------------------------------------------------------------------------- #
class DiffGradFamily(Optimizer):
    """Adam-like optimizer whose step is scaled element-wise by a friction ``xi_t``.

    Args:
        params: parameters or param groups.
        lr: global learning rate (the paper's 0.001).
        betas: decay rates of the first and second moments.
        eps: added to ``sqrt(v^)``.
        weight_decay: L2 coefficient. Coupled by default (added to the gradient
            before the moments, as MATLAB and the reference diffGrad do), so
            ``g_t`` in the friction already includes it.
        decoupled: apply ``weight_decay`` AdamW-style instead (``p *= 1 - lr*wd``).
        friction: one of :data:`FRICTIONS` (``adam``, ``diffgrad``, ``dgrad``,
            ``cos1``, ``cos2``).
        period: period P of the cyclic terms of Cos#1/Cos#2 (30 in the seed).
        fused: run the step in the hand-fused CPU kernels of :mod:`.fused` (one or two
            passes over memory instead of a dozen) where the tensors are CPU float32 and
            contiguous; elsewhere the eager ``_foreach`` chain. The registry turns it on
            for diffGrad, DGrad, Cos#1 and Cos#2.
        compile: run the eager step through ``torch.compile`` instead (GPU, or CPU
            tensors that cannot be fused). The first step pays the compilation.

    See the module docstring for the SPEC's interpretation choices.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled: bool = False,
        friction: str = "dgrad",
        period: int = 30,
        fused: bool = False,
        compile: bool = False,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid betas: {betas} (each must be in [0, 1))")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if friction not in FRICTIONS:
            raise ValueError(f"Unknown friction {friction!r}; expected one of {sorted(FRICTIONS)}")
        if period < 1:
            raise ValueError(f"Invalid period: {period} (must be >= 1)")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            decoupled=decoupled,
            friction=friction,
            period=period,
            fused=fused,
        )
        super().__init__(params, defaults)
        self._step_fn = torch.compile(_multi_tensor_step) if compile else _multi_tensor_step

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        """Collect the group's tensors that have gradients, creating state lazily."""
        params, grads, exp_avgs, exp_avg_sqs, prev_grads, steps = [], [], [], [], [], []
        keep_prev = group["friction"] in NEEDS_PREVIOUS_GRAD
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} ({group['friction']}) does not support sparse "
                    "gradients; use a dense embedding or torch.optim.SparseAdam"
                )
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if keep_prev and "prev_grad" not in state:
                state["prev_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
            if keep_prev:
                prev_grads.append(state["prev_grad"])
        return params, grads, exp_avgs, exp_avg_sqs, prev_grads, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, prev_grads, steps = self._init_group(group)
            if not params:
                continue
            # Tensors of one group can live on several devices/dtypes; foreach ops
            # need them grouped, exactly as torch's optimizers do.
            grouped = Optimizer._group_tensors_by_device_and_dtype(
                [params, grads, exp_avgs, exp_avg_sqs, steps] + ([prev_grads] if prev_grads else [])
            )
            for (_device, _dtype), (tensors, _) in grouped.items():
                # Step counters are CPU tensors: incrementing and reading them never
                # syncs a GPU. Tensors that joined late (no grad earlier) have their
                # own count, so each distinct count is updated as its own bucket.
                torch._foreach_add_(tensors[4], 1.0)
                counts = [int(s.item()) for s in tensors[4]]
                for step in sorted(set(counts)):
                    idx = [i for i, c in enumerate(counts) if c == step]
                    lists = [[lst[i] for i in idx] for lst in tensors]
                    prev = lists[5] if prev_grads else []
                    if (
                        group.get("fused")
                        and group["friction"] in FUSED_SCALES
                        and fused.can_fuse([t for lst in lists[:4] + [prev] for t in lst])
                    ):
                        scale, offset = FUSED_SCALES[group["friction"]](step, group["period"])
                        fused.fused_step(
                            params=lists[0],
                            grads=lists[1],
                            exp_avgs=lists[2],
                            exp_avg_sqs=lists[3],
                            prev_grads=prev,
                            step=step,
                            group=group,
                            scale=scale,
                            offset=offset,
                        )
                    else:
                        self._step_fn(*lists[:4], prev, step, group)
        return loss


def _multi_tensor_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    prev_grads: list[Tensor],
    step: int,
    group: dict[str, Any],
) -> None:
    """One update of the diffGrad family over same-device tensors at optimizer step ``step``."""
    beta1, beta2 = group["betas"]
    lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]

    if weight_decay != 0:
        if group["decoupled"]:
            torch._foreach_mul_(params, 1.0 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)

    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)

    xi = FRICTIONS[group["friction"]](grads, exp_avg_sqs, prev_grads, step, group["period"])

    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
    # m^ / (sqrt(v / bc2) + eps) == bc2_sqrt * m^ / (sqrt(v) + eps * bc2_sqrt): folding the
    # correction into two scalars saves one pass over every tensor.
    step_size = first_moment_step_size(lr, bias_correction1) * bias_correction2_sqrt

    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps * bias_correction2_sqrt)
    if xi is None:
        torch._foreach_addcdiv_(params, exp_avgs, denom, -step_size)
    else:
        torch._foreach_mul_(xi, exp_avgs)
        torch._foreach_addcdiv_(params, xi, denom, -step_size)
