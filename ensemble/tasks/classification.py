"""The classification task."""

from __future__ import annotations

from .base import Task


class ClassificationTask(Task):
    name = "classification"

    # ------------------------------------------------------------------ training (the trainer asks these)

    # ------------------------------------------------------------------ store, fusion, report, predict


CLASSIFICATION = ClassificationTask()
