"""Training augmentation. Test images are never augmented.

* Classification (SPEC §2): random reflection on both axes and an independent random scale in
  [1, 2] on x and y -- :func:`augment_batch`, batched in torch on the training device (CPU or
  GPU), drawing its random numbers from a CPU generator, so a member is the same on either.
* Segmentation (the lightweight U-Net paper): flips, rotation, scale, translation and shear
  applied to image and mask together -- :func:`segmentation_transform`, albumentations per
  image (nearest-neighbour for the mask, so no class value is invented).
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

SCALE = (1.0, 2.0)


# the paper names the kinds, not their ranges: moderate ones that keep a lesion in view
SEG_AFFINE = {"rotate": (-15, 15), "scale": (0.9, 1.1), "translate_percent": (-0.1, 0.1), "shear": (-8, 8)}


def segmentation_transform(kind: str = "paper") -> A.Compose:
    """``paper``: flips, then rotation/scale/translation/shear (:data:`SEG_AFFINE`); ``flips``; ``none``."""
    steps = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)] if kind in ("paper", "flips") else []
    if kind == "paper":
        steps.append(A.Affine(**SEG_AFFINE, interpolation=1, mask_interpolation=0, border_mode=0, p=1.0))
    return A.Compose(steps)


def augment_pair(transform: A.Compose, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``transform`` to an image and its mask with a seed of their own, so the result depends on
    nothing else (not on DataLoader workers, nor on what ran before a resume)."""
    transform.set_random_seed(seed)
    out = transform(image=image, mask=mask)
    return out["image"], out["mask"]


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
