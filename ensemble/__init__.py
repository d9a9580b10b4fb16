"""ens: deep ensembles of CNNs for medical image classification and segmentation.

Data flows one way: dataset sources (``ensemble.data``) -> recipe -> member trainer
(``ensemble.learn``) -> store (``ensemble.store``) -> fusion (``ensemble.fusion``) -> report,
predict and export; every task-specific step asks its task (``ensemble.tasks``). The public
Python API is :mod:`ensemble.api`, re-exported here (``import ensemble as ens; ens.fuse(...)``);
it is loaded on first use, so ``import ensemble`` stays instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.4.0"

_API = (
    "compare",
    "export",
    "fuse",
    "fuse_results",
    "inventory",
    "load_export",
    "members",
    "open_store",
    "predict",
    "report",
    "train",
    "train_config",
)

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ensemble' has no attribute {name!r}")
