"""Training augmentation of SPEC §2: random reflection on both axes and an independent
random scale in [1, 2] on x and y. Test images are never augmented.

:func:`train_transform` is the albumentations pipeline applied per image on the CPU;
:func:`augment_batch` is the same augmentation for a batch already on the GPU (data kept
on the device needs no trip back to the CPU).
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

SCALE = (1.0, 2.0)


def train_transform(kind: str = "paper") -> A.Compose:
    """``paper``: flips and x/y scale; ``flips``: the flips alone; ``none``: the image as it is."""
    steps = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)] if kind in ("paper", "flips") else []
    if kind == "paper":
        steps.append(A.Affine(scale={"x": SCALE, "y": SCALE}, keep_ratio=False, p=1.0))
    return A.Compose(steps)


def augment_image(transform: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply ``transform`` with a seed of its own, so the result depends on nothing else
    (not on DataLoader workers, nor on what ran before a resume)."""
    transform.set_random_seed(seed)
    return transform(image=image)["image"]


def augment_batch(images: torch.Tensor, generator: torch.Generator, kind: str = "paper") -> torch.Tensor:
    """Flip (each axis with p=0.5) and scale x and y independently by U(1, 2), on (N, C, H, W);
    ``flips`` leaves out the scale, ``none`` returns the images as they are."""
    if kind == "none":
        return images
    n = images.shape[0]
    dev = images.device
    scale = torch.empty(n, 2).uniform_(*SCALE, generator=generator)
    if kind == "flips":
        scale.fill_(1.0)
    flip = torch.where(torch.rand(n, 2, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    # affine_grid maps output to input coordinates: zooming in by s samples 1/s of the input
    theta[:, 0, 0] = flip[:, 0] / scale[:, 0]
    theta[:, 1, 1] = flip[:, 1] / scale[:, 1]
    grid = F.affine_grid(theta.to(dev, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
