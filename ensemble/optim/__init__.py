"""Optimizers of the papers (SPEC §3): one registry, one ``build``.

The registry (names, defaults, setting types) imports no torch; the optimizers and schedules
themselves are imported on first use, so the CLI reads the registry without loading torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .registry import REGISTRY, SETTINGS, OptimInfo, build, get, normalise_name, resolve

_LAZY = {
    "FRICTIONS": ".diffgrad",
    "DiffGradFamily": ".diffgrad",
    "cyclic_terms": ".diffgrad",
    "CLMR": ".schedules",
    "TASO": ".schedules",
    "taso_lr": ".schedules",
    "triangle": ".schedules",
}

__all__ = [
    "CLMR",
    "FRICTIONS",
    "REGISTRY",
    "SETTINGS",
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


def __getattr__(name: str) -> Any:
    """The torch-backed names, imported when first asked for (PEP 562)."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
