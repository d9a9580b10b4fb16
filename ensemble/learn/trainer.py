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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from ..recipe import TrainConfig, resolve_normalisation  # TrainConfig re-exported here for old callers
from ..tasks import get_task
from .infer import NORMALISATIONS, Normaliser, nchw, probabilities
from .model import apply_lr_scale, create_model, output_channels, param_groups

HALF_TOLERANCE = 2e-4  # fold models are kept in float16 when that moves no test probability by more


class TrainingDiverged(EnsError):
    """The loss became NaN or inf: the run stops and nothing of it is stored as complete."""


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


Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
# (the epoch's batches of dataset indices, its per-position augmentation seeds) -> (input, target) batches
EpochBatches = Callable[[list[np.ndarray], np.ndarray], Batches]


@dataclass
class FoldState:
    """What the epochs change and a checkpoint keeps: the model, its optimizer and schedules, the curves and
    the best epoch so far. ``elapsed`` is the training time of earlier processes (a resume adds to it)."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
    start_epoch: int = 0
    curves: dict[str, list[float]] = field(default_factory=lambda: {"loss": [], "accuracy": []})
    elapsed: float = 0.0
    best: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0  # perf_counter when this process's first epoch began
    last_save: float = 0.0  # perf_counter of the last checkpoint (or of ``started``)

    def seconds(self) -> float:
        """Training time so far, over every process this fold ran in."""
        return self.elapsed + time.perf_counter() - self.started


@dataclass
class EpochTools:
    """What every epoch of a fold uses and no checkpoint keeps, made once per process."""

    batches: EpochBatches  # the task's batch maker
    autocast: torch.dtype | None  # None: float32 without autocast
    scaler: torch.amp.GradScaler
    class_weights: torch.Tensor | None
    gpu_images: torch.Tensor | None  # the dataset's images when they live on the GPU


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

    :meth:`run` is a sequence of steps -- :meth:`prepare`, :meth:`epoch_tools`, per epoch
    :meth:`train_epoch` (of :meth:`train_step`), :meth:`validate`, :meth:`keep_if_best` and
    :meth:`save_checkpoint`, then :meth:`select_epoch` and :meth:`fold_result` -- each of which
    asks the dataset's task (:mod:`ensemble.tasks`) for whatever depends on it.

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
        on_curves: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.ds, self.fold, self.label, self.cfg, self.seed = ds, fold, get(label).label, cfg, seed
        self.checkpoint_path, self.recipe_hash = Path(checkpoint), recipe_hash
        self.on_start = on_start or (lambda epoch: None)
        self.on_batch = on_batch or (lambda n: None)
        self.on_epoch = on_epoch or (lambda e, loss, acc: None)
        self.on_curves = on_curves  # after each epoch: loss, accuracy, the body's lr (--log tensorboard)
        self.device = resolve_device(cfg.device)
        self.channels_last = self.device.type == "cuda" or cfg.memory_format == "channels-last"
        self._normalise = Normaliser(
            self.device, *NORMALISATIONS[resolve_normalisation(cfg)], channels_last=self.channels_last
        )
        self.task = get_task(ds.task)
        self.loss_name = self.task.loss_name(cfg.loss)
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
        if getattr(self.ds, "patients", None) is not None:
            return self._grouped_selection_split()
        from sklearn.model_selection import train_test_split

        labels = self.task.strata(self.ds, self.fold.train)
        if labels is None:  # nothing to stratify by (multi-label): a seeded random hold-out
            stratify, n_val = None, max(int(round(self.cfg.val_fraction * len(self.fold.train))), 1)
        else:
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

    def _grouped_selection_split(self) -> tuple[np.ndarray, np.ndarray]:
        """The inner split of a dataset with patients: stratified and grouped (no patient on both sides), about
        ``val_fraction`` of the training fold held out -- one fold of ``round(1 / val_fraction)``."""
        import warnings

        from sklearn.model_selection import StratifiedGroupKFold

        labels = self.task.strata(self.ds, self.fold.train)
        patients = self.ds.patients[self.fold.train]
        if labels is None:  # nothing to stratify by: grouped alone (one constant class)
            labels = np.zeros(len(patients), dtype=np.int64)
        n_splits = max(2, int(round(1 / self.cfg.val_fraction))) if self.cfg.val_fraction > 0 else 2
        if len(set(patients.tolist())) < n_splits:
            raise EnsError(
                f"--select {self.cfg.select}: fold {self.fold.index}'s training images belong to "
                f"{len(set(patients.tolist()))} patient(s); a hold-out split by patient needs {n_splits}"
            )
        splitter = StratifiedGroupKFold(
            n_splits=n_splits, shuffle=True, random_state=derive_seed("inner-val", self.fold.index) % 2**31
        )
        with warnings.catch_warnings():  # a class with fewer patients than splits is allowed
            warnings.simplefilter("ignore", UserWarning)
            train, val = next(splitter.split(np.zeros(len(labels)), labels, groups=patients))
        return np.sort(self.fold.train[train]), np.sort(self.fold.train[val])

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
        state = self.prepare()
        self.on_start(state.start_epoch)
        tools = self.epoch_tools()
        state.started = state.last_save = time.perf_counter()
        for epoch in range(state.start_epoch, self.cfg.epochs):
            self.train_epoch(state, tools, epoch)
            if self.select_idx is not None:
                score = self.validate(state, tools.gpu_images)
                self.keep_if_best(state, epoch, score)
            if self._checkpoint_due(epoch, state.last_save):
                self.save_checkpoint(state, epoch)
            self.on_epoch(epoch, state.curves["loss"][-1], state.curves["accuracy"][-1])
            if self.on_curves is not None:  # reads only: the member is the same with or without it
                lr = float(state.opt.param_groups[0]["lr"])
                self.on_curves(
                    epoch, {"loss": state.curves["loss"][-1], "accuracy": state.curves["accuracy"][-1], "lr": lr}
                )
        self.select_epoch(state)
        return self.fold_result(state, tools.gpu_images)

    # -------------------------------------------------------------- prepare
    def prepare(self) -> FoldState:
        """Model, optimizer and schedules as they are before the first epoch this process trains: fresh, or
        restored from the checkpoint (which also gives the epoch to start from, the curves and the best)."""
        model, opt, sched, _ = self._make()
        state = FoldState(model, opt, sched)
        checkpoint = self._resume(state) if self.checkpoint_path.exists() else None
        state.plateau = self._plateau(opt, checkpoint)
        return state

    def _make(self) -> tuple[nn.Module, torch.optim.Optimizer, Any, int]:
        """The seeded model on the device, its optimizer and schedule, and the optimizer steps per epoch."""
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
        if self.channels_last:
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

    def _plateau(
        self, opt: torch.optim.Optimizer, checkpoint: dict[str, Any] | None
    ) -> torch.optim.lr_scheduler.ReduceLROnPlateau | None:
        """torch's ReduceLROnPlateau on the validation loss (the lightweight U-Net paper's: halve after
        ``plateau`` epochs without improvement), restored from the checkpoint on resume."""
        if not self.plateau:
            return None
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=self.cfg.plateau)
        if checkpoint and checkpoint.get("plateau"):
            plateau.load_state_dict(checkpoint["plateau"])
        return plateau

    def _resume(self, state: FoldState) -> dict[str, Any]:
        """Load the last saved epoch's checkpoint into ``state`` (tensors and plain values only; never code)
        and return it."""
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
            state.model.load_state_dict(ckpt["model"])
            state.opt.load_state_dict(ckpt["optimizer"])
            if state.sched is not None:
                state.sched.load_state_dict(ckpt["scheduler"])
            state.start_epoch, state.curves = int(ckpt["epoch"]) + 1, ckpt["curves"]
            state.elapsed, state.best = float(ckpt["seconds"]), ckpt.get("best") or {}
            if ckpt.get("rng") is not None:  # checkpoints of ens 0.2 carry none
                torch.set_rng_state(ckpt["rng"].cpu())
            if ckpt.get("cuda_rng") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])
            return ckpt
        except Exception as err:  # from another model/optimizer: never guess
            raise EnsError(
                f"cannot resume from checkpoint {self.checkpoint_path} ({first_line(err, 200)}); "
                "delete it to train this fold from the start"
            ) from None

    def epoch_tools(self) -> EpochTools:
        """The task's batch maker, autocast dtype, gradient scaler and class weights; the images go to the GPU
        once when they fit, for training and prediction alike."""
        on_gpu = self.device.type == "cuda"
        gpu_images = self._images_on_device() if on_gpu else None
        batches = self.task.training_batches(self, gpu_images)
        dtype = self.cfg.autocast_dtype(self.device)
        scaler = torch.amp.GradScaler(enabled=dtype == torch.float16 and on_gpu)
        return EpochTools(batches, dtype, scaler, self._loss_weights(), gpu_images)

    def _loss_weights(self) -> torch.Tensor | None:
        """``--class-weights balanced``: n / (C * n_c) of the training split (0 for a class it lacks)."""
        if self.cfg.class_weights != "balanced":
            return None
        counts = np.bincount(self.ds.labels[self.train_idx], minlength=len(self.ds.classes)).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def _images_on_device(self) -> torch.Tensor | None:
        """All images on the GPU as uint8 when they take under half of its free memory."""
        need = self.ds.images.nbytes
        free, _ = torch.cuda.mem_get_info(self.device)
        if need > free // 2:
            return None
        return torch.from_numpy(np.ascontiguousarray(self.ds.images)).to(self.device).permute(0, 3, 1, 2)

    # -------------------------------------------------------------- batches (the task picks one maker)
    def device_batches(self, gpu_images: torch.Tensor | None) -> EpochBatches:
        """Gathered, moved and augmented in torch on the training device (:meth:`_image_batches`), each epoch
        drawing from a CPU generator seeded by its first augmentation seed."""
        images = gpu_images if gpu_images is not None else nchw(np.array(self.ds.images))  # in memory, writable
        labels = torch.from_numpy(self.ds.labels)

        def epoch(batches: list[np.ndarray], aug_seeds: np.ndarray) -> Batches:
            gen = torch.Generator().manual_seed(int(aug_seeds[0]) if len(aug_seeds) else 0)
            return self._image_batches(images, labels, batches, gen)

        return epoch

    def paired_batches(self) -> EpochBatches:
        """Image and mask augmented together, per image with its own seed, through a DataLoader
        (:meth:`_pair_batches`)."""
        pairs = _AugmentedPairs(self.ds.images, self.ds.masks, self.cfg.augment)
        return lambda batches, aug_seeds: self._pair_batches(pairs, batches, aug_seeds)

    def _image_batches(
        self, images: torch.Tensor, labels: torch.Tensor, batches: list[np.ndarray], gen: torch.Generator
    ) -> Batches:
        """Classification: the batch is gathered, moved and augmented in torch on the training device, with
        random numbers from the CPU generator ``gen`` -- the same draws on CPU and GPU, no worker processes."""
        for idx in batches:
            x = images[torch.from_numpy(idx).to(images.device)].to(self.device, non_blocking=True)
            # augmented as contiguous NCHW (as a collated batch is); the normaliser then lays it out as
            # --memory-format says (on a CPU the layout picks the convolution kernels, and so the last bits)
            x = augment_batch(x.float().contiguous(), gen, self.cfg.augment)
            yield self._normalise(x), labels[idx].to(self.device, non_blocking=True)

    def _pair_batches(self, pairs: _AugmentedPairs, batches: list[np.ndarray], aug_seeds: np.ndarray) -> Batches:
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

    # -------------------------------------------------------------- one epoch
    def _epoch_plan(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Sample order (as batches of dataset indices) and per-position augmentation seeds: a function of the
        seed and the epoch alone, so a resumed run draws what an uninterrupted one would."""
        rng = np.random.default_rng([self.seed, epoch])
        order = self.train_idx[rng.permutation(len(self.train_idx))]
        return _batches(order, self.cfg.batch_size), rng.integers(0, 2**31 - 1, size=len(order))

    def _set_milestone_lr(self, opt: torch.optim.Optimizer, epoch: int) -> None:
        """lr = base lr x gamma^(milestones passed): a function of the epoch, so a resume needs no state."""
        if self.cfg.milestones:
            factor = self.cfg.gamma ** sum(epoch >= m for m in self.cfg.milestones)
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor

    def train_epoch(self, state: FoldState, tools: EpochTools, epoch: int) -> None:
        """One pass over the training split; appends the mean loss and the accuracy (of images or pixels, as
        the task counts hits) to the curves. Sums stay on the device: one host sync per epoch."""
        state.model.train()
        self._set_milestone_lr(state.opt, epoch)
        batches, aug_seeds = self._epoch_plan(epoch)
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros((), device=self.device, dtype=torch.long)
        seen = units = 0
        for idx, (x, y) in zip(batches, tools.batches(batches, aug_seeds)):
            loss, batch_hits = self.train_step(state, tools, x, y)
            loss_sum += loss * len(idx)
            hits += batch_hits
            seen += len(idx)
            units += y.numel()
            self.on_batch(len(idx))
        mean_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(
                f"{self.ds.name}/{self.label}: loss became {mean_loss} in epoch {epoch + 1} of fold "
                f"{self.fold.index}; the run is stopped and not stored (try a smaller --lr)"
            )
        state.curves["loss"].append(mean_loss)
        state.curves["accuracy"].append(float(hits) / max(units, 1))

    def train_step(
        self, state: FoldState, tools: EpochTools, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and the task's loss under autocast, then one optimizer (and schedule) step; returns the
        detached loss and the task's hit count, both still on the device."""
        dtype = tools.autocast
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = state.model(x)
            loss = self.task.loss(logits, y, name=self.loss_name, class_weights=tools.class_weights)
        state.opt.zero_grad(set_to_none=True)
        tools.scaler.scale(loss).backward()
        tools.scaler.step(state.opt)
        tools.scaler.update()
        if state.sched is not None:
            state.sched.step()
        return loss.detach(), self.task.hits(logits, y)

    # -------------------------------------------------------------- validate, select, checkpoint
    def validate(self, state: FoldState, gpu_images: torch.Tensor | None) -> float:
        """Score the validation split (curves ``val_score``, ``val_loss``), step the plateau schedule on its
        loss (curve ``lr``), and return the score."""
        score, val_loss = self._validation(state.model, gpu_images)
        state.curves.setdefault("val_score", []).append(score)
        state.curves.setdefault("val_loss", []).append(val_loss)
        if state.plateau is not None:
            state.plateau.step(val_loss)
            state.curves.setdefault("lr", []).append(float(state.opt.param_groups[0]["lr"]))
        return score

    def _validation(self, model: nn.Module, gpu_images: torch.Tensor | None) -> tuple[float, float]:
        """(score, loss) on the validation split, as the task scores it (higher score is better)."""
        probs = self.predict(model, self.select_idx, gpu_images)
        targets = self.task.targets(self.ds, self.select_idx)
        return self.task.validation(probs, targets, loss=self.loss_name, select=self.cfg.select)

    def keep_if_best(self, state: FoldState, epoch: int, score: float) -> None:
        """Under ``--select best-*``, a CPU copy of the model of the best-scoring epoch so far (the first on
        ties)."""
        if self.cfg.select != "last" and (not state.best or score > state.best["score"]):
            state.best = {
                "score": score,
                "epoch": epoch,
                "model": {k: v.detach().to("cpu", copy=True) for k, v in state.model.state_dict().items()},
            }

    def _checkpoint_due(self, epoch: int, last_save: float) -> bool:
        """Save the training state after an epoch when ``checkpoint_every`` seconds have passed since the last
        save: a save of model and optimizer costs about an epoch of a small model on a CPU, and a kill then
        loses at most that interval (every epoch is a function of the seed, so a resume gives the same
        member). Never after the last epoch: prediction follows at once and the fold is then staged."""
        if epoch == self.cfg.epochs - 1:
            return False
        return time.perf_counter() - last_save >= self.cfg.checkpoint_every

    def save_checkpoint(self, state: FoldState, epoch: int) -> None:
        """Write everything :meth:`prepare` needs to continue after ``epoch`` (atomically: a kill mid-write
        leaves the previous checkpoint)."""
        seconds = state.seconds()
        checkpoint = {
            "model": state.model.state_dict(),
            "optimizer": state.opt.state_dict(),
            "epoch": epoch,
            "scheduler": state.sched.state_dict() if state.sched is not None else None,
            "plateau": state.plateau.state_dict() if state.plateau is not None else None,
            "curves": state.curves,
            "seconds": seconds,
            "recipe_hash": self.recipe_hash,
            "best": state.best,
            # torch's global generators drive dropout (the U-Nets) and DataLoader seeds: a resume continues them
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }
        atomic_torch_save(self.checkpoint_path, checkpoint)
        state.last_save = time.perf_counter()

    def select_epoch(self, state: FoldState) -> None:
        """Put the kept epoch's weights into the model (the best under ``--select best-*``, else the last) and
        record which epoch it was (curve ``selected_epoch``, 1-based)."""
        if state.best:
            state.model.load_state_dict(state.best["model"])
            state.curves["selected_epoch"] = [state.best["epoch"] + 1]

    # -------------------------------------------------------------- predict, keep
    def fold_result(self, state: FoldState, gpu_images: torch.Tensor | None) -> FoldResult:
        """The kept model's predictions of the test fold (and of the validation split), its targets, ids and
        curves, the training time, and the weights to store."""
        probs, val = self.predict_fold(state.model, gpu_images)
        weights, weights_dtype = (
            self.storable_weights(state.model, probs, gpu_images) if self.cfg.keep_weights else (None, None)
        )
        seconds = state.seconds()
        targets = self.task.targets(self.ds, self.fold.test)
        return FoldResult(
            probs, targets, self.ds.ids[self.fold.test], val, state.curves, seconds, weights, weights_dtype
        )

    def predict_fold(self, model: nn.Module, gpu_images: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities of the test fold and of the dataset's validation split (None without one); a model
        predicting NaN or inf stops the run, which is then not stored."""
        probs = self.predict(model, self.fold.test, gpu_images)
        val = self.predict(model, self.fold.val, gpu_images) if self.fold.val is not None else None
        if not np.isfinite(probs).all() or (val is not None and not np.isfinite(val).all()):
            raise TrainingDiverged(
                f"{self.ds.name}/{self.label}: the trained model of fold {self.fold.index} predicts NaN/inf; "
                "the run is stopped and not stored (try a smaller --lr)"
            )
        return probs, val

    def predict(self, model: nn.Module, indices: np.ndarray, gpu_images: torch.Tensor | None) -> np.ndarray:
        """Softmax probabilities (float32) for ``indices`` -- (n, C), or (n, C, H, W) maps for segmentation --
        without augmentation (see :mod:`.infer`)."""
        step = max(self.cfg.batch_size * 2, 2)
        chunks = [indices[s : s + step] for s in range(0, len(indices), step)]
        if gpu_images is not None:
            batches = (gpu_images[torch.from_numpy(idx).to(gpu_images.device)] for idx in chunks)
        else:
            batches = (nchw(self.ds.images[idx]) for idx in chunks)
        return probabilities(
            model, batches, self._normalise, n_classes=len(self.ds.classes), convert=self.task.output_probabilities
        )  # fp32

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
