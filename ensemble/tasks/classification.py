"""The classification task."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StoreError, UsageError
from .base import ROW_SUM_TOLERANCE, Task, check_ids, check_rows, refuse_unet, save_npz

if TYPE_CHECKING:
    import torch

    from ..data.dataset import Dataset


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
        from ..learn.losses import classification_loss

        return classification_loss(logits.float(), targets, name, weight=class_weights)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Images whose highest logit is their class."""
        return (logits.argmax(1) == targets).sum()

    def validation(self, probs: np.ndarray, targets: np.ndarray, *, loss: str, select: str) -> tuple[float, float]:
        """The loss is the negative log-likelihood; the score is the AUC under ``best-val-auc`` (the accuracy
        where the AUC is undefined: a class missing from the split) and minus the loss otherwise."""
        import math

        from ..auc import auc

        p = np.clip(probs[np.arange(len(targets)), targets], 1e-12, None)
        nll = -float(np.mean(np.log(p)))
        if select == "best-val-auc":
            value = auc(targets, probs)
            return (value if math.isfinite(value) else float((probs.argmax(1) == targets).mean())), nll
        return -nll, nll

    # ------------------------------------------------------------------ recipe
    default_recipe = "paper"

    def check_options(
        self, *, loss: str, select: str, model: str = "", stem: str = "default", class_weights: str = "none"
    ) -> None:
        if loss != self.default_loss:
            raise UsageError(f"--loss {loss} is for segmentation datasets (seg:PATH); classification uses ce")
        refuse_unet(model, "classification")

    # ------------------------------------------------------------------ store, fusion, report, predict
    target_key = "labels"
    metric = "accuracy"

    def write_fold(self, path: Path, probs: np.ndarray, targets: np.ndarray, ids: np.ndarray) -> None:
        """probs (n, C) float32 rows summing to 1, labels int64, ids str (SPEC §5)."""
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim != 2 or len(probs) != len(targets) or len(targets) != len(ids):
            raise StoreError(f"{path}: probs {probs.shape}, labels {len(targets)} and ids {len(ids)} disagree")
        save_npz(path, probs=probs, labels=np.asarray(targets, dtype=np.int64), ids=np.asarray(ids, dtype=str))

    def check_fold(
        self, path: Path, probs: np.ndarray, targets: np.ndarray, ids: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Finite rows summing to 1, one per label and id, labels in range."""
        labels = targets
        if probs.ndim != 2 or not np.issubdtype(probs.dtype, np.floating):
            raise StoreError(f"{path}: probs must be a 2-D float array, found {probs.dtype} {probs.shape}")
        if probs.shape[1] != n_classes:
            raise StoreError(f"{path}: probs has {probs.shape[1]} columns but member.json lists {n_classes} classes")
        if labels.ndim != 1 or ids.ndim != 1 or not (len(probs) == len(labels) == len(ids)):
            raise StoreError(
                f"{path}: probs ({len(probs)} rows), labels ({labels.shape}) and ids ({ids.shape}) disagree"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise StoreError(f"{path}: labels must be integers, found {labels.dtype}")
        check_ids(path, ids)
        if not np.isfinite(probs).all():
            raise StoreError(f"{path}: probs holds NaN or inf")
        if (probs < 0).any():
            raise StoreError(f"{path}: probs holds negative values")
        sums = probs.sum(axis=1, dtype=np.float64)
        if len(sums) and np.abs(sums - 1).max() > ROW_SUM_TOLERANCE:
            row = int(np.abs(sums - 1).argmax())
            raise StoreError(f"{path}: row {row} of probs sums to {sums[row]:.6f}, not 1")
        if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
            raise StoreError(f"{path}: labels out of range 0..{n_classes - 1} (found {labels.min()}..{labels.max()})")
        return probs.astype(np.float32), labels.astype(np.int64), ids.astype(str)

    def check_header(self, path: Path, shapes: dict[str, tuple[int, ...]], n_classes: int) -> None:
        """probs (n, C), labels (n,), ids (n,), n >= 1."""
        check_rows(path, shapes, {"probs": 2, "labels": 1, "ids": 1})
        if shapes["probs"][1] != n_classes:
            raise StoreError(
                f"{path}: probs has {shapes['probs'][1]} columns but member.json lists {n_classes} classes"
            )

    def fold_score(self, probs: np.ndarray, targets: np.ndarray) -> float | None:
        """Accuracy."""
        return float((probs.argmax(1) == targets).mean()) if len(targets) else None

    def learnt_nothing(self, ds: Any, rd: Any, summaries: list[dict[str, Any]], scores: dict) -> tuple[bool, str]:
        """No better than always answering the majority class, on held-out predictions only: the member's
        validation predictions when it has them, else its test folds (``scores["accuracy"]``, every sample
        predicted by the fold model that did not train on it). Training accuracy is never asked: a member can
        fit its training folds and still be below chance on what it did not see."""

        def majority(idx: np.ndarray) -> float:
            return float(np.bincount(ds.labels[idx], minlength=len(ds.classes)).max() / max(len(idx), 1))

        folds = range(len(ds.folds))
        if all(ds.folds[k].val is not None and rd.fold_file(k, "val").exists() for k in folds):
            accs, rates = [], []
            for k in folds:
                probs, labels, _ = rd.read_fold(k, self.name, len(ds.classes), "val")
                accs.append(float((probs.argmax(1) == labels).mean()))
                rates.append(majority(ds.folds[k].val))
            what = "validation"
            acc, rate = float(np.mean(accs)), float(np.mean(rates))
        else:
            tested = np.concatenate([ds.folds[k].test for k in folds])
            acc, rate, what = float(scores["accuracy"]), majority(tested), "test-fold"
        if acc <= rate + 1e-9:
            return True, (
                f"learnt nothing: {what} accuracy {acc:.4f} is at or below the majority-class rate {rate:.4f} "
                "(try another --lr, more --epochs, or --class-weights balanced)"
            )
        return False, ""

    def fused_scores(
        self, targets: np.ndarray, scores: np.ndarray, fold_of: np.ndarray | None = None
    ) -> dict[str, float]:
        """Accuracy, macro-F1, AUC, NLL, Brier, ECE (see :mod:`ensemble.fusion.metrics`)."""
        from ..fusion.metrics import scores_table

        return scores_table(targets, scores, fold_of)

    def intervals(self, targets: np.ndarray, scores: np.ndarray, resamples: int) -> dict[str, float]:
        from ..fusion.stats import bootstrap_ci

        return bootstrap_ci(targets, scores, resamples=resamples)

    def compare_rows(self, a: Any, b: Any, resamples: int) -> list[dict]:
        """Accuracy: McNemar's exact test; AUC: DeLong (two classes) or a paired bootstrap; macro-F1: bootstrap."""
        from ..fusion.compare import classification_rows

        return classification_rows(a, b, resamples)

    def summarise(self, name: str, fingerprint: str, by_label: dict[str, list[Any]], step: int) -> Any:
        from ..fusion.summary import summarise_classification

        return summarise_classification(name, fingerprint, by_label, step)

    def render_report(self, target: Path, summary: Any) -> Path:
        from ..reporting.build import classification_page

        return classification_page(target, summary)

    def check_predict(self, expression: str, masks: Path | None) -> None:
        if masks is not None:
            raise UsageError(f"--masks: {expression} fuses classification members, which predict classes, not masks")

    def predict(self, members: list[Any], inputs: Any, **kw: Any) -> Any:
        from ..prediction import predict_classes

        return predict_classes(members, inputs, **kw)

    def export_notes(self) -> dict[str, str]:
        return {"member": "", "fusion": ""}


CLASSIFICATION = ClassificationTask()
