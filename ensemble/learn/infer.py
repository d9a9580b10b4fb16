"""From uint8 images to softmax probabilities: the one forward pass of training's predictions and
``ens predict`` (same normalisation, same precision), so a fold model applied later reproduces
the probabilities stored when it was trained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the input normalisations a recipe names (--normalise): mean and std per channel, on [0, 1]
NORMALISATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": ((0.5,) * 3, (0.5,) * 3)}
# test-time augmentation: the image as it is, flipped left-right, flipped top-bottom, and both
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


class Normaliser:
    """uint8 NCHW batches -> normalised float batches on ``device``, channels-last on CUDA and wherever the
    member was trained so (``--memory-format``: on a CPU the layout picks the kernels, and so the last bits)."""

    def __init__(
        self,
        device: torch.device,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        *,
        channels_last: bool = False,
    ) -> None:
        self.device = device
        self.channels_last = channels_last or device.type == "cuda"
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        x = (batch_uint8.to(self.device, non_blocking=True).float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def nchw(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> (N, 3, H, W) uint8 tensor (a view where it can be)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes: (N, C) vectors, or (N, C, H, W) maps (one sigmoid channel -> 2 classes)."""
    if logits.ndim == 4:
        from .losses import class_probabilities

        return class_probabilities(logits.float())
    return torch.softmax(logits.float(), dim=1)


@torch.no_grad()
def probabilities(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    normalise: Normaliser,
    *,
    n_classes: int,
    tta: bool = False,
    autocast: bool = False,
    convert: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Softmax probabilities (float32) of every image of ``batches`` (uint8 NCHW): (N, C), or (N, C, H, W)
    for a segmentation network; with ``tta`` the mean over :data:`TTA_FLIPS` (maps flipped back). ``convert``
    turns logits into the task's probabilities (:func:`to_probabilities`, softmax, when None; a multi-label
    task's sigmoid per label)."""
    convert = convert or to_probabilities
    model.eval()
    out = []
    device = normalise.device
    for batch in batches:
        x = normalise(batch)
        views = TTA_FLIPS if tta else ((),)
        p = 0
        for dims in views:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(torch.flip(x, dims) if dims else x)
            view = convert(logits)
            p = p + (torch.flip(view, dims) if dims and view.ndim == 4 else view)
        out.append((p / len(views)).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, n_classes), np.float32)
