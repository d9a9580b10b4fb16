"""The segmentation task."""

from __future__ import annotations

from .base import Task


class SegmentationTask(Task):
    name = "segmentation"

    # ------------------------------------------------------------------ training (the trainer asks these)

    # ------------------------------------------------------------------ store, fusion, report, predict


SEGMENTATION = SegmentationTask()
