"""The one optimizer registry: label -> how to build it, its paper defaults, the type of every setting, its source.

The CLI, the trainer, the store and the reports all read :data:`REGISTRY`;
:func:`build` is the single door (the shape of timm's ``create_optimizer_v2``).
This module imports no torch: the entries' factories import their optimizer when one is
built, so ``ens optimizers`` and every usage error answer at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import click

from ..options import NON_NEGATIVE, POSITIVE, UNIT, FiniteFloat, Pair, check_value

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

NANNI = "Nanni, Maguolo, Lumini (2021), Exploiting Adam-like optimization algorithms to improve CNNs"
ADAM_DEFAULTS = MappingProxyType(
    {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "compile": False}
)

# The type (and so the range) of every setting an entry accepts, by name: one name means one thing
# in every optimizer. ``--set`` values and the keyword arguments of :func:`build` pass through it.
SETTINGS: Mapping[str, click.ParamType] = MappingProxyType(
    {
        "lr": POSITIVE,
        "momentum": UNIT,
        "nesterov": click.BOOL,
        "weight_decay": NON_NEGATIVE,
        "betas": Pair(UNIT),
        "eps": POSITIVE,
        "compile": click.BOOL,
        "fused": click.BOOL,
        "period": click.IntRange(min=1),
        "min_lr": POSITIVE,
        "max_lr": POSITIVE,
        "c_lr": click.IntRange(min=1),
        "min_mr": UNIT,
        "max_mr": UNIT,
        "c_mr": click.IntRange(min=1),
        "alpha": POSITIVE,
        "beta": FiniteFloat(0.0),
        "final_lr": NON_NEGATIVE,  # None: lr / 20
    }
)

Factory = Callable[[Iterable[Any], dict[str, Any]], "Optimizer"]


@dataclass(frozen=True)
class OptimInfo:
    """One registry entry.

    ``defaults`` are the paper's values for every override the entry accepts (each typed in
    :data:`SETTINGS`); ``schedule`` lists the names among them that belong to the schedule.
    ``factory`` and ``scheduler`` import torch when called, never before.
    """

    label: str
    kind: str
    paper: str
    description: str
    defaults: MappingProxyType
    factory: Factory
    schedule: tuple[str, ...] = ()
    scheduler: Callable[..., LRScheduler] | None = None

    @property
    def key(self) -> str:
        return normalise_name(self.label)

    def check(self, name: str, value: Any) -> Any:
        """``value`` for setting ``name`` as its type converts it (``None``: the default); ValueError names both."""
        if name not in self.defaults:
            raise ValueError(f"{self.label} has no setting {name!r}; its settings are {', '.join(self.defaults)}")
        if value is None:
            return None
        try:
            return check_value(value, SETTINGS[name])
        except click.BadParameter as err:
            raise ValueError(f"{self.label} {name}: {err.message}") from None


def normalise_name(name: str) -> str:
    """``Cos#1``, ``cos_1``, ``COS1`` -> ``cos1``: case, '#', '_', '-' and spaces do not matter."""
    return re.sub(r"[#_\-\s]", "", name).lower()


def _family(friction: str) -> Factory:
    def factory(params: Iterable[Any], kw: dict[str, Any]) -> Optimizer:
        from .diffgrad import DiffGradFamily

        return DiffGradFamily(params, friction=friction, **kw)

    return factory


def _sgd(**fixed: Any) -> Factory:
    """torch's SGD with ``fixed`` keyword arguments (CLMR: placeholders its schedule overwrites)."""

    def factory(params: Iterable[Any], kw: dict[str, Any]) -> Optimizer:
        import torch

        return torch.optim.SGD(params, **fixed, **kw)

    return factory


def _clmr(opt: Optimizer, epochs: int, steps: int, **kw: Any) -> LRScheduler:
    from .schedules import CLMR

    return CLMR(opt, steps, **kw)


def _taso(opt: Optimizer, epochs: int, steps: int, **kw: Any) -> LRScheduler:
    from .schedules import TASO

    return TASO(opt, steps, epochs, **kw)


def _entry(label: str, friction: str, paper: str, description: str, **extra: Any) -> OptimInfo:
    # the friction variants run the hand-fused CPU step by default (Adam's eager chain is already Adam's cost)
    defaults = dict(ADAM_DEFAULTS, **({"fused": True} if friction != "adam" else {}), **extra)
    return OptimInfo(label, "adam-like", paper, description, MappingProxyType(defaults), _family(friction))


_ENTRIES = [
    OptimInfo(
        "SGD",
        "sgd",
        "Robbins & Monro (1951); momentum as in Sutskever et al. (2013)",
        "SGD with momentum (optionally Nesterov)",
        MappingProxyType({"lr": 1e-3, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}),
        _sgd(),
    ),
    _entry("Adam", "adam", "Kingma & Ba (2015), Adam", "Adam (xi = 1)"),
    _entry(
        "diffGrad",
        "diffgrad",
        "Dubey et al. (2019), diffGrad",
        "Adam scaled by sig(|g_{t-1} - g_t|)",
    ),
    _entry("DGrad", "dgrad", NANNI, "Adam scaled by sig(4 D_t), D_t = |g - v| / max"),
    _entry("Cos1", "cos1", NANNI, "DGrad with cyclic factor: sig(4 c_t D_t)", period=30),
    _entry(
        "Cos2",
        "cos2",
        NANNI,
        "DGrad with cyclic factor: sig(2 c_t D_t) + sig(4 a_t) - 0.5",
        period=30,
    ),
    OptimInfo(
        "CLMR",
        "schedule",
        "Cyclic learning and momentum rates (Nesterov SGD), cardiac segmentation seed",
        "Nesterov SGD, lr and momentum on in-phase triangle waves",
        MappingProxyType(
            {
                "weight_decay": 0.0,
                "min_lr": 5e-4,
                "max_lr": 5e-2,
                "c_lr": 20,
                "min_mr": 0.85,
                "max_mr": 0.95,
                "c_mr": 20,
            }
        ),
        # lr and momentum are placeholders: the CLMR schedule sets both at construction.
        _sgd(lr=0.0, momentum=0.9, nesterov=True),
        schedule=("min_lr", "max_lr", "c_lr", "min_mr", "max_mr", "c_mr"),
        scheduler=_clmr,
    ),
    OptimInfo(
        "TASO",
        "schedule",
        "Training Aware Sigmoidal Optimizer (Macedo et al., 2021)",
        "SGD (momentum 0.9) with a two-phase sigmoidal learning rate",
        MappingProxyType(
            {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0, "alpha": 25.0, "beta": 0.7, "final_lr": None}
        ),
        _sgd(nesterov=False),
        schedule=("lr", "alpha", "beta", "final_lr"),
        scheduler=_taso,
    ),
]

REGISTRY: MappingProxyType = MappingProxyType({e.label: e for e in _ENTRIES})
"""label -> :class:`OptimInfo`, in the order tables list them."""

_BY_KEY = {e.key: e for e in _ENTRIES}


def get(name: str) -> OptimInfo:
    """The entry for ``name`` (case-insensitive, ``Cos#1`` == ``cos1``); lists valid names if unknown."""
    info = _BY_KEY.get(normalise_name(name))
    if info is None:
        valid = ", ".join(REGISTRY)
        raise ValueError(f"unknown optimizer {name!r}; valid names: {valid} (case-insensitive)")
    return info


def resolve(name: str, **overrides: Any) -> dict[str, Any]:
    """The entry's defaults with ``overrides`` applied, each checked by its type; an unknown override is an
    error naming the valid ones."""
    info = get(name)
    unknown = sorted(set(overrides) - set(info.defaults))
    if unknown:
        raise ValueError(f"{info.label} does not accept {', '.join(unknown)}; it accepts: {', '.join(info.defaults)}")
    settings = dict(info.defaults)
    settings.update({k: info.check(k, v) for k, v in overrides.items() if v is not None})
    if "betas" in settings:
        settings["betas"] = tuple(settings["betas"])
    return settings


def build(
    name: str,
    params: Iterable[Any],
    *,
    epochs: int,
    steps_per_epoch: int,
    **overrides: Any,
) -> tuple[Optimizer, LRScheduler | None]:
    """Build optimizer ``name`` over ``params`` and, for CLMR/TASO, its per-iteration scheduler.

    The scheduler, when there is one, is stepped once per iteration after
    ``optimizer.step()``. ``overrides`` may set ``lr``, ``weight_decay``,
    ``momentum``, ``betas``, ``eps`` and each schedule's own parameters, as the
    entry accepts them (see ``REGISTRY[label].defaults`` and :data:`SETTINGS`).
    """
    info = get(name)
    settings = resolve(name, **overrides)
    schedule_kw = {k: settings[k] for k in info.schedule}
    # lr stays with the optimizer too (TASO's lr_i is its starting value).
    opt_kw = {k: v for k, v in settings.items() if k == "lr" or k not in info.schedule}
    optimizer = info.factory(params, opt_kw)
    scheduler = None
    if info.scheduler is not None:
        scheduler = info.scheduler(optimizer, epochs, steps_per_epoch, **schedule_kw)
    return optimizer, scheduler
