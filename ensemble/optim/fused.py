"""Hand-fused CPU step of the diffGrad family: one or two passes over memory per tensor.

The eager step (:func:`ensemble.optim.diffgrad._multi_tensor_step`) chains a dozen
``torch._foreach_*`` kernels, each a full pass over every parameter; on a CPU, where the
step is bound by memory traffic, DGrad then costs twice Adam. Here the same arithmetic runs
in numba kernels compiled once per machine (``cache=True`` keeps the machine code on disk
beside this module, or in numba's user-wide cache when that is read-only):

* diffGrad: one pass (moments, friction, update);
* DGrad, Cos#1, Cos#2: a first pass updates the moments and finds ``max |g - v|`` (a max
  is exact in any order), a second applies the friction and the update.

Every element is computed on its own, in float32 like the eager path, so the result does
not depend on the number of threads. It differs from the eager chain only by float rounding
(the reference tests of SPEC §3 hold for both). Tensors that are not CPU float32 and
contiguous take the eager path.
"""

from __future__ import annotations

import math
import threading
import types

import numpy as np
import torch
from torch import Tensor

try:  # numba is a dependency; without it (or on a platform it lacks) the eager path is used
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

_LOCK = threading.Lock()  # numba's default threading layer must not be entered from two threads at once


def available() -> bool:
    return numba is not None


def can_fuse(tensors: list[Tensor]) -> bool:
    """Whether every tensor can be handed to the kernels as a flat float32 numpy view."""
    return available() and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors
    )


PARALLEL_MIN_SIZE = 1 << 16  # smaller tensors: a parallel launch costs more than it saves


def _moments_max(p, g, m, v, decay, wd, w1, b2, w2):  # noqa: ANN001, ANN202
    """Pass 1 of DGrad/Cos: decay, moments; returns max |g' - v| (g' the L2-coupled gradient)."""
    top = np.float32(0.0)
    for i in prange(p.size):
        pi = p[i] * decay
        p[i] = pi
        gi = g[i] + wd * pi
        mi = m[i]
        m[i] = mi + w1 * (gi - mi)
        vi = v[i] * b2 + w2 * gi * gi
        v[i] = vi
        top = max(top, abs(gi - vi))
    return top


def _dgrad_update(p, g, m, v, wd, factor, offset, step_size, eps):  # noqa: ANN001, ANN202
    """Pass 2 of DGrad/Cos: xi = sig(factor * |g' - v|) + offset, then the Adam-like update."""
    one = np.float32(1.0)
    for i in prange(p.size):
        pi = p[i]
        vi = v[i]
        d = abs(g[i] + wd * pi - vi) * factor
        xi = one / (one + np.exp(-d)) + offset
        p[i] = pi - step_size * (xi * m[i]) / (np.sqrt(vi) + eps)


def _diffgrad_step(p, g, m, v, prev, decay, wd, w1, b2, w2, step_size, eps):  # noqa: ANN001, ANN202
    """diffGrad in one pass: moments, xi = sig(|g_{t-1} - g_t|), update; g_t kept for the next step."""
    one = np.float32(1.0)
    for i in prange(p.size):
        pi = p[i] * decay
        gi = g[i] + wd * pi
        mi = m[i] + w1 * (gi - m[i])
        m[i] = mi
        vi = v[i] * b2 + w2 * gi * gi
        v[i] = vi
        xi = one / (one + np.exp(-abs(prev[i] - gi)))
        prev[i] = gi
        p[i] = pi - step_size * (xi * mi) / (np.sqrt(vi) + eps)


def _renamed(fn, suffix: str):  # noqa: ANN001, ANN202
    """A copy of ``fn`` under another name, so numba caches its two compilations in two files."""
    copy = types.FunctionType(fn.__code__.replace(co_name=fn.__name__ + suffix), fn.__globals__, fn.__name__ + suffix)
    copy.__qualname__ = fn.__qualname__ + suffix
    return copy


KERNELS = (_moments_max, _dgrad_update, _diffgrad_step)
if numba is not None:
    # each kernel twice: one loop on the calling thread (small tensors, where a parallel launch costs more
    # than it saves), one split over numba's threads -- its parfor code is also the faster loop on one thread
    # (2x on the update pass here). Same results bit for bit: every element is computed on its own and the
    # max is exact in any order, so the choice depends on the tensor's size only, never on the threads.
    SERIAL = {fn.__name__: njit(cache=True, nogil=True)(_renamed(fn, "_serial")) for fn in KERNELS}
    PARALLEL = {fn.__name__: njit(parallel=True, cache=True, nogil=True)(fn) for fn in KERNELS}


def _set_numba_threads(threads: int) -> None:
    """``numba.set_num_threads``, keeping torch's intra-op thread count.

    numba's OpenMP layer, when the first call starts it, sets the process-wide OpenMP count to
    NUMBA_NUM_THREADS; torch's convolutions read that same count, so without this a run under
    ``--threads 1`` would train on every core from its second step on (and its member would not be
    what its command reproduces)."""
    torch_threads = torch.get_num_threads()
    numba.set_num_threads(threads)
    if torch.get_num_threads() != torch_threads:  # only on the call that started the layer
        torch.set_num_threads(torch_threads)


def _flat(t: Tensor) -> np.ndarray:
    return t.detach().view(-1).numpy()


def fused_step(
    *,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    prev_grads: list[Tensor],
    step: int,
    group: dict,
    scale: float,
    offset: float,
) -> None:
    """One step over CPU float32 tensors; ``scale``/``offset`` are the friction's (DGrad: 4, 0)."""
    f32 = np.float32
    beta1, beta2 = group["betas"]
    lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
    decoupled = group["decoupled"]
    decay = f32(1.0 - lr * weight_decay) if decoupled and weight_decay else f32(1.0)
    wd = f32(0.0 if decoupled else weight_decay)
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
    step_size = f32(lr / (1.0 - beta1**step) * bias_correction2_sqrt)
    eps_adj = f32(eps * bias_correction2_sqrt)
    w1, b2, w2 = f32(1.0 - beta1), f32(beta2), f32(1.0 - beta2)
    tiny = np.finfo(np.float32).tiny * max(scale, 1.0)
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    with _LOCK:
        _set_numba_threads(threads)
        for i, p in enumerate(params):
            k = PARALLEL if p.numel() >= PARALLEL_MIN_SIZE else SERIAL
            arrays = (_flat(p), _flat(grads[i]), _flat(exp_avgs[i]), _flat(exp_avg_sqs[i]))
            if group["friction"] == "diffgrad":
                k["_diffgrad_step"](*arrays, _flat(prev_grads[i]), decay, wd, w1, b2, w2, step_size, eps_adj)
                continue
            top = max(float(k["_moments_max"](*arrays, decay, wd, w1, b2, w2)), tiny)
            factor = f32(f32(1.0 / top) * f32(scale))
            k["_dgrad_update"](*arrays, wd, factor, f32(offset), step_size, eps_adj)
