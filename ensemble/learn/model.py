"""The member network -- a timm model with a new C-class head, or one of the seed's U-Nets
(:mod:`.unet`) -- and its parameter groups. One factory for both tasks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import EnsError, UsageError, first_line


def is_segmentation_model(name: str) -> bool:
    from .unet import is_unet

    return is_unet(name)


def create_model(
    name: str, num_classes: int, *, pretrained: bool = True, weights: Path | None = None, stem: str = "default"
) -> nn.Module:
    """:func:`build_model`, with the small-input stem when ``stem`` is ``small``.

    For a segmentation network (``unet``, ``light-unet``, ``lighter-unet@C``) ``num_classes`` is its number
    of output channels (1 for a binary mask, read through a sigmoid); it has no ImageNet weights, so
    ``pretrained`` does not apply, and ``weights`` loads a state dict of the same network.
    """
    if is_segmentation_model(name):
        return _segmentation_model(name, num_classes, weights=weights, stem=stem)
    model = build_model(name, num_classes, pretrained=pretrained, weights=weights)
    return small_stem(model, name) if stem == "small" else model


def output_channels(name: str, n_classes: int) -> int:
    """Outputs of the network for ``n_classes`` classes: a binary segmentation is one sigmoid channel."""
    return 1 if is_segmentation_model(name) and n_classes == 2 else n_classes


def _segmentation_model(name: str, out_channels: int, *, weights: Path | None, stem: str) -> nn.Module:
    from .unet import unet

    if stem != "default":
        raise UsageError(f"--stem {stem} is for timm ResNets; {name} keeps its own first layer")
    try:
        model = unet(name, 3, out_channels)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if weights is not None:
        from timm.models import load_checkpoint

        try:  # timm's loader: .safetensors or a torch state dict (tensors only), float16 copied into float32
            load_checkpoint(model, str(weights), weights_only=True)
        except Exception as err:  # wrong keys or shapes, not a state dict
            raise EnsError(f"cannot load weights {weights} into {name}: {first_line(err)}") from None
    return model


def small_stem(model: nn.Module, name: str) -> nn.Module:
    """A CIFAR-style stem for small images (MedMNIST's "ResNet (28)"): the first convolution becomes 3x3
    with stride 1 and the max-pool goes. timm ResNets only; a replaced first convolution is new."""
    conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if conv is None or pool is None:
        raise UsageError(f"--stem small is for timm ResNets (conv1 + maxpool); {name} has no such stem")
    if isinstance(conv, nn.Conv2d):
        model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)
    else:  # a deep stem (resnet*d, *t): its first convolution keeps its weights, loses its stride
        first = next(m for m in conv.modules() if isinstance(m, nn.Conv2d))
        first.stride = (1, 1)
    model.maxpool = nn.Identity()
    return model


def build_model(name: str, num_classes: int, *, pretrained: bool = True, weights: Path | None = None) -> nn.Module:
    """``timm.create_model(name)`` with ``num_classes`` outputs.

    ImageNet weights come through timm (Hugging Face hub) when ``pretrained``; ``weights``
    loads a local state dict / safetensors file instead (its classifier is dropped when the
    class count differs). When weights cannot be had, the error names both ways out.
    """
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UsageError(f"unknown timm model {name!r}{hint}")
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise UsageError(f"--weights {weights}: no such file")
        try:
            return timm.create_model(
                name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay={"file": str(weights)}
            )
        except Exception as err:  # a wrong file: bad keys, bad shapes, not a state dict
            raise EnsError(f"cannot load weights {weights} into {name}: {first_line(err)}") from None
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    offline = hub_unreachable()
    try:
        with _hub_offline(offline is not None):  # a cached copy still loads; a missing one fails at once
            return timm.create_model(name, pretrained=True, num_classes=num_classes)
    except Exception as err:  # offline, hub unreachable, no pretrained tag for this model
        why = f": {offline}, and they are not in the local Hugging Face cache" if offline else f" ({first_line(err)})"
        raise EnsError(
            f"could not get ImageNet weights for {name}{why}; "
            f"pass --weights PATH (a local state dict or .safetensors file) or --no-pretrained"
        ) from None


HUB_PROBE_SECONDS = 2.0  # the connection probe's limit: an unreachable hub is known at once, not after retries
_PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """Why the Hugging Face hub cannot be reached (``HF_HUB_OFFLINE`` set, or no TCP connection to its host
    within ``timeout``), or None when it answers or cannot be probed (behind a proxy). huggingface_hub retries a
    dead network for over a minute, a line per retry; this answers in at most ``timeout`` seconds."""
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in _PROXIES):
        return None  # only the proxy knows; let huggingface_hub try
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list[BaseException | None] = []

    def connect() -> None:  # name resolution has no timeout of its own: the thread bounds it
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as err:
            result.append(err)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    if not result:
        return f"{host} does not answer within {timeout:g} s (offline?)"
    if result[0] is not None:
        return f"{host} cannot be reached ({first_line(result[0], 80)}; offline?)"
    return None


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub in offline mode (the cache only, no retries) while the block runs, when ``offline``."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def param_groups(model: nn.Module, head_lr_factor: float) -> list[dict]:
    """Backbone and new head as two groups; the head's ``lr_scale`` is the MATLAB-style factor (20)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head_params = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
    groups = [{"params": body, "lr_scale": 1.0}]
    if head_params:
        groups.append({"params": head_params, "lr_scale": float(head_lr_factor)})
    return groups


def apply_lr_scale(optimizer: torch.optim.Optimizer) -> None:
    """Multiply each group's lr by its ``lr_scale`` (schedules do this themselves every step)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
