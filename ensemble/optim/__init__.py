"""Optimizers of the papers (SPEC §3): one registry, one ``build``."""

from .diffgrad import FRICTIONS, DiffGradFamily, cyclic_terms
from .registry import REGISTRY, OptimInfo, build, get, normalise_name, resolve
from .schedules import CLMR, TASO, taso_lr, triangle

__all__ = [
    "CLMR",
    "FRICTIONS",
    "REGISTRY",
    "TASO",
    "DiffGradFamily",
    "OptimInfo",
    "build",
    "cyclic_terms",
    "get",
    "normalise_name",
    "resolve",
    "taso_lr",
    "triangle",
]
