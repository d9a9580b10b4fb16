"""The optimizers against independent float64 numpy implementations written from SPEC §3."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from ensemble.optim import REGISTRY, build, get

SHAPES = [(7,), (4, 5), (3, 2, 3, 3), (1,)]
FAMILY = ["adam", "diffgrad", "dgrad", "cos1", "cos2"]


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def cyc(t, period=30):
    a = abs(math.cos(math.pi * t / period)) * math.exp(-0.01 * (t % period + 1))
    return max(a, 9e-4), max(2 - a, 9e-4)


def reference_run(name, theta0, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    """Plain float64 loop over steps, one tensor, straight from the SPEC table."""
    theta = theta0.astype(np.float64).copy()
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    g_prev = np.zeros_like(theta)
    out = []
    for t, g_raw in enumerate(grads, start=1):
        g = g_raw.astype(np.float64) + wd * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh = m / (1 - b1**t)
        vh = v / (1 - b2**t)
        A = np.abs(g - v)
        D = A / A.max() if A.max() > 0 else np.zeros_like(A)
        a, c = cyc(t)
        xi = {
            "adam": np.ones_like(g),
            "diffgrad": sig(np.abs(g_prev - g)),
            "dgrad": sig(4 * D),
            "cos1": sig(4 * c * D),
            "cos2": sig(2 * c * D) + sig(4 * a) - 0.5,
        }[name]
        g_prev = g
        theta = theta - lr * xi * mh / (np.sqrt(vh) + eps)
        out.append(theta.copy())
    return out


def make_problem(seed, steps):
    rng = np.random.default_rng(seed)
    thetas = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [[rng.normal(scale=0.1, size=s).astype(np.float32) for _ in range(steps)] for s in SHAPES]
    return thetas, grads


@pytest.mark.parametrize("wd", [0.0, 1e-4])
@pytest.mark.parametrize("name", FAMILY)
def test_family_follows_spec_over_100_steps(name, wd):
    steps = 100
    thetas, grads = make_problem(0, steps)
    params = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in thetas]
    opt, sched = build(name, params, epochs=1, steps_per_epoch=steps, lr=1e-2, weight_decay=wd)
    assert sched is None
    refs = [reference_run(name, t, g, lr=1e-2, wd=wd) for t, g in zip(thetas, grads)]
    for step in range(steps):
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g[step])
        opt.step()
        for p, ref, theta0 in zip(params, refs, thetas):
            moved = ref[step] - theta0
            err = np.abs(p.detach().numpy() - ref[step]).max()
            # relative to how far the parameter has moved, which is what the optimizer computed
            assert err <= 1e-4 * max(np.abs(moved).max(), 1e-12) + 1e-7, (name, step, err)


def test_adam_equals_torch_adam():
    thetas, grads = make_problem(1, 30)
    ours = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in thetas]
    theirs = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in thetas]
    opt, _ = build("Adam", ours, epochs=1, steps_per_epoch=1, lr=3e-3, weight_decay=1e-2)
    ref = torch.optim.Adam(theirs, lr=3e-3, weight_decay=1e-2, foreach=True)
    for step in range(30):
        for a, b, g in zip(ours, theirs, grads):
            a.grad = torch.from_numpy(g[step].copy())
            b.grad = torch.from_numpy(g[step].copy())
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_diffgrad_equals_torch_optimizer_diffgrad():
    torch_optimizer = pytest.importorskip("torch_optimizer")
    thetas, grads = make_problem(2, 50)
    ours = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in thetas]
    theirs = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in thetas]
    opt, _ = build("diffGrad", ours, epochs=1, steps_per_epoch=1, lr=1e-2, weight_decay=1e-4)
    ref = torch_optimizer.DiffGrad(theirs, lr=1e-2, weight_decay=1e-4)
    for step in range(50):
        for a, b, g in zip(ours, theirs, grads):
            a.grad = torch.from_numpy(g[step].copy())
            b.grad = torch.from_numpy(g[step].copy())
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_equals_torch_sgd(nesterov):
    thetas, grads = make_problem(3, 20)
    ours = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in thetas]
    theirs = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in thetas]
    opt, sched = build(
        "sgd", ours, epochs=1, steps_per_epoch=1, lr=0.05, momentum=0.8, nesterov=nesterov, weight_decay=1e-4
    )
    assert sched is None
    ref = torch.optim.SGD(theirs, lr=0.05, momentum=0.8, nesterov=nesterov, weight_decay=1e-4)
    for step in range(20):
        for a, b, g in zip(ours, theirs, grads):
            a.grad = torch.from_numpy(g[step].copy())
            b.grad = torch.from_numpy(g[step].copy())
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILY)
def test_state_dict_resume_is_identical(name):
    thetas, grads = make_problem(4, 40)

    def run(split: int | None):
        params = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in thetas]
        opt, _ = build(name, params, epochs=1, steps_per_epoch=1, lr=1e-2, weight_decay=1e-4)
        for step in range(40):
            if step == split:
                saved = copy.deepcopy(opt.state_dict())
                values = [p.detach().clone() for p in params]
                params = [torch.nn.Parameter(v) for v in values]
                opt, _ = build(name, params, epochs=1, steps_per_epoch=1, lr=1e-2, weight_decay=1e-4)
                opt.load_state_dict(saved)
            for p, g in zip(params, grads):
                p.grad = torch.from_numpy(g[step].copy())
            opt.step()
        return [p.detach() for p in params]

    for a, b in zip(run(None), run(17)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_closure_is_called_and_its_loss_returned():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt, _ = build("dgrad", [w], epochs=1, steps_per_epoch=1, lr=0.1)
    calls = []

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        calls.append(loss.item())
        return loss

    loss = opt.step(closure)
    assert calls == [5.0]
    assert loss.item() == 5.0
    assert w.abs().sum().item() < 3.0  # it moved downhill


def test_sparse_gradients_are_refused():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt, _ = build("cos2", emb.parameters(), epochs=1, steps_per_epoch=1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


def test_parameter_joining_late_gets_its_own_step_count():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    opt, _ = build("adam", [a, b], epochs=1, steps_per_epoch=1, lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    b.grad = torch.ones(3)
    a.grad = torch.ones(3)
    opt.step()
    assert opt.state[a]["step"].item() == 2 and opt.state[b]["step"].item() == 1
    # b's first step is bias-corrected like any first Adam step: exactly lr * sign(g)
    torch.testing.assert_close(b.detach(), torch.full((3,), 0.9), rtol=0, atol=1e-6)


def test_names_are_case_insensitive_and_unknown_lists_valid():
    assert get("Cos#1").label == "Cos1" and get("DGRAD").label == "DGrad" and get("cos_2").label == "Cos2"
    with pytest.raises(ValueError) as err:
        get("rmsprop")
    for label in REGISTRY:
        assert label in str(err.value)


def test_unknown_override_is_refused():
    with pytest.raises(ValueError, match="does not accept momentum"):
        build("dgrad", [torch.nn.Parameter(torch.ones(1))], epochs=1, steps_per_epoch=1, momentum=0.5)


# ----------------------------------------------------------------- schedules
def tri(i, lo, hi, T):
    p = (i % T) / T
    return lo + (hi - lo) * (2 * p if p < 0.5 else 2 - 2 * p)


def lrs_over(name, iters, **kw):
    w = torch.nn.Parameter(torch.zeros(2))
    opt, sched = build(name, [w], **kw)
    out = []
    for _ in range(iters):
        out.append((opt.param_groups[0]["lr"], opt.param_groups[0].get("momentum")))
        w.grad = torch.ones(2)
        opt.step()
        sched.step()
    return opt, out


def test_clmr_lr_and_momentum_follow_triangles():
    It = 7
    opt, values = lrs_over("clmr", 3 * 4 * It + 5, epochs=20, steps_per_epoch=It, c_lr=4, c_mr=2)
    assert opt.param_groups[0]["nesterov"] is True
    for i in [0, 1, 13, 14, 27, 28, 55, 60, 3 * 4 * It + 4]:
        lr, mr = values[i]
        assert lr == pytest.approx(tri(i, 5e-4, 5e-2, 4 * It), rel=1e-12)
        assert mr == pytest.approx(tri(i, 0.85, 0.95, 2 * It), rel=1e-12)
    assert values[0] == (pytest.approx(5e-4), pytest.approx(0.85))
    assert values[2 * It][0] == pytest.approx(5e-2)  # peak half-way through the lr period


def test_taso_lr_follows_sigmoid():
    It, E = 5, 20
    opt, values = lrs_over("taso", It * E, epochs=E, steps_per_epoch=It, lr=0.1)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["nesterov"] is False
    for i in [0, 10, 69, 70, 71, 99]:
        expected = 0.1 / (1 + math.exp(25 * ((i + 1) / (It * E) - 0.7))) + 0.1 / 20
        assert values[i][0] == pytest.approx(expected, rel=1e-12)


def test_schedule_scales_head_group():
    body = torch.nn.Parameter(torch.zeros(2))
    head = torch.nn.Parameter(torch.zeros(2))
    groups = [{"params": [body]}, {"params": [head], "lr_scale": 20.0}]
    opt, sched = build("taso", groups, epochs=2, steps_per_epoch=3, lr=0.01)
    assert opt.param_groups[1]["lr"] == pytest.approx(20 * opt.param_groups[0]["lr"])


@pytest.mark.parametrize("name", ["dgrad", "cos1", "cos2"])
def test_all_zero_gradient_gives_zero_distance_not_nan(name):
    # a tensor whose gradient is exactly 0 (an unused bias) has max(A) == 0: D must be 0
    w = torch.nn.Parameter(torch.ones(4))
    z = torch.nn.Parameter(torch.ones(3))
    opt, _ = build(name, [w, z], epochs=1, steps_per_epoch=1, lr=0.1)
    for _ in range(3):
        w.grad = torch.ones(4)
        z.grad = torch.zeros(3)
        opt.step()
    assert torch.isfinite(w).all() and torch.isfinite(z).all()
    torch.testing.assert_close(z.detach(), torch.ones(3))


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("name", ["diffgrad", "dgrad", "cos1", "cos2"])
def test_fused_step_equals_the_eager_step_to_rounding_and_ignores_threads(name, decoupled):
    """The hand-fused kernels against the eager _foreach chain (fused=false), 40 steps, tensors large enough
    for the parallel kernels; at 1 and 2 threads the fused result is bit for bit the same."""
    from ensemble.optim import DiffGradFamily, fused

    assert fused.available()
    shapes = [(3, 70, 20, 20), (fused.PARALLEL_MIN_SIZE + 3,), (5,)]
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) * 0.1 for s in shapes] for _ in range(40)]

    def run(fused_step: bool, threads: int) -> list[torch.Tensor]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            params = [torch.nn.Parameter(t.clone()) for t in start]
            opt = DiffGradFamily(
                params, lr=1e-2, weight_decay=1e-3, decoupled=decoupled, friction=name, fused=fused_step
            )
            for step in grads:
                for p, g in zip(params, step):
                    p.grad = g.clone()
                opt.step()
            return [p.detach().clone() for p in params]
        finally:
            torch.set_num_threads(before)

    eager, one, two = run(False, 1), run(True, 1), run(True, 2)
    for e, a, b in zip(eager, one, two):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
        assert torch.equal(a, b)


def test_recipe_of_the_eager_step_has_no_fused_key():
    """Members trained before the fused kernels keep their recipe: fused=false is recorded as its absence."""
    from ensemble.optim import resolve

    assert resolve("dgrad")["fused"] is True
    assert "fused" not in resolve("adam")


@pytest.mark.parametrize("name", ["diffgrad", "dgrad"])
def test_serial_and_parallel_kernels_agree_bit_for_bit(name, monkeypatch):
    """Which kernel runs depends on a tensor's size only; both give the same bits, so a member does not
    change with the split of its tensors into small and large."""
    from ensemble.optim import DiffGradFamily, fused

    gen = torch.Generator().manual_seed(1)
    start = torch.randn(4099, generator=gen)
    grads = [torch.randn(4099, generator=gen) * 0.1 for _ in range(10)]

    def run(min_size: int) -> torch.Tensor:
        monkeypatch.setattr(fused, "PARALLEL_MIN_SIZE", min_size)
        param = torch.nn.Parameter(start.clone())
        opt = DiffGradFamily([param], lr=1e-2, weight_decay=1e-3, friction=name, fused=True)
        for g in grads:
            param.grad = g.clone()
            opt.step()
        return param.detach().clone()

    assert torch.equal(run(0), run(1 << 60))


def test_fused_step_keeps_torch_thread_count():
    """numba's OpenMP layer sets the process's OpenMP thread count when it starts; the fused step must not
    let that change the --threads that torch trains with (a fresh process: the layer starts once)."""
    import os
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from ensemble.optim import build\n"
        "p = torch.nn.Parameter(torch.zeros(1 << 17)); opt, _ = build('dgrad', [p], epochs=1, steps_per_epoch=1)\n"
        "p.grad = torch.ones_like(p); opt.step(); opt.step()\n"
        "print(torch.get_num_threads())"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NUMBA_NUM_THREADS": "2"},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1"


def test_every_setting_is_typed_and_every_default_passes_its_type():
    from ensemble.optim import SETTINGS

    for info in REGISTRY.values():
        for key, value in info.defaults.items():
            assert key in SETTINGS, (info.label, key)
            if value is not None:
                assert info.check(key, value) == value, (info.label, key)


@pytest.mark.parametrize(
    ("name", "setting", "value", "words"),
    [
        ("sgd", "momentum", -5, "must be at least 0"),
        ("sgd", "lr", [1, 2], "one value is expected"),
        ("adam", "betas", (0.9, 1.0), "must be less than 1"),
        ("adam", "eps", 0.0, "must be greater than 0"),
        ("dgrad", "weight_decay", float("nan"), "not a finite number"),
        ("cos1", "period", 2.5, "not a valid integer"),
        ("clmr", "max_mr", 1.5, "must be less than 1"),
    ],
)
def test_build_refuses_a_setting_out_of_its_range(name, setting, value, words):
    with pytest.raises(ValueError, match=f"{setting}: .*{words}"):
        build(name, [torch.nn.Parameter(torch.ones(1))], epochs=1, steps_per_epoch=1, **{setting: value})
