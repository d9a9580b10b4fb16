"""Training one fold of one member, resumable from its last finished epoch.

Everything random is derived from the run's seed (SPEC: dataset, label, run, fold):
the head's initialisation, the epoch's sample order and each image's augmentation, so a
resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.augment import augment_batch, augment_pair, segmentation_transform
from ..data.dataset import Dataset
from ..data.splits import Fold
from ..errors import EnsError, first_line
from ..io import atomic_torch_save
from ..optim import build, get
from ..recipe import TrainConfig  # the one declaration of every option; imported here for old callers
from .infer import IMAGENET_MEAN, IMAGENET_STD, Normaliser, nchw, probabilities
from .losses import segmentation_loss
from .model import apply_lr_scale, create_model, output_channels, param_groups

HALF_TOLERANCE = 2e-4  # fold models are kept in float16 when that moves no test probability by more


class TrainingDiverged(EnsError):
    """The loss became NaN or inf: the run stops and nothing of it is stored as complete."""


AUGMENTATIONS = ("paper", "flips", "none")
NORMALISATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": ((0.5,) * 3, (0.5,) * 3)}
STEMS = ("default", "small")
SELECTIONS = ("last", "best-val-auc", "best-val-loss")
CLASS_WEIGHTS = ("none", "balanced")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class FoldResult:
    probs: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    val_probs: np.ndarray | None
    curves: dict[str, list[float]]
    seconds: float
    weights: dict[str, torch.Tensor] | None = None  # the fold model to keep (None: --no-keep-weights)
    weights_dtype: str | None = None


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any parts, stable across processes and Python versions."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EnsError(f"--device {device!r} is not a device (use cpu, cuda, cuda:1, auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EnsError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Mini-batches of ``order``; a last batch of one image is dropped (BatchNorm needs two)."""
    out = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [b for b in out if len(b) > 1] or out


def _loader_context() -> str | None:
    """Fork DataLoader workers where the OS can: inside a loky or Dask worker the inherited
    default is loky's context (which DataLoader cannot use) or spawn (a fresh interpreter
    importing torch for every epoch's workers)."""
    import multiprocessing

    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None


class _AugmentedPairs(torch.utils.data.Dataset):
    """(index, seed) -> augmented uint8 CHW image and HW mask; per-image albumentations for segmentation,
    in DataLoader workers when ``--workers`` asks for them."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, kind: str) -> None:
        self.images, self.masks = images, masks
        self.transform = segmentation_transform(kind)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        image, mask = augment_pair(self.transform, np.asarray(self.images[index]), np.asarray(self.masks[index]), seed)
        # copies: the inputs may be memory-mapped (read-only)
        return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1), torch.from_numpy(np.array(mask))


class FoldTrainer:
    """Trains ``model`` on one fold with one optimizer; ``checkpoint`` is where it resumes from.

    The checkpoint carries the run's recipe hash and holds only tensors and plain values,
    so it loads with ``torch.load(weights_only=True)``: a file dropped into a staging
    directory can never run code, and one from another recipe is refused.
    """

    def __init__(
        self,
        ds: Dataset,
        fold: Fold,
        label: str,
        cfg: TrainConfig,
        *,
        seed: int,
        checkpoint: Path,
        recipe_hash: str = "",
        on_start: Callable[[int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        on_epoch: Callable[[int, float, float], None] | None = None,
    ) -> None:
        self.ds, self.fold, self.label, self.cfg, self.seed = ds, fold, get(label).label, cfg, seed
        self.checkpoint_path, self.recipe_hash = Path(checkpoint), recipe_hash
        self.on_start = on_start or (lambda epoch: None)
        self.on_batch = on_batch or (lambda n: None)
        self.on_epoch = on_epoch or (lambda e, loss, acc: None)
        self.device = resolve_device(cfg.device)
        self._normalise = Normaliser(self.device, *NORMALISATIONS[cfg.normalise])
        self.segmentation = ds.masks is not None
        self.loss_name = cfg.loss_for(ds.task)
        self.plateau = cfg.uses_plateau(self.label)
        self.train_idx, self.select_idx = self._selection_split()

    def _selection_split(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Training indices, and the validation indices the kept epoch is chosen on (``select`` other than
        last) or the plateau watches: the dataset's own validation split, or a stratified inner split of the
        training fold."""
        if self.cfg.select == "last" and not self.plateau:
            return self.fold.train, None
        if self.fold.val is not None and len(self.fold.val):
            return self.fold.train, self.fold.val
        from sklearn.model_selection import train_test_split

        labels = self.ds.labels[self.fold.train]
        present = np.bincount(labels)
        stratify = labels if present[present > 0].min(initial=2) >= 2 else None
        n_val = max(
            int(round(self.cfg.val_fraction * len(labels))), len(np.unique(labels)) if stratify is not None else 1
        )
        try:
            train, val = train_test_split(
                self.fold.train,
                test_size=n_val,
                stratify=stratify,
                random_state=derive_seed("inner-val", self.fold.index) % 2**31,
            )
        except ValueError as err:
            raise EnsError(
                f"--select {self.cfg.select}: cannot split fold {self.fold.index}'s "
                f"{len(self.fold.train)} training images ({err})"
            ) from None
        return np.sort(train), np.sort(val)

    # -------------------------------------------------------------- pieces
    def _make(self) -> tuple[nn.Module, torch.optim.Optimizer, Any, int]:
        torch.manual_seed(self.seed)
        weights = Path(self.cfg.weights) if self.cfg.weights else None
        model = create_model(
            self.cfg.model,
            output_channels(self.cfg.model, len(self.ds.classes)),
            pretrained=self.cfg.pretrained,
            weights=weights,
            stem=self.cfg.stem,
        )
        model.to(self.device)
        if self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        steps = len(_batches(np.arange(len(self.train_idx)), self.cfg.batch_size))
        try:
            opt, sched = build(
                self.label,
                param_groups(model, self.cfg.head_factor(self.label)),
                epochs=self.cfg.epochs,
                steps_per_epoch=steps,
                **self.cfg.optimizer_overrides(self.label),
            )
        except ValueError as err:
            raise EnsError(str(err)) from None
        if sched is None:
            apply_lr_scale(opt)
            for group in opt.param_groups:
                group["base_lr"] = group["lr"]
        return model, opt, sched, steps

    def _set_milestone_lr(self, opt: torch.optim.Optimizer, epoch: int) -> None:
        """lr = base lr x gamma^(milestones passed): a function of the epoch, so a resume needs no state."""
        if self.cfg.milestones:
            factor = self.cfg.gamma ** sum(epoch >= m for m in self.cfg.milestones)
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor

    def _loss_weights(self) -> torch.Tensor | None:
        if self.cfg.class_weights != "balanced":
            return None
        counts = np.bincount(self.ds.labels[self.train_idx], minlength=len(self.ds.classes)).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def _validation(self, model: nn.Module, gpu_images: torch.Tensor | None) -> tuple[float, float]:
        """(score, loss) on the validation split: the score is higher-is-better (AUC, or minus the loss);
        the loss is the negative log-likelihood (classification) or the training loss on the probability
        maps (segmentation)."""
        from ..auc import auc

        probs = self.predict(model, self.select_idx, gpu_images)
        if self.segmentation:
            loss = segmentation_loss(
                torch.from_numpy(probs),
                torch.from_numpy(self.ds.masks[self.select_idx]).long(),
                self.loss_name,
                probabilities=True,
            )
            return -float(loss), float(loss)
        labels = self.ds.labels[self.select_idx]
        p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)
        nll = -float(np.mean(np.log(p)))
        if self.cfg.select == "best-val-auc":
            value = auc(labels, probs)
            return (value if math.isfinite(value) else float((probs.argmax(1) == labels).mean())), nll
        return -nll, nll

    def _epoch_plan(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Sample order (as batches of dataset indices) and per-position augmentation seeds."""
        rng = np.random.default_rng([self.seed, epoch])
        order = self.train_idx[rng.permutation(len(self.train_idx))]
        return _batches(order, self.cfg.batch_size), rng.integers(0, 2**31 - 1, size=len(order))

    # -------------------------------------------------------------- run
    def intra_op_threads(self) -> int | None:
        """CPU results depend on how many threads split each reduction: ``ens train`` fixes the count per
        task (all cores for one task at a time) and records it in the run's command, so the command
        reproduces the member exactly; None leaves torch's own count."""
        return self.cfg.threads

    def run(self) -> FoldResult:
        threads, before = self.intra_op_threads(), torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(before)

    def _run(self) -> FoldResult:
        model, opt, sched, _ = self._make()
        start_epoch, curves, elapsed = 0, {"loss": [], "accuracy": []}, 0.0
        best: dict[str, Any] = {}
        checkpoint_state: dict[str, Any] | None = None
        if self.checkpoint_path.exists():
            start_epoch, curves, elapsed, best, checkpoint_state = self._resume(model, opt, sched)
        self.on_start(start_epoch)

        on_gpu = self.device.type == "cuda"
        gpu_images = self._images_on_device() if on_gpu else None
        images = gpu_images if gpu_images is not None else nchw(np.array(self.ds.images))  # in memory, writable
        pairs = _AugmentedPairs(self.ds.images, self.ds.masks, self.cfg.augment) if self.segmentation else None
        labels = torch.from_numpy(self.ds.labels)
        dtype = self.cfg.autocast_dtype(self.device)
        scaler = torch.amp.GradScaler(enabled=dtype == torch.float16 and on_gpu)
        weights = self._loss_weights()
        plateau = self._plateau(opt, checkpoint_state)
        t0 = last_save = time.perf_counter()
        for epoch in range(start_epoch, self.cfg.epochs):
            model.train()
            self._set_milestone_lr(opt, epoch)
            batches, aug_seeds = self._epoch_plan(epoch)
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            seen = units = 0
            gen = torch.Generator().manual_seed(int(aug_seeds[0]) if len(aug_seeds) else 0)
            source = (
                self._pair_batches(pairs, batches, aug_seeds)
                if pairs is not None
                else self._image_batches(images, labels, batches, gen)
            )
            for idx, (x, y) in zip(batches, source):
                with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    logits = model(x)
                    loss = (
                        segmentation_loss(logits.float(), y, self.loss_name)
                        if self.segmentation
                        else nn.functional.cross_entropy(logits.float(), y, weight=weights)
                    )
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                if sched is not None:
                    sched.step()
                loss_sum += loss.detach() * len(idx)
                # accuracy: of the images (classification) or of the pixels (segmentation)
                pred = (logits[:, 0] > 0).long() if self.segmentation and logits.shape[1] == 1 else logits.argmax(1)
                correct += (pred == y).sum()
                seen += len(idx)
                units += y.numel()
                self.on_batch(len(idx))
            mean_loss = float(loss_sum) / max(seen, 1)  # one host sync per epoch
            if not math.isfinite(mean_loss):
                raise TrainingDiverged(
                    f"{self.ds.name}/{self.label}: loss became {mean_loss} in epoch {epoch + 1} of fold "
                    f"{self.fold.index}; the run is stopped and not stored (try a smaller --lr)"
                )
            curves["loss"].append(mean_loss)
            curves["accuracy"].append(float(correct) / max(units, 1))
            if self.select_idx is not None:
                score, val_loss = self._validation(model, gpu_images)
                curves.setdefault("val_score", []).append(score)
                curves.setdefault("val_loss", []).append(val_loss)
                if plateau is not None:
                    plateau.step(val_loss)
                    curves.setdefault("lr", []).append(float(opt.param_groups[0]["lr"]))
                if self.cfg.select != "last" and (not best or score > best["score"]):
                    best = {
                        "score": score,
                        "epoch": epoch,
                        "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                    }
            if self._checkpoint_due(epoch, last_save):
                seconds = elapsed + time.perf_counter() - t0
                state = {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "epoch": epoch,
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "plateau": plateau.state_dict() if plateau is not None else None,
                    "curves": curves,
                    "seconds": seconds,
                    "recipe_hash": self.recipe_hash,
                    "best": best,
                }
                atomic_torch_save(self.checkpoint_path, state)
                last_save = time.perf_counter()
            self.on_epoch(epoch, curves["loss"][-1], curves["accuracy"][-1])
        if best:
            model.load_state_dict(best["model"])
            curves["selected_epoch"] = [best["epoch"] + 1]
        probs = self.predict(model, self.fold.test, gpu_images)
        val = self.predict(model, self.fold.val, gpu_images) if self.fold.val is not None else None
        if not np.isfinite(probs).all() or (val is not None and not np.isfinite(val).all()):
            raise TrainingDiverged(
                f"{self.ds.name}/{self.label}: the trained model of fold {self.fold.index} predicts NaN/inf; "
                "the run is stopped and not stored (try a smaller --lr)"
            )
        weights_kept, dtype_kept = (
            self.storable_weights(model, probs, gpu_images) if self.cfg.keep_weights else (None, None)
        )
        seconds = elapsed + time.perf_counter() - t0
        return FoldResult(
            probs,
            self.targets(self.fold.test),
            self.ds.ids[self.fold.test],
            val,
            curves,
            seconds,
            weights_kept,
            dtype_kept,
        )

    def _checkpoint_due(self, epoch: int, last_save: float) -> bool:
        """Save the training state after an epoch when ``checkpoint_every`` seconds have passed since the last
        save: a save of model and optimizer costs about an epoch of a small model on a CPU, and a kill then
        loses at most that interval (every epoch is a function of the seed, so a resume gives the same
        member). Never after the last epoch: prediction follows at once and the fold is then staged."""
        if epoch == self.cfg.epochs - 1:
            return False
        return time.perf_counter() - last_save >= self.cfg.checkpoint_every

    def targets(self, indices: np.ndarray) -> np.ndarray:
        """What the predictions of ``indices`` are scored against: labels, or masks (class per pixel)."""
        return np.asarray(self.ds.masks[indices]) if self.segmentation else self.ds.labels[indices]

    def _plateau(self, opt: torch.optim.Optimizer, state: dict[str, Any] | None):  # noqa: ANN202
        """torch's ReduceLROnPlateau on the validation loss (the lightweight U-Net paper's: halve after
        ``plateau`` epochs without improvement), restored from the checkpoint on resume."""
        if not self.plateau:
            return None
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=self.cfg.plateau)
        if state and state.get("plateau"):
            plateau.load_state_dict(state["plateau"])
        return plateau

    def _resume(
        self, model: nn.Module, opt: torch.optim.Optimizer, sched: Any
    ) -> tuple[int, dict, float, dict[str, Any], dict[str, Any]]:
        """Load the last epoch's checkpoint (tensors and plain values only; never code)."""
        try:
            ckpt = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except Exception as err:  # unreadable, or a pickle asking for more than tensors
            raise EnsError(
                f"cannot resume from checkpoint {self.checkpoint_path} ({first_line(err, 200)}); "
                "delete it to train this fold from the start"
            ) from None
        if not isinstance(ckpt, dict) or ckpt.get("recipe_hash") != self.recipe_hash:
            raise EnsError(
                f"checkpoint {self.checkpoint_path} was written under another recipe; "
                "delete it (or pass --restart) to train this fold from the start"
            )
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            if sched is not None:
                sched.load_state_dict(ckpt["scheduler"])
            return int(ckpt["epoch"]) + 1, ckpt["curves"], float(ckpt["seconds"]), ckpt.get("best") or {}, ckpt
        except Exception as err:  # from another model/optimizer: never guess
            raise EnsError(
                f"cannot resume from checkpoint {self.checkpoint_path} ({first_line(err, 200)}); "
                "delete it to train this fold from the start"
            ) from None

    def _images_on_device(self) -> torch.Tensor | None:
        """All images on the GPU as uint8 when they take under half of its free memory."""
        need = self.ds.images.nbytes
        free, _ = torch.cuda.mem_get_info(self.device)
        if need > free // 2:
            return None
        return torch.from_numpy(np.ascontiguousarray(self.ds.images)).to(self.device).permute(0, 3, 1, 2)

    def _image_batches(
        self, images: torch.Tensor, labels: torch.Tensor, batches: list[np.ndarray], gen: torch.Generator
    ):
        """Classification: the batch is gathered, moved and augmented in torch on the training device, with
        random numbers from the CPU generator ``gen`` -- the same draws on CPU and GPU, no worker processes."""
        for idx in batches:
            x = images[torch.from_numpy(idx).to(images.device)].to(self.device, non_blocking=True)
            # contiguous NCHW as a collated batch is: on a CPU the memory format picks the convolution
            # kernels, and so the last bits of every result (the normaliser makes CUDA batches channels-last)
            x = augment_batch(x.float().contiguous(), gen, self.cfg.augment)
            yield self._normalise(x), labels[idx].to(self.device, non_blocking=True)

    def _pair_batches(self, pairs: _AugmentedPairs, batches: list[np.ndarray], aug_seeds: np.ndarray):
        """Segmentation: image and mask augmented together per image (albumentations), each with its own seed."""
        pos = 0
        sampler = []
        for idx in batches:
            sampler.append([(int(i), int(aug_seeds[pos + j])) for j, i in enumerate(idx)])
            pos += len(idx)
        loader = torch.utils.data.DataLoader(
            pairs,
            batch_sampler=sampler,
            num_workers=self.cfg.workers,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
            multiprocessing_context=_loader_context() if self.cfg.workers else None,
        )
        for x, y in loader:
            yield self._normalise(x), y.to(self.device, non_blocking=True).long()

    def predict(self, model: nn.Module, indices: np.ndarray, gpu_images: torch.Tensor | None) -> np.ndarray:
        """Softmax probabilities (float32) for ``indices`` -- (n, C), or (n, C, H, W) maps for segmentation --
        without augmentation (see :mod:`.infer`)."""
        step = max(self.cfg.batch_size * 2, 2)
        chunks = [indices[s : s + step] for s in range(0, len(indices), step)]
        if gpu_images is not None:
            batches = (gpu_images[torch.from_numpy(idx).to(gpu_images.device)] for idx in chunks)
        else:
            batches = (nchw(self.ds.images[idx]) for idx in chunks)
        return probabilities(model, batches, self._normalise, n_classes=len(self.ds.classes))  # fp32

    def storable_weights(
        self, model: nn.Module, probs: np.ndarray, gpu_images: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], str]:
        """The fold model's tensors to keep: float16 when that moves no test probability by more than
        ``HALF_TOLERANCE`` (half the disk), else float32."""
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        probe = copy.deepcopy(model)
        probe.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
        moved = np.abs(self.predict(probe, self.fold.test, gpu_images) - probs)
        del probe
        if not len(moved) or moved.max() <= HALF_TOLERANCE:
            return half, "float16"
        return state, "float32"
