"""The segmentation task."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..data.dataset import Dataset
    from ..train.trainer import EpochBatches, FoldTrainer


class SegmentationTask(Task):
    name = "segmentation"

    # ------------------------------------------------------------------ training (the trainer asks these)
    default_loss = "dice"

    def targets(self, ds: Dataset, indices: np.ndarray) -> np.ndarray:
        """The mask of each image: a class index per pixel."""
        import numpy as np

        return np.asarray(ds.masks[indices])

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, *, name: str, class_weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Soft Dice or BCE + Dice of the logit maps; class weights do not apply to them."""
        from ..train.losses import segmentation_loss

        return segmentation_loss(logits.float(), targets, name)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Pixels predicted as their class: a positive logit of a one-channel (sigmoid) network is
        foreground, else the highest channel."""
        pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
        return (pred == targets).sum()

    def validation(self, probs: np.ndarray, targets: np.ndarray, *, loss: str, select: str) -> tuple[float, float]:
        """The training loss on the stored probability maps, and minus it as the score."""
        import torch

        from ..train.losses import segmentation_loss

        value = segmentation_loss(torch.from_numpy(probs), torch.from_numpy(targets).long(), loss, probabilities=True)
        return -float(value), float(value)

    def training_batches(self, trainer: FoldTrainer, gpu_images: torch.Tensor | None) -> EpochBatches:
        """Image and mask augmented together per image (albumentations), through a DataLoader."""
        return trainer.paired_batches()

    # ------------------------------------------------------------------ store, fusion, report, predict


SEGMENTATION = SegmentationTask()
