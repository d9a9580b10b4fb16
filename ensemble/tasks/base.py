"""What every task provides; :mod:`.classification` and :mod:`.segmentation` fill it in."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StoreError, UsageError
from ..io import atomic_write_bytes

ROW_SUM_TOLERANCE = 1e-3  # a stored probability row (or pixel) sums to 1 within this

if TYPE_CHECKING:  # the package imports no torch at import time (the CLI reads it for quick usage errors)
    import torch

    from ..data.dataset import Dataset
    from ..learn.trainer import EpochBatches, FoldTrainer


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

    def strata(self, ds: Dataset, indices: np.ndarray) -> np.ndarray | None:
        """The class of each of ``indices`` that an inner validation split is stratified by; None: not stratified."""
        return ds.labels[indices]

    def output_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The network's logits as the probabilities a fold file stores: softmax over the classes (maps: one
        sigmoid channel read as two classes), see :func:`ensemble.learn.infer.to_probabilities`."""
        from ..learn.infer import to_probabilities

        return to_probabilities(logits)

    def training_batches(self, trainer: FoldTrainer, gpu_images: torch.Tensor | None) -> EpochBatches:
        """How the fold's training batches are made: made once per fold, then called once per epoch with that
        epoch's batches of indices and per-position augmentation seeds; ``gpu_images`` are the dataset's
        images when they live on the GPU. Image-level tasks (one target per image): whole batches gathered
        and augmented in torch on the training device (no worker processes)."""
        return trainer.device_batches(gpu_images)

    # ------------------------------------------------------------------ recipe (ensemble.recipe asks these)
    default_recipe: str = "paper"  # the preset `ens train` starts from for a dataset of this task

    def check_options(
        self, *, loss: str, select: str, model: str = "", stem: str = "default", class_weights: str = "none"
    ) -> None:
        """Refuse training options the task cannot train with (before any work): a loss, a selection, a network
        a stem or class weights that would fail inside every fold."""

    def prediction_bytes(self, samples: int, classes: int, size: int) -> int:
        """About what one member's stored predictions of ``samples`` samples take on disk (the disk check)."""
        return samples * (classes * 4 + 128)

    def stamp_recipe(self, recipe: dict[str, Any], *, loss: str) -> None:
        """Add the task's own keys to a member's recipe. Keys appear only where they differ from what the
        earliest (classification) members recorded, so their recipes keep their hashes."""

    # ------------------------------------------------------------------ store, fusion, report, predict
    target_key: str = "labels"  # the fold file's array of targets
    metric: str = "accuracy"  # the member-level score member.json and `ens members` show

    def write_fold(self, path: Path, probs: np.ndarray, targets: np.ndarray, ids: np.ndarray) -> None:
        """One fold's predictions as the store keeps them (SPEC §5)."""
        raise NotImplementedError

    def check_fold(
        self, path: Path, probs: np.ndarray, targets: np.ndarray, ids: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The arrays of a fold file read from disk, checked (untrusted input), in the dtypes fusion uses."""
        raise NotImplementedError

    def check_header(self, path: Path, shapes: dict[str, tuple[int, ...]], n_classes: int) -> None:
        """The shapes a fold file's .npy headers declare (``probs``, :attr:`target_key`, ``ids``), checked before
        any array is loaded: the task's layout, one row per sample, and at least one row."""
        raise NotImplementedError

    def fold_score(self, probs: np.ndarray, targets: np.ndarray) -> float | None:
        """The score of one fold's (or a whole member's) predictions: what ``metric`` names."""
        raise NotImplementedError

    def member_scores(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
        """The scores ``member.json`` records for a whole member (``accuracy``, and the task's own)."""
        return {"accuracy": float((probs.argmax(1) == targets).mean())}

    def learnt_nothing(self, ds: Any, rd: Any, summaries: list[dict[str, Any]], scores: dict) -> tuple[bool, str]:
        """Whether a finished member did no better than a trivial answer, and why (for ``member.json``)."""
        raise NotImplementedError

    def fused_scores(
        self, targets: np.ndarray, scores: np.ndarray, fold_of: np.ndarray | None = None
    ) -> dict[str, float]:
        """The metrics of a fused (or single) prediction, pooled over folds, with fold means and stds."""
        raise NotImplementedError

    def named_scores(self, targets: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict[str, float]:
        """Metrics of a fused prediction that name a class (``ens fuse``'s row adds them); none by default."""
        return {}

    def fusion_rule(self, rule: str) -> Callable[[np.ndarray], np.ndarray]:
        """The function of fusion rule ``rule`` over stacked member probabilities (``ensemble.fusion.rules``)."""
        from ..fusion.rules import RULES

        if rule not in RULES:
            raise UsageError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
        return RULES[rule]

    def check_calibration(self, calibration: str) -> None:
        """Refuse a calibration that the task's outputs do not admit."""

    def intervals(self, targets: np.ndarray, scores: np.ndarray, resamples: int) -> dict[str, float]:
        """95% bootstrap intervals of the task's metrics (``ens fuse --ci``)."""
        raise UsageError(f"--ci: bootstrap intervals are not available for {self.name} members")

    def compare_rows(self, a: Any, b: Any, resamples: int) -> list[dict]:
        """Paired tests of two fusion results on the same samples: metric, A, B, difference, test, p."""
        raise NotImplementedError

    def summarise(self, name: str, fingerprint: str, by_label: dict[str, list[Any]], step: int) -> Any:
        """Everything the report shows for one dataset version (rendered by :meth:`render_report`)."""
        raise NotImplementedError

    def render_report(self, target: Path, summary: Any) -> Path:
        """Write the tables, figures and HTML page of :meth:`summarise`'s result into ``target``."""
        raise NotImplementedError

    def check_predict(self, expression: str, masks: Path | None) -> None:
        """Refuse ``ens predict`` arguments the task cannot honour, before any work."""

    def predict(self, members: list[Any], inputs: Any, **kw: Any) -> Any:
        """``ens predict``'s table (a DataFrame) for ``inputs``; see :mod:`ensemble.prediction`."""
        raise NotImplementedError

    def export_notes(self) -> dict[str, str]:
        """What an exported ensemble's manifest says about the outputs and how they are fused."""
        raise NotImplementedError


def save_npz(path: Path, *, compressed: bool = False, **arrays: np.ndarray) -> None:
    """An npz written atomically (a reader never sees half a fold file)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def check_rows(path: Path, shapes: dict[str, tuple[int, ...]], dims: dict[str, int]) -> None:
    """Each array has its number of dimensions, the same row count, and at least one row (a fold file with no
    rows would leave its samples out of every fused score)."""
    for key, ndim in dims.items():
        if len(shapes[key]) != ndim:
            raise StoreError(f"{path}: {key} must have {ndim} dimension(s), its header declares shape {shapes[key]}")
    rows = {key: shape[0] for key, shape in shapes.items()}
    if len(set(rows.values())) != 1:
        raise StoreError(f"{path}: probs, targets and ids declare different row counts ({rows})")
    if not rows["ids"]:
        raise StoreError(f"{path}: holds no rows (a fold file predicts at least one sample)")


def check_ids(path: Path, ids: np.ndarray) -> None:
    if ids.dtype.kind not in "USiu":
        raise StoreError(f"{path}: ids must be strings (or indices), found {ids.dtype}")


def refuse_unet(model: str, dataset: str) -> None:
    """A U-Net on an image-level task would fail inside every fold: refused before any work."""
    from ..learn.networks import is_unet

    if is_unet(model):
        raise UsageError(
            f"--model {model} is a segmentation network (a U-Net); a {dataset} dataset trains a timm "
            "classifier (resnet50, resnet18, test_resnet, ...)"
        )
