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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.augment import augment_batch, augment_image, train_transform
from ..data.dataset import Dataset
from ..data.splits import Fold
from ..errors import EnsError, first_line
from ..io import atomic_torch_save
from ..optim import build, get
from .infer import Normaliser, nchw, probabilities
from .model import apply_lr_scale, create_model, param_groups

HALF_TOLERANCE = 2e-4  # fold models are kept in float16 when that moves no test probability by more

class TrainingDiverged(EnsError):
    """The loss became NaN or inf: the run stops and nothing of it is stored as complete."""


@dataclass
class TrainConfig:
    """The protocol of SPEC §2, every field a CLI option of ``ens train``."""

    model: str = "resnet50"
    epochs: int = 20
    batch_size: int = 30
    lr: float | None = None  # None: the optimizer's paper default
    size: int = 224
    device: str = "auto"
    workers: int = 2
    threads: int | None = None  # None: 1 on CPU (results independent of executor and core count)
    pretrained: bool = True
    weights: str | None = None
    head_lr_factor: float = 20.0
    weight_decay: float = 1e-4
    overrides: dict[str, Any] = field(default_factory=dict)
    keep_weights: bool = True  # keep each fold's model (safetensors) so the member can predict

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def optimizer_overrides(self) -> dict[str, Any]:
        """What ``optim.build`` gets: explicit overrides, then the protocol's L2 and --lr."""
        overrides = dict(self.overrides)
        overrides.setdefault("weight_decay", self.weight_decay)
        if self.lr is not None:
            overrides.setdefault("lr", self.lr)
        return overrides


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


class _AugmentedImages(torch.utils.data.Dataset):
    """(index, seed) -> augmented uint8 CHW tensor; used by DataLoader workers on the CPU path."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.transform = train_transform()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, seed = item
        image = augment_image(self.transform, np.asarray(self.images[index]), seed)
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


class FoldTrainer:
    """Trains ``model`` on one fold with one optimizer; ``checkpoint`` is where it resumes from.

    The checkpoint carries the run's recipe hash and holds only tensors and plain values,
    so it loads with ``torch.load(weights_only=True)``: a file dropped into a staging
    directory can never run code, and one from another recipe is refused.
    """

    def __init__(self, ds: Dataset, fold: Fold, label: str, cfg: TrainConfig, *, seed: int, checkpoint: Path,
                 recipe_hash: str = "",
                 on_start: Callable[[int], None] | None = None,
                 on_batch: Callable[[int], None] | None = None,
                 on_epoch: Callable[[int, float, float], None] | None = None) -> None:
        self.ds, self.fold, self.label, self.cfg, self.seed = ds, fold, get(label).label, cfg, seed
        self.checkpoint_path, self.recipe_hash = Path(checkpoint), recipe_hash
        self.on_start = on_start or (lambda epoch: None)
        self.on_batch = on_batch or (lambda n: None)
        self.on_epoch = on_epoch or (lambda e, loss, acc: None)
        self.device = resolve_device(cfg.device)
        self._normalise = Normaliser(self.device)

    # -------------------------------------------------------------- pieces
    def _make(self) -> tuple[nn.Module, torch.optim.Optimizer, Any, int]:
        torch.manual_seed(self.seed)
        weights = Path(self.cfg.weights) if self.cfg.weights else None
        model = create_model(self.cfg.model, len(self.ds.classes), pretrained=self.cfg.pretrained, weights=weights)
        model.to(self.device)
        if self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        steps = len(_batches(np.arange(len(self.fold.train)), self.cfg.batch_size))
        try:
            opt, sched = build(self.label, param_groups(model, self.cfg.head_lr_factor),
                               epochs=self.cfg.epochs, steps_per_epoch=steps, **self.cfg.optimizer_overrides())
        except ValueError as err:
            raise EnsError(str(err)) from None
        if sched is None:
            apply_lr_scale(opt)
        return model, opt, sched, steps

    def _epoch_plan(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Sample order (as batches of dataset indices) and per-position augmentation seeds."""
        rng = np.random.default_rng([self.seed, epoch])
        order = self.fold.train[rng.permutation(len(self.fold.train))]
        return _batches(order, self.cfg.batch_size), rng.integers(0, 2**31 - 1, size=len(order))

    # -------------------------------------------------------------- run
    def intra_op_threads(self) -> int | None:
        """CPU results depend on how many threads split each reduction; one fixed count per fold
        makes a member the same whether it trained here, in a worker process or on a cluster."""
        return self.cfg.threads or (1 if self.device.type == "cpu" else None)

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
        if self.checkpoint_path.exists():
            start_epoch, curves, elapsed = self._resume(model, opt, sched)
        self.on_start(start_epoch)

        on_gpu = self.device.type == "cuda"
        gpu_images = self._images_on_device() if on_gpu else None
        loader_ds = None if gpu_images is not None else _AugmentedImages(self.ds.images)
        labels = torch.from_numpy(self.ds.labels)
        t0 = time.perf_counter()
        for epoch in range(start_epoch, self.cfg.epochs):
            model.train()
            batches, aug_seeds = self._epoch_plan(epoch)
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            seen = 0
            gen = torch.Generator().manual_seed(int(aug_seeds[0]) if len(aug_seeds) else 0)
            source = (self._gpu_batches(gpu_images, batches, gen) if gpu_images is not None
                      else self._cpu_batches(loader_ds, batches, aug_seeds))
            for idx, x in zip(batches, source):
                y = labels[idx].to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on_gpu):
                    logits = model(x)
                    loss = nn.functional.cross_entropy(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                loss_sum += loss.detach() * len(idx)
                correct += (logits.argmax(1) == y).sum()
                seen += len(idx)
                self.on_batch(len(idx))
            mean_loss = float(loss_sum) / max(seen, 1)  # one host sync per epoch
            if not math.isfinite(mean_loss):
                raise TrainingDiverged(
                    f"{self.ds.name}/{self.label}: loss became {mean_loss} in epoch {epoch + 1} of fold "
                    f"{self.fold.index}; the run is stopped and not stored (try a smaller --lr)"
                )
            curves["loss"].append(mean_loss)
            curves["accuracy"].append(float(correct) / max(seen, 1))
            seconds = elapsed + time.perf_counter() - t0
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                     "scheduler": sched.state_dict() if sched is not None else None,
                     "curves": curves, "seconds": seconds, "recipe_hash": self.recipe_hash}
            atomic_torch_save(self.checkpoint_path, state)
            self.on_epoch(epoch, curves["loss"][-1], curves["accuracy"][-1])
        probs = self.predict(model, self.fold.test, gpu_images)
        val = self.predict(model, self.fold.val, gpu_images) if self.fold.val is not None else None
        if not np.isfinite(probs).all() or (val is not None and not np.isfinite(val).all()):
            raise TrainingDiverged(
                f"{self.ds.name}/{self.label}: the trained model of fold {self.fold.index} predicts NaN/inf; "
                "the run is stopped and not stored (try a smaller --lr)"
            )
        weights, dtype = self.storable_weights(model, probs, gpu_images) if self.cfg.keep_weights else (None, None)
        seconds = elapsed + time.perf_counter() - t0
        return FoldResult(probs, self.ds.labels[self.fold.test], self.ds.ids[self.fold.test], val, curves, seconds,
                          weights, dtype)

    def _resume(self, model: nn.Module, opt: torch.optim.Optimizer, sched: Any) -> tuple[int, dict, float]:
        """Load the last epoch's checkpoint (tensors and plain values only; never code)."""
        try:
            ckpt = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except Exception as err:  # unreadable, or a pickle asking for more than tensors
            raise EnsError(f"cannot resume from checkpoint {self.checkpoint_path} ({first_line(err, 200)}); "
                           "delete it to train this fold from the start") from None
        if not isinstance(ckpt, dict) or ckpt.get("recipe_hash") != self.recipe_hash:
            raise EnsError(f"checkpoint {self.checkpoint_path} was written under another recipe; "
                           "delete it (or pass --restart) to train this fold from the start")
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            if sched is not None:
                sched.load_state_dict(ckpt["scheduler"])
            return int(ckpt["epoch"]) + 1, ckpt["curves"], float(ckpt["seconds"])
        except Exception as err:  # from another model/optimizer: never guess
            raise EnsError(f"cannot resume from checkpoint {self.checkpoint_path} ({first_line(err, 200)}); "
                           "delete it to train this fold from the start") from None

    def _images_on_device(self) -> torch.Tensor | None:
        """All images on the GPU as uint8 when they take under half of its free memory."""
        need = self.ds.images.nbytes
        free, _ = torch.cuda.mem_get_info(self.device)
        if need > free // 2:
            return None
        return torch.from_numpy(np.ascontiguousarray(self.ds.images)).to(self.device).permute(0, 3, 1, 2)

    def _gpu_batches(self, images: torch.Tensor, batches: list[np.ndarray], gen: torch.Generator):
        for idx in batches:
            x = images[torch.from_numpy(idx).to(images.device)].float()
            x = augment_batch(x, gen)
            yield self._normalise(x)

    def _cpu_batches(self, loader_ds: _AugmentedImages, batches: list[np.ndarray], aug_seeds: np.ndarray):
        pos = 0
        sampler = []
        for idx in batches:
            sampler.append([(int(i), int(aug_seeds[pos + j])) for j, i in enumerate(idx)])
            pos += len(idx)
        loader = torch.utils.data.DataLoader(
            loader_ds, batch_sampler=sampler, num_workers=self.cfg.workers,
            persistent_workers=False, pin_memory=self.device.type == "cuda",
            multiprocessing_context=_loader_context() if self.cfg.workers else None,
        )
        for batch in loader:
            yield self._normalise(batch)

    def predict(self, model: nn.Module, indices: np.ndarray, gpu_images: torch.Tensor | None) -> np.ndarray:
        """Softmax probabilities (float32) for ``indices``, without augmentation (see :mod:`.infer`)."""
        step = max(self.cfg.batch_size * 2, 2)
        chunks = [indices[s:s + step] for s in range(0, len(indices), step)]
        if gpu_images is not None:
            batches = (gpu_images[torch.from_numpy(idx).to(gpu_images.device)] for idx in chunks)
        else:
            batches = (nchw(self.ds.images[idx]) for idx in chunks)
        return probabilities(model, batches, self._normalise, n_classes=len(self.ds.classes),
                             autocast=self.device.type == "cuda")

    def storable_weights(self, model: nn.Module, probs: np.ndarray,
                         gpu_images: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], str]:
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
