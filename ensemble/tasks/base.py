"""What every task provides; :mod:`.classification` and :mod:`.segmentation` fill it in."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the package imports no torch at import time (the CLI reads it for quick usage errors)
    import numpy as np
    import torch

    from ..data.dataset import Dataset
    from ..train.trainer import EpochBatches, FoldTrainer


class Task:
    """One task. Subclasses are stateless singletons (``CLASSIFICATION``, ``SEGMENTATION``).

    Methods are grouped by who asks: the trainer (targets, loss, epoch metric, validation),
    the store (fold files), fusion and compare (scores), the report (summaries), predict (writers).
    """

    name: str = ""

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ------------------------------------------------------------------ training (the trainer asks these)
    default_loss: str = ""  # what ``--loss auto`` trains on

    def loss_name(self, configured: str) -> str:
        """The loss a fold trains on: ``configured``, with ``auto`` read as this task's default."""
        return self.default_loss if configured == "auto" else configured

    def targets(self, ds: Dataset, indices: np.ndarray) -> np.ndarray:
        """What the predictions of ``indices`` are scored against (and a fold file stores as its targets)."""
        raise NotImplementedError

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, *, name: str, class_weights: torch.Tensor | None
    ) -> torch.Tensor:
        """The training loss of one batch (float32, whatever the autocast dtype); ``class_weights`` are the
        balanced weights of ``--class-weights`` or None, for a task whose loss can weigh classes."""
        raise NotImplementedError

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch's correct predictions as a 0-d tensor on the device (no host sync): the epoch's accuracy
        curve is the sum of hits over the sum of ``targets.numel()``."""
        raise NotImplementedError

    def validation(self, probs: np.ndarray, targets: np.ndarray, *, loss: str, select: str) -> tuple[float, float]:
        """(score, loss) of the validation split's probabilities: the score is higher-is-better and picks the
        kept epoch under ``--select``; the loss is what ``--plateau`` watches."""
        raise NotImplementedError

    def training_batches(self, trainer: FoldTrainer, gpu_images: torch.Tensor | None) -> EpochBatches:
        """How the fold's training batches are made: made once per fold, then called once per epoch with that
        epoch's batches of indices and per-position augmentation seeds; ``gpu_images`` are the dataset's
        images when they live on the GPU."""
        raise NotImplementedError

    # ------------------------------------------------------------------ store, fusion, report, predict
