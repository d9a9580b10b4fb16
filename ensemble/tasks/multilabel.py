"""The multi-label task: several findings per image (a CheXpert-style table, ChestMNIST's 14 labels).

One sigmoid per label, trained on binary cross-entropy; a label is present when its probability is
above 0.5. Fold files hold the per-label probabilities (n x L, each in [0, 1], rows need not sum to 1)
and the 0/1 targets (n x L). Metrics and fusion are :mod:`ensemble.fusion.multilabel`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StoreError, UsageError
from .base import Task, check_ids, check_rows, refuse_unet, save_npz

if TYPE_CHECKING:
    import torch

    from ..data.dataset import Dataset

THRESHOLD = 0.5  # a label is present above this probability (logit > 0 in training)


class MultiLabelTask(Task):
    name = "multilabel"

    # ------------------------------------------------------------------ training (the trainer asks these)
    default_loss = "bce"

    def targets(self, ds: Dataset, indices: np.ndarray) -> np.ndarray:
        """The 0/1 row of labels of each image (n, L) uint8."""
        return np.asarray(ds.labels[indices], dtype=np.uint8)

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, *, name: str, class_weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Binary cross-entropy of each label's logit, averaged over labels and images."""
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Labels called right at 0.5 (a positive logit is a present label): the epoch's accuracy is per label."""
        return ((logits > 0) == targets.bool()).sum()

    def validation(self, probs: np.ndarray, targets: np.ndarray, *, loss: str, select: str) -> tuple[float, float]:
        """The loss is the mean BCE; the score is the macro AUC under ``best-val-auc`` (the mean per-label
        accuracy where no label has both classes in the split) and minus the loss otherwise."""
        import math

        from ..fusion.multilabel import bce, macro_auc

        value = bce(targets, probs)
        if select == "best-val-auc":
            score = macro_auc(targets, probs)
            return (score if math.isfinite(score) else float(((probs > THRESHOLD) == targets).mean())), value
        return -value, value

    def strata(self, ds: Dataset, indices: np.ndarray) -> np.ndarray | None:
        """None: an inner validation split of multi-label images is a seeded random (or patient-grouped) one."""
        return None

    def output_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """One sigmoid per label."""
        import torch

        return torch.sigmoid(logits.float())

    # ------------------------------------------------------------------ recipe
    default_recipe = "paper"

    def check_options(
        self, *, loss: str, select: str, model: str = "", stem: str = "default", class_weights: str = "none"
    ) -> None:
        refuse_unet(model, "multi-label")
        if loss != self.default_loss:
            raise UsageError(f"--loss {loss}: multi-label members train on bce (one sigmoid per label)")
        if class_weights != "none":
            raise UsageError(f"--class-weights {class_weights} weighs the classes of a softmax; multi-label uses none")

    def stamp_recipe(self, recipe: dict[str, Any], *, loss: str) -> None:
        """The loss, and the task in the dataset block."""
        recipe["loss"] = loss
        recipe["dataset"]["task"] = self.name

    # ------------------------------------------------------------------ store, fusion, report, predict
    target_key = "labels"
    metric = "accuracy"  # mean per-label accuracy at 0.5 (MedMNIST's ACC for ChestMNIST)

    def write_fold(self, path: Path, probs: np.ndarray, targets: np.ndarray, ids: np.ndarray) -> None:
        """probs (n, L) float32 in [0, 1], labels (n, L) uint8 0/1, ids str."""
        probs, labels = np.asarray(probs, dtype=np.float32), np.asarray(targets, dtype=np.uint8)
        if probs.ndim != 2 or labels.shape != probs.shape or len(ids) != len(probs):
            raise StoreError(f"{path}: probs {probs.shape}, labels {labels.shape} and ids {len(ids)} disagree")
        save_npz(path, probs=probs, labels=labels, ids=np.asarray(ids, dtype=str))

    def check_fold(
        self, path: Path, probs: np.ndarray, targets: np.ndarray, ids: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Finite probabilities in [0, 1], one per label (rows need not sum to 1); 0/1 labels of the same shape."""
        labels = targets
        if probs.ndim != 2 or not np.issubdtype(probs.dtype, np.floating):
            raise StoreError(f"{path}: probs must be a 2-D float array (n, labels), found {probs.dtype} {probs.shape}")
        if probs.shape[1] != n_classes:
            raise StoreError(f"{path}: probs has {probs.shape[1]} columns but member.json lists {n_classes} labels")
        if labels.shape != probs.shape or ids.shape != (len(probs),):
            raise StoreError(f"{path}: probs {probs.shape}, labels {labels.shape} and ids {ids.shape} disagree")
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise StoreError(f"{path}: labels must be 0/1 integers, found {labels.dtype}")
        check_ids(path, ids)
        if not np.isfinite(probs).all():
            raise StoreError(f"{path}: probs holds NaN or inf")
        if probs.size and (probs.min() < 0 or probs.max() > 1):
            raise StoreError(f"{path}: probs holds values outside [0, 1] ({probs.min():.4g}..{probs.max():.4g})")
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise StoreError(f"{path}: labels must be 0 or 1 (found {sorted(set(np.unique(labels).tolist()))[:5]})")
        return probs.astype(np.float32), labels.astype(np.uint8), ids.astype(str)

    def check_header(self, path: Path, shapes: dict[str, tuple[int, ...]], n_classes: int) -> None:
        """probs (n, L), labels (n, L), ids (n,), n >= 1."""
        check_rows(path, shapes, {"probs": 2, "labels": 2, "ids": 1})
        if shapes["probs"][1] != n_classes or shapes["labels"] != shapes["probs"]:
            raise StoreError(
                f"{path}: probs {shapes['probs']} and labels {shapes['labels']} must both be (n, {n_classes}), "
                f"one column per label member.json lists"
            )

    def fold_score(self, probs: np.ndarray, targets: np.ndarray) -> float | None:
        """Mean per-label accuracy at 0.5."""
        return float(((probs > THRESHOLD) == targets.astype(bool)).mean()) if len(targets) else None

    def member_scores(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
        return {"accuracy": self.fold_score(probs, targets)}

    def learnt_nothing(self, ds: Any, rd: Any, summaries: list[dict[str, Any]], scores: dict) -> tuple[bool, str]:
        """No better than answering each label's majority (absent, mostly): on the validation predictions when
        the member has them, else on its last epoch's per-label training accuracy (mean over folds)."""

        def majority(idx: np.ndarray) -> float:
            rate = np.asarray(ds.labels[idx], dtype=np.float64).mean(axis=0) if len(idx) else np.zeros(1)
            return float(np.maximum(rate, 1 - rate).mean())

        folds = range(len(ds.folds))
        if all(rd.fold_file(k, "val").exists() for k in folds):
            accs, rates = [], []
            for k in folds:
                probs, labels, _ = rd.read_fold(k, self.name, len(ds.classes), "val")
                accs.append(self.fold_score(probs, labels))
                rates.append(majority(ds.folds[k].val))
            what = "validation"
        else:
            accs = [s["curves"]["accuracy"][-1] for s in summaries]
            rates = [majority(ds.folds[k].train) for k in folds]
            what = "training"
        acc, rate = float(np.mean(accs)), float(np.mean(rates))
        if acc <= rate + 1e-9:
            return True, (
                f"learnt nothing: {what} per-label accuracy {acc:.4f} is at or below that of answering each "
                f"label's majority ({rate:.4f}); try another --lr or more --epochs"
            )
        return False, ""

    def fused_scores(
        self, targets: np.ndarray, scores: np.ndarray, fold_of: np.ndarray | None = None
    ) -> dict[str, float]:
        """Macro AUC, mean per-label accuracy, exact match, macro F1, BCE (:mod:`ensemble.fusion.multilabel`)."""
        from ..fusion.multilabel import multilabel_scores

        return multilabel_scores(targets, scores, fold_of)

    def named_scores(self, targets: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict[str, Any]:
        """Each label's AUC (``auc:<label>``), and which labels the macro AUC leaves out."""
        from ..fusion.multilabel import named_label_scores

        return named_label_scores(targets, scores, classes)

    def fusion_rule(self, rule: str) -> Callable[[np.ndarray], np.ndarray]:
        """Each rule applied to every label as a two-class problem (1 - p, p)."""
        from ..fusion.multilabel import per_label_rule

        super().fusion_rule(rule)  # an unknown rule: the one message
        return per_label_rule(rule)

    def check_calibration(self, calibration: str) -> None:
        if calibration != "none":
            raise UsageError(f"--calibrate {calibration}: temperature scaling is for softmax (classification) members")

    def intervals(self, targets: np.ndarray, scores: np.ndarray, resamples: int) -> dict[str, float]:
        from ..fusion.multilabel import bootstrap_intervals

        return bootstrap_intervals(targets, scores, resamples=resamples)

    def compare_rows(self, a: Any, b: Any, resamples: int) -> list[dict]:
        """Macro AUC: paired bootstrap; each label's AUC: DeLong; exact match: McNemar."""
        from ..fusion.multilabel import compare_rows

        return compare_rows(a, b, resamples)

    def summarise(self, name: str, fingerprint: str, by_label: dict[str, list[Any]], step: int) -> Any:
        from ..fusion.ml_summary import summarise_multilabel

        return summarise_multilabel(name, fingerprint, by_label)

    def render_report(self, target: Path, summary: Any) -> Path:
        from ..reporting.build import multilabel_page

        return multilabel_page(target, summary)

    def check_predict(self, expression: str, masks: Path | None) -> None:
        if masks is not None:
            raise UsageError(f"--masks: {expression} fuses multi-label members, which predict labels, not masks")

    def predict(self, members: list[Any], inputs: Any, **kw: Any) -> Any:
        from ..prediction import predict_labels

        return predict_labels(
            members, inputs, convert=self.output_probabilities, combine=self.fusion_rule(kw["rule"]), **kw
        )

    def export_notes(self) -> dict[str, str]:
        return {
            "member": " per label (one sigmoid each; rows do not sum to 1)",
            "fusion": " per label as the two classes (1 - p, p); a label is present above 0.5",
        }


MULTILABEL = MultiLabelTask()
