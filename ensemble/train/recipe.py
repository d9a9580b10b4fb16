"""Recipes: the named presets of every training option, and a member's recipe as part of its identity.

:data:`RECIPES` are the presets ``ens train --recipe NAME`` starts from (``ens recipes`` lists
them); a YAML file (``--config``) sets the same keys, and explicit flags win. What a member
was trained with -- everything that changes what it learns -- is its recipe
(:func:`build_recipe`): two members of one label (and variant) share one; ``ens train``
refuses to add members under another, and a staged run resumes only under the recipe it
started with. The recipe is plain JSON (what ``member.json`` stores and the store hashes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..data.dataset import Dataset
from ..errors import UsageError
from ..optim import get, resolve
from .trainer import TrainConfig

# Every key is a TrainConfig field; a recipe sets all of them, so a preset is a complete protocol.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {  # SPEC §2: Nanni et al.'s fine-tuning protocol, MATLAB's resnet50 weights
        "model": "resnet50.tv_in1k",
        "pretrained": True,
        "size": 224,
        "epochs": 20,
        "batch_size": 30,
        "lr": None,
        "head_lr_factor": 20.0,
        "weight_decay": 1e-4,
        "augment": "paper",
        "normalise": "imagenet",
        "stem": "default",
        "select": "last",
        "val_fraction": 0.1,
        "milestones": [],
        "gamma": 0.1,
        "class_weights": "none",
        "precision": "auto",
        "loss": "auto",
        "plateau": 0,
    },
    "medmnist": {  # MedMNIST v2's baseline protocol (Yang et al. 2023): ResNet-18 (28) from scratch
        "model": "resnet18",
        "pretrained": False,
        "size": 28,
        "epochs": 100,
        "batch_size": 128,
        "lr": 1e-3,
        "head_lr_factor": 1.0,
        "weight_decay": 0.0,
        "augment": "none",
        "normalise": "half",
        "stem": "small",
        "select": "best-val-auc",
        "val_fraction": 0.1,
        "milestones": [50, 75],
        "gamma": 0.1,
        "class_weights": "none",
        "precision": "auto",
        "loss": "auto",
        "plateau": 0,
    },
    "unet": {  # the lightweight U-Net paper's tuned U-Net recipe (its section 4.2); segmentation datasets
        "model": "lighter-unet@128",
        "pretrained": False,
        "size": 256,
        "epochs": 100,
        "batch_size": 8,
        "lr": 1e-4,
        "head_lr_factor": 1.0,
        "weight_decay": 1e-4,
        "augment": "paper",
        "normalise": "half",
        "stem": "default",
        "select": "last",
        "val_fraction": 0.1,
        "milestones": [],
        "gamma": 0.1,
        "class_weights": "none",
        "precision": "auto",
        "loss": "dice",
        "plateau": 5,
    },
}
DEFAULT_RECIPE = {"classification": "paper", "segmentation": "unet"}
RECIPE_HELP = {
    "paper": "SPEC §2 (Nanni et al. 2021): torchvision's ImageNet ResNet50 fine-tuned, head x20, L2 1e-4, "
    "flips + x/y scale, 20 epochs, batch 30, constant lr",
    "medmnist": "MedMNIST v2 baseline: ResNet-18 with a 3x3 stride-1 stem at 28 px from scratch, Adam 1e-3, "
    "batch 128, 100 epochs, lr x0.1 at 50 and 75, no augmentation, 0.5/0.5 normalisation, "
    "model chosen on validation AUC",
    "unet": "lightweight U-Net paper (segmentation; the default for seg:PATH): Lighter U-net@128 from scratch at "
    "256 px, Dice loss, Adam 1e-4, lr halved after 5 epochs without a better validation loss (10% inner "
    "split), batch 8, L2 1e-4, flips/rotation/scale/translation/shear on image and mask, 100 epochs",
}


def weight_source(cfg: TrainConfig) -> str:
    """Where the starting weights come from: ``timm:<model>.<tag>``, ``file:sha256:<hex>`` or ``none``."""
    if cfg.weights:
        h = hashlib.sha256()
        try:
            with open(cfg.weights, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError as err:
            raise UsageError(f"--weights {cfg.weights}: cannot be read ({err.strerror})") from None
        return f"file:sha256:{h.hexdigest()[:16]}"
    from .model import is_segmentation_model

    if not cfg.pretrained or is_segmentation_model(cfg.model):
        return "none"
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(cfg.model)
    if not tag:
        pre = get_pretrained_cfg(cfg.model)
        tag = pre.tag if pre is not None else ""
    return f"timm:{arch}.{tag}" if tag else f"timm:{arch}"


def build_recipe(cfg: TrainConfig, label: str, ds: Dataset) -> dict[str, Any]:
    """The recipe of a member of optimizer ``label`` trained with ``cfg`` on ``ds``, as stored JSON."""
    if cfg.milestones and get(label).kind == "schedule":
        raise UsageError(
            f"--milestones: {label} sets its learning rate by its own schedule; milestones apply to "
            "the constant-rate optimizers"
        )
    try:
        optimizer = {"name": label, **resolve(label, **cfg.optimizer_overrides(label))}
    except ValueError as err:  # e.g. --lr with CLMR, whose schedule sets the learning rate
        raise UsageError(f"{err} (check --lr and the optimizer's own settings in `ens optimizers`)") from None
    if optimizer.get("fused") is False:  # the eager step: recorded as members before the fused kernels were
        del optimizer["fused"]
    segmentation = ds.task == "segmentation"
    loss = cfg.loss_for(ds.task)
    if segmentation and loss == "ce":
        raise UsageError("--loss ce is for classification; segmentation trains on dice or bce-dice")
    if not segmentation and loss != "ce":
        raise UsageError(f"--loss {loss} is for segmentation datasets (seg:PATH); classification uses ce")
    if cfg.plateau and cfg.milestones:
        raise UsageError("--plateau and --milestones both set the learning rate; give one of them")
    if segmentation and cfg.select == "best-val-auc":
        raise UsageError("--select best-val-auc is for classification; segmentation selects on best-val-loss")
    recipe = {
        "model": cfg.model,
        "weights": weight_source(cfg),
        "size": cfg.size,
        "stem": cfg.stem,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "optimizer": optimizer,
        "head_lr_factor": cfg.head_factor(label),
        "weight_decay": cfg.weight_decay,
        "milestones": list(cfg.milestones),
        "gamma": cfg.gamma,
        "augmentation": cfg.augment,
        "normalisation": cfg.normalise,
        "class_weights": cfg.class_weights,
        "select": cfg.select,
        "val_fraction": cfg.val_fraction if cfg.select != "last" else None,
        "precision": cfg.precision,
        "dataset": {
            "fingerprint": ds.fingerprint,
            "protocol": ds.protocol,
            "folds": len(ds.folds),
            "classes": list(ds.classes),
        },
    }
    # keys only where they differ from what every earlier member was, so earlier recipes keep their hash
    if segmentation or loss != "ce":
        recipe["loss"] = loss
    if cfg.uses_plateau(label):
        recipe["plateau"] = {"patience": cfg.plateau, "factor": 0.5, "on": "validation loss"}
        recipe["val_fraction"] = cfg.val_fraction
    if segmentation:
        recipe["dataset"]["task"] = "segmentation"
    return json.loads(json.dumps(recipe))  # tuples become lists: the form it has when read back


RECIPE_KEYS = tuple(RECIPES["paper"])


def parse_sets(items: list[str], labels: list[str], where: str = "--set") -> dict[str, dict[str, Any]]:
    """``KEY=VALUE`` (every optimizer of the job) or ``OPT.KEY=VALUE`` (that one): checked against the registry
    before any work, with the valid keys named."""
    import math

    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{where} {item!r}: expected KEY=VALUE or OPTIMIZER.KEY=VALUE (e.g. dgrad.lr=1e-4)")
        target, _, name = key.strip().rpartition(".")
        if target:
            try:
                target = get(target).label
            except ValueError as err:
                raise UsageError(f"{where} {item!r}: {err}") from None
            if target not in labels:
                raise UsageError(f"{where} {item!r}: {target} is not among this job's optimizers ({', '.join(labels)})")
        try:
            value = json.loads(text)  # numbers as written (1e-6 too), true/false, [0.9, 0.99]
        except ValueError:
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise UsageError(f"{where} {item!r}: {text!r} is not a value") from None
        numbers = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (int, float, bool)) or v is None for v in numbers) or any(
            isinstance(v, float) and not math.isfinite(v) for v in numbers
        ):
            raise UsageError(f"{where} {item!r}: {text!r} is not a finite number, a boolean or a list of numbers")
        for label in [target] if target else labels:
            accepted = get(label).defaults
            if name not in accepted:
                raise UsageError(
                    f"{where} {item!r}: {label} has no setting {name!r}; its settings are {', '.join(accepted)}"
                )
        out.setdefault(target or "*", {})[name] = value
    return out


def compose_config(
    recipe: str,
    *,
    config_file: str | None,
    explicit: dict[str, Any],
    sets: list[str],
    labels: list[str],
    **execution: Any,
) -> TrainConfig:
    """The effective options: the named recipe, then the YAML file's keys, then explicit flags, then --set."""
    import yaml

    if recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)} (see `ens recipes`)")
    values = dict(RECIPES[recipe])
    file_sets: list[str] = []
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UsageError(f"--config {config_file}: cannot be read ({str(err).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"--config {config_file}: expected KEY: VALUE lines")
        unknown = sorted(set(loaded) - set(RECIPE_KEYS) - {"set"})
        if unknown:
            raise UsageError(
                f"--config {config_file}: unknown key(s) {', '.join(map(str, unknown))}; valid: "
                f"{', '.join(RECIPE_KEYS)}, set"
            )
        raw = loaded.pop("set", {}) or {}
        file_sets = [f"{k}={v}" for k, v in raw.items()] if isinstance(raw, dict) else list(raw)
        values.update(loaded)
    values.update({k: v for k, v in explicit.items() if v is not None})
    values["milestones"] = tuple(int(m) for m in values["milestones"] or ())
    overrides = parse_sets(file_sets, labels, f"--config {config_file} set") if file_sets else {}
    for target, settings in parse_sets(sets, labels).items():
        overrides.setdefault(target, {}).update(settings)
    try:
        return TrainConfig(**values, overrides=overrides, **execution)
    except TypeError as err:
        raise UsageError(f"recipe values: {err}") from None


def train_command(
    *,
    spec: str,
    data_dir: str,
    label: str,
    run: int,
    cfg: TrainConfig,
    name: str | None,
    device: str,
    threads: int | None,
) -> str:
    """The ``ens train`` arguments that retrain exactly this run (same run index, so the same seeds) into a
    store given with --members-dir: every recipe value spelled out, none left to a preset."""
    import shlex

    from ..store import split_key

    optimizer, variant = split_key(label)
    args = [
        "ens",
        "train",
        "--dataset",
        spec,
        "--data-dir",
        data_dir,
        "--opt",
        optimizer,
        "--run",
        str(run),
        "--model",
        cfg.model,
        "--size",
        str(cfg.size),
        "--stem",
        cfg.stem,
        "--epochs",
        str(cfg.epochs),
        "--batch-size",
        str(cfg.batch_size),
        "--head-lr-factor",
        repr(cfg.head_lr_factor),
        "--weight-decay",
        repr(cfg.weight_decay),
        "--augment",
        cfg.augment,
        "--normalise",
        cfg.normalise,
        "--select",
        cfg.select,
        "--val-fraction",
        repr(cfg.val_fraction),
        "--milestones",
        ",".join(map(str, cfg.milestones)) or "none",
        "--gamma",
        repr(cfg.gamma),
        "--class-weights",
        cfg.class_weights,
        "--precision",
        cfg.precision,
        "--pretrained" if cfg.pretrained else "--no-pretrained",
        "--device",
        device,
    ]
    if cfg.lr is not None:
        args += ["--lr", repr(cfg.lr)]
    if cfg.loss != "auto":
        args += ["--loss", cfg.loss]
    if cfg.plateau:
        args += ["--plateau", str(cfg.plateau)]
    if cfg.weights:
        args += ["--weights", cfg.weights]
    if threads:
        args += ["--threads", str(threads)]
    if variant:
        args += ["--variant", variant]
    if name:
        args += ["--name", name]
    for target, settings in sorted(cfg.overrides.items()):
        if target in ("*", optimizer):
            args += [a for k, v in sorted(settings.items()) for a in ("--set", f"{optimizer.lower()}.{k}={v}")]
    return shlex.join(args)
