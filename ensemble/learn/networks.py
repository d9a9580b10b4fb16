"""The names of ens's own networks, torch-free: the task modules check ``--model`` against them before any
work (a U-Net on a classification set, a classifier on a segmentation set), and :mod:`.unet` builds them."""

from __future__ import annotations

import re

GROUP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
UNET_NAME = re.compile(r"(unet|light-unet|lighter-unet@(\d+))")


def is_unet(name: str) -> bool:
    """Whether ``name`` is one of the U-Nets (any group size; :func:`ensemble.learn.unet.unet` checks it)."""
    return UNET_NAME.fullmatch(name) is not None


def unet_names() -> list[str]:
    return ["unet", "light-unet", *(f"lighter-unet@{c}" for c in GROUP_SIZES)]
