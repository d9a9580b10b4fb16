"""The classification task."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..data.dataset import Dataset
    from ..train.trainer import EpochBatches, FoldTrainer


class ClassificationTask(Task):
    name = "classification"

    # ------------------------------------------------------------------ training (the trainer asks these)
    default_loss = "ce"

    def targets(self, ds: Dataset, indices: np.ndarray) -> np.ndarray:
        """The class index of each image."""
        return ds.labels[indices]

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, *, name: str, class_weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Cross-entropy, weighted by ``class_weights`` when ``--class-weights balanced`` gave them."""
        from ..train.losses import classification_loss

        return classification_loss(logits.float(), targets, name, weight=class_weights)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Images whose highest logit is their class."""
        return (logits.argmax(1) == targets).sum()

    def validation(self, probs: np.ndarray, targets: np.ndarray, *, loss: str, select: str) -> tuple[float, float]:
        """The loss is the negative log-likelihood; the score is the AUC under ``best-val-auc`` (the accuracy
        where the AUC is undefined: a class missing from the split) and minus the loss otherwise."""
        import math

        import numpy as np

        from ..auc import auc

        p = np.clip(probs[np.arange(len(targets)), targets], 1e-12, None)
        nll = -float(np.mean(np.log(p)))
        if select == "best-val-auc":
            value = auc(targets, probs)
            return (value if math.isfinite(value) else float((probs.argmax(1) == targets).mean())), nll
        return -nll, nll

    def training_batches(self, trainer: FoldTrainer, gpu_images: torch.Tensor | None) -> EpochBatches:
        """Whole batches gathered and augmented in torch on the training device (no worker processes)."""
        return trainer.device_batches(gpu_images)

    # ------------------------------------------------------------------ store, fusion, report, predict


CLASSIFICATION = ClassificationTask()
