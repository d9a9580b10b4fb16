"""``ens train --log tensorboard``: each fold's loss, accuracy and learning rate per epoch as TensorBoard
event files, ``<run>/tensorboard/fold-<k>/``, written in the run's staging folder so they are published
with the member. Run-only: what is logged never changes what a member learns."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ..errors import UsageError

LOGS = ("none", "tensorboard")
TAGS = {"loss": "train/loss", "accuracy": "train/accuracy", "lr": "train/lr"}  # curve -> scalar tag


def check_available(log: str) -> None:
    """Refuse ``--log tensorboard`` before any work when the tensorboard package is missing."""
    if log == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise UsageError('--log tensorboard needs the tensorboard package: pip install "ens[tensorboard]"')


class EpochLog:
    """A fold's TensorBoard writer, opened at the first epoch it logs (a resumed fold drops what was logged
    after its checkpoint's epoch, so the curves stay those of the member)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.writer: Any = None

    def __call__(self, epoch: int, values: dict[str, float]) -> None:
        if self.writer is None:
            check_available("tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self.folder.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.folder), purge_step=epoch or None)
        for key, tag in TAGS.items():
            if key in values:
                self.writer.add_scalar(tag, values[key], epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
