"""The segmentation task."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StoreError, UsageError
from .base import ROW_SUM_TOLERANCE, Task, check_ids, check_rows, save_npz

if TYPE_CHECKING:
    import torch

    from ..data.dataset import Dataset
    from ..learn.trainer import EpochBatches, FoldTrainer


class SegmentationTask(Task):
    name = "segmentation"

    # ------------------------------------------------------------------ training (the trainer asks these)
    default_loss = "dice"

    def targets(self, ds: Dataset, indices: np.ndarray) -> np.ndarray:
        """The mask of each image: a class index per pixel."""
        return np.asarray(ds.masks[indices])

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, *, name: str, class_weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Soft Dice or BCE + Dice of the logit maps; class weights do not apply to them."""
        from ..learn.losses import segmentation_loss

        return segmentation_loss(logits.float(), targets, name)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Pixels predicted as their class: a positive logit of a one-channel (sigmoid) network is
        foreground, else the highest channel."""
        pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
        return (pred == targets).sum()

    def validation(self, probs: np.ndarray, targets: np.ndarray, *, loss: str, select: str) -> tuple[float, float]:
        """The training loss on the stored probability maps, and minus it as the score."""
        import torch

        from ..learn.losses import segmentation_loss

        value = segmentation_loss(torch.from_numpy(probs), torch.from_numpy(targets).long(), loss, probabilities=True)
        return -float(value), float(value)

    def training_batches(self, trainer: FoldTrainer, gpu_images: torch.Tensor | None) -> EpochBatches:
        """Image and mask augmented together per image (albumentations), through a DataLoader."""
        return trainer.paired_batches()

    # ------------------------------------------------------------------ recipe
    default_recipe = "unet"

    def check_options(
        self, *, loss: str, select: str, model: str = "", stem: str = "default", class_weights: str = "none"
    ) -> None:
        from ..learn.networks import GROUP_SIZES, UNET_NAME, is_unet, unet_names

        if model and not is_unet(model):
            raise UsageError(f"--model {model}: a segmentation dataset trains a U-Net: {', '.join(unet_names())}")
        match = UNET_NAME.fullmatch(model) if model else None
        if match and match.group(2) is not None and int(match.group(2)) not in GROUP_SIZES:
            raise UsageError(f"--model {model}: the group size must be one of {', '.join(map(str, GROUP_SIZES))}")
        if stem != "default":
            raise UsageError(f"--stem {stem} is for timm ResNets; {model or 'a U-Net'} keeps its own first layer")
        if loss == "ce":
            raise UsageError("--loss ce is for classification; segmentation trains on dice or bce-dice")
        if select == "best-val-auc":
            raise UsageError("--select best-val-auc is for classification; segmentation selects on best-val-loss")

    def prediction_bytes(self, samples: int, classes: int, size: int) -> int:
        """Probability maps (float16, compressed at best 1:1 here) and masks (uint8) per image."""
        return samples * (classes * size * size * 2 + size * size + 128)

    def stamp_recipe(self, recipe: dict[str, Any], *, loss: str) -> None:
        """The loss, and the task in the dataset block (both absent from classification recipes)."""
        recipe["loss"] = loss
        recipe["dataset"]["task"] = self.name

    # ------------------------------------------------------------------ store, fusion, report, predict
    target_key = "masks"
    metric = "dice"

    def write_fold(self, path: Path, probs: np.ndarray, targets: np.ndarray, ids: np.ndarray) -> None:
        """probs (n, C, H, W) float16 and masks (n, H, W) uint8, compressed (SPEC §5)."""
        probs, masks = np.asarray(probs, dtype=np.float16), np.asarray(targets, dtype=np.uint8)
        if masks.shape != (len(probs), *probs.shape[2:]) or len(ids) != len(probs):
            raise StoreError(f"{path}: probs {probs.shape}, masks {masks.shape} and ids {len(ids)} disagree")
        save_npz(path, compressed=True, probs=probs, masks=masks, ids=np.asarray(ids, dtype=str))

    def check_fold(
        self, path: Path, probs: np.ndarray, targets: np.ndarray, ids: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Finite maps summing to 1 over the classes at every pixel, one mask and id per image."""
        masks = targets
        if probs.ndim != 4 or not np.issubdtype(probs.dtype, np.floating):
            raise StoreError(f"{path}: probs must be a 4-D float array (n, C, H, W), found {probs.dtype} {probs.shape}")
        if probs.shape[1] != n_classes:
            raise StoreError(f"{path}: probs has {probs.shape[1]} class maps but member.json lists {n_classes} classes")
        if masks.shape != (len(probs), *probs.shape[2:]) or ids.shape != (len(probs),):
            raise StoreError(f"{path}: probs {probs.shape}, masks {masks.shape} and ids {ids.shape} disagree")
        if not np.issubdtype(masks.dtype, np.integer):
            raise StoreError(f"{path}: masks must be integers, found {masks.dtype}")
        check_ids(path, ids)
        if not np.isfinite(probs).all() or (probs < 0).any():
            raise StoreError(f"{path}: probs holds NaN, inf or negative values")
        sums = probs.sum(axis=1, dtype=np.float32)
        if sums.size and np.abs(sums - 1).max() > 4 * ROW_SUM_TOLERANCE:  # float16 maps
            raise StoreError(
                f"{path}: the class maps of an image do not sum to 1 (off by {np.abs(sums - 1).max():.4f})"
            )
        if masks.size and (masks.min() < 0 or masks.max() >= n_classes):
            raise StoreError(f"{path}: masks out of range 0..{n_classes - 1} (found {masks.min()}..{masks.max()})")
        return probs.astype(np.float16), masks.astype(np.uint8), ids.astype(str)

    def check_header(self, path: Path, shapes: dict[str, tuple[int, ...]], n_classes: int) -> None:
        """probs (n, C, H, W), masks (n, H, W), ids (n,), n >= 1."""
        check_rows(path, shapes, {"probs": 4, "masks": 3, "ids": 1})
        if shapes["probs"][1] != n_classes:
            raise StoreError(
                f"{path}: probs has {shapes['probs'][1]} class maps but member.json lists {n_classes} classes"
            )
        if shapes["masks"][1:] != shapes["probs"][2:]:
            raise StoreError(f"{path}: probs {shapes['probs']} and masks {shapes['masks']} disagree")

    def fold_score(self, probs: np.ndarray, targets: np.ndarray) -> float | None:
        """Mean foreground Dice over the images."""
        if not len(targets):
            return None
        from ..fusion.segmentation import per_image

        return float(per_image(targets, probs.argmax(1), probs.shape[1])["dice"].mean())

    def member_scores(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
        """Pixel accuracy, and the mean Dice."""
        return {**super().member_scores(probs, targets), "dice": self.fold_score(probs, targets)}

    def learnt_nothing(self, ds: Any, rd: Any, summaries: list[dict[str, Any]], scores: dict) -> tuple[bool, str]:
        """No better than calling every pixel foreground (the trivial answer that finds every lesion)."""
        dice = scores["dice"]
        fg = np.asarray(ds.masks).reshape(len(ds.masks), -1) > 0
        trivial = float(np.mean(np.where(fg.any(1), 2 * fg.sum(1) / (fg.sum(1) + fg.shape[1]), 0.0)))
        if dice <= trivial + 1e-9:
            return True, (
                f"learnt nothing: mean Dice {dice:.4f} is at or below that of marking every pixel as "
                f"foreground ({trivial:.4f}); try another --lr or more --epochs"
            )
        return False, ""

    def fused_scores(
        self, targets: np.ndarray, scores: np.ndarray, fold_of: np.ndarray | None = None
    ) -> dict[str, float]:
        """Dice, IoU and HD95 per image, averaged (see :mod:`ensemble.fusion.segmentation`)."""
        from ..fusion.segmentation import segmentation_scores

        return segmentation_scores(targets, scores, fold_of)

    def check_calibration(self, calibration: str) -> None:
        if calibration != "none":
            raise UsageError(f"--calibrate {calibration}: temperature scaling is for classification members")

    def intervals(self, targets: np.ndarray, scores: np.ndarray, resamples: int) -> dict[str, float]:
        raise UsageError(
            "--ci: bootstrap intervals are for classification members; segmentation tables give "
            "the std over images (dice_std, hd95_std) and over folds"
        )

    def compare_rows(self, a: Any, b: Any, resamples: int) -> list[dict]:
        """Dice, IoU and HD95 per image of A and B, each pair put to Wilcoxon's signed-rank test."""
        from ..fusion.compare import segmentation_rows

        return segmentation_rows(a, b)

    def summarise(self, name: str, fingerprint: str, by_label: dict[str, list[Any]], step: int) -> Any:
        from ..fusion.seg_summary import summarise_segmentation

        return summarise_segmentation(name, fingerprint, by_label)

    def render_report(self, target: Path, summary: Any) -> Path:
        from ..reporting.build import segmentation_page

        return segmentation_page(target, summary)

    def check_predict(self, expression: str, masks: Path | None) -> None:
        if masks is None:
            raise UsageError(
                f"{expression} fuses segmentation members: give --masks DIR, the folder for the predicted masks"
            )

    def predict(self, members: list[Any], inputs: Any, **kw: Any) -> Any:
        from ..prediction import predict_masks

        return predict_masks(members, inputs, **kw)

    def export_notes(self) -> dict[str, str]:
        return {
            "member": " per pixel (one output channel: sigmoid p as [1 - p, p])",
            "fusion": " per pixel at the largest member size, resized bilinearly to the image, argmax = the mask "
            "(binary: 0/255, label maps: class index)",
        }


SEGMENTATION = SegmentationTask()
