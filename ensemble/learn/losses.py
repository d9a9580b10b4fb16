"""Training losses: cross-entropy for classification; for segmentation soft Dice (the lightweight
U-Net paper's choice) and BCE + Dice.

A binary network has one output channel read through a sigmoid; a multi-class one has C
channels read through a softmax, and its Dice is the mean over the foreground classes.
Soft Dice is computed per image with a smoothing of 1 (empty masks give a finite loss) and
averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("auto", "ce", "dice", "bce-dice")
SMOOTH = 1.0


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) logits -> (N, C', H, W) class probabilities, C' = 2 for one sigmoid channel."""
    if logits.shape[1] == 1:
        fg = torch.sigmoid(logits)
        return torch.cat([1 - fg, fg], dim=1)
    return torch.softmax(logits, dim=1)


def soft_dice(probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean over images of the mean foreground-class soft Dice; ``probs`` (N, C, H, W), ``masks`` (N, H, W)."""
    onehot = F.one_hot(masks, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (2, 3)
    inter = (probs[:, 1:] * onehot[:, 1:]).sum(dims)
    total = probs[:, 1:].sum(dims) + onehot[:, 1:].sum(dims)
    return ((2 * inter + SMOOTH) / (total + SMOOTH)).mean()


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, kind: str = "ce", *, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of (N, C) logits, each class weighted by ``weight`` (None: equally)."""
    if kind != "ce":
        raise ValueError(f"--loss {kind} is for segmentation; classification takes ce")
    return F.cross_entropy(logits, labels, weight=weight)


def segmentation_loss(
    output: torch.Tensor, masks: torch.Tensor, kind: str, *, probabilities: bool = False
) -> torch.Tensor:
    """``dice`` (1 - soft Dice) or ``bce-dice`` (cross-entropy + 1 - soft Dice) of logits -- or of class
    probabilities when ``probabilities`` (the validation loss, from stored predictions)."""
    if kind not in ("dice", "bce-dice"):
        raise ValueError(f"--loss {kind} is for classification; segmentation takes dice or bce-dice")
    probs = output if probabilities else class_probabilities(output)
    loss = 1 - soft_dice(probs, masks)
    if kind == "bce-dice":
        if probabilities:
            ce = F.nll_loss(torch.log(probs.clamp_min(1e-12)), masks)
        elif output.shape[1] == 1:
            ce = F.binary_cross_entropy_with_logits(output[:, 0], masks.to(output.dtype))
        else:
            ce = F.cross_entropy(output, masks)
        loss = loss + ce
    return loss
