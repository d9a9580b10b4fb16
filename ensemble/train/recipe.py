"""A member's recipe: everything that changes what it learns, and so part of its identity.

Two members of one label (and variant) share one recipe; ``ens train`` refuses to add
members under another one, and a staged run resumes only under the recipe it started
with. The recipe is plain JSON (what ``member.json`` stores and the store hashes).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..data.dataset import Dataset
from ..errors import UsageError
from ..optim import resolve
from .trainer import TrainConfig

AUGMENTATION = "paper"  # random reflection on both axes, independent x/y scale in [1, 2] (SPEC §2)
PRECISION = "auto"  # bf16 autocast on CUDA, fp32 on CPU (the fold's device is recorded per fold)


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
    if not cfg.pretrained:
        return "none"
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(cfg.model)
    if not tag:
        pre = get_pretrained_cfg(cfg.model)
        tag = pre.tag if pre is not None else ""
    return f"timm:{arch}.{tag}" if tag else f"timm:{arch}"


def build_recipe(cfg: TrainConfig, label: str, ds: Dataset) -> dict[str, Any]:
    """The recipe of a member of optimizer ``label`` trained with ``cfg`` on ``ds``, as stored JSON."""
    try:
        optimizer = {"name": label, **resolve(label, **cfg.optimizer_overrides())}
    except ValueError as err:  # e.g. --lr with CLMR, whose schedule sets the learning rate
        raise UsageError(f"{err} (check --lr and the optimizer's own settings in `ens optimizers`)") from None
    recipe = {
        "model": cfg.model,
        "weights": weight_source(cfg),
        "size": cfg.size,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "optimizer": optimizer,
        "head_lr_factor": cfg.head_lr_factor,
        "weight_decay": cfg.weight_decay,
        "augmentation": AUGMENTATION,
        "precision": PRECISION,
        "dataset": {"fingerprint": ds.fingerprint, "protocol": ds.protocol, "folds": len(ds.folds),
                    "classes": list(ds.classes)},
    }
    return json.loads(json.dumps(recipe))  # tuples become lists: the form it has when read back
