"""The tasks ens learns -- classification, segmentation, multi-label -- each one module that everything else asks.

A task owns what a target is and how a dataset yields it, the loss, the per-epoch metric and
selection score, the fold-file schema and its checks, how fused predictions are scored (and
the per-sample scores the paired tests use), the report's tables and figures, and what
``ens predict`` writes. The trainer, store, runs, fusion, compare, report and predict ask
:func:`get_task`; no code outside this package branches on which task it is. A new task is
one new module here, one entry in :data:`TASKS`, and its tests.

This package imports nothing heavy (torch, timm) at import time: the CLI reads it to answer
usage errors quickly.
"""

from __future__ import annotations

from ..errors import StoreError
from .base import Task
from .classification import CLASSIFICATION
from .multilabel import MULTILABEL
from .segmentation import SEGMENTATION

TASKS: dict[str, Task] = {task.name: task for task in (CLASSIFICATION, SEGMENTATION, MULTILABEL)}

__all__ = ["TASKS", "Task", "get_task"]


def get_task(name: str) -> Task:
    """The task called ``name`` (as ``member.json`` and recipes record it)."""
    try:
        return TASKS[name]
    except KeyError:
        raise StoreError(f"unknown task {name!r}; this ens knows {', '.join(TASKS)}") from None
