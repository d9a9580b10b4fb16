"""The member network -- a timm model with a new C-class head, or one of the seed's U-Nets
(:mod:`.unet`) -- and its parameter groups. One factory for both tasks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import EnsError, UsageError, first_line

if TYPE_CHECKING:
    from .weights import LoadReport


def is_segmentation_model(name: str) -> bool:
    from .unet import is_unet

    return is_unet(name)


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights: Path | str | None = None,
    stem: str = "default",
) -> nn.Module:
    """:func:`build_model`, with the small-input stem when ``stem`` is ``small``.

    For a segmentation network (``unet``, ``light-unet``, ``lighter-unet@C``) ``num_classes`` is its number
    of output channels (1 for a binary mask, read through a sigmoid); it has no ImageNet weights, so
    ``pretrained`` does not apply, and ``weights`` loads a state dict of the same network (every tensor).
    """
    if is_segmentation_model(name):
        return _segmentation_model(name, num_classes, weights=weights, stem=stem)
    model = build_model(name, num_classes, pretrained=pretrained, weights=weights)
    if stem == "small":
        conv = getattr(model, "conv1", None)
        model = small_stem(model, name)
        if isinstance(conv, nn.Conv2d) and (report := load_report(model)) is not None:
            report["tensors_new"] = ["conv1.weight", *report["tensors_new"]]  # the replaced first convolution
            report["tensors_loaded"] -= 1
    return _remembered(model, name, weights=weights, pretrained=pretrained)


def _remembered(model: nn.Module, name: str, *, weights: Path | str | None, pretrained: bool) -> nn.Module:
    from .weights import remember

    remember(name, weights=weights, pretrained=pretrained, report=load_report(model))
    return model


def load_report(model: nn.Module) -> dict | None:
    """What the model's starting weights were (member.json's ``weights`` block), or None when it has none."""
    return getattr(model, "ens_weights", None)


def output_channels(name: str, n_classes: int) -> int:
    """Outputs of the network for ``n_classes`` classes: a binary segmentation is one sigmoid channel."""
    return 1 if is_segmentation_model(name) and n_classes == 2 else n_classes


def _segmentation_model(name: str, out_channels: int, *, weights: Path | str | None, stem: str) -> nn.Module:
    from .unet import unet

    if stem != "default":
        raise UsageError(f"--stem {stem} is for timm ResNets; {name} keeps its own first layer")
    try:
        model = unet(name, 3, out_channels)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if weights is not None:
        _load_file(model, name, str(weights), head=[])
    return _remembered(model, name, weights=weights, pretrained=False)


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


def check_timm_name(name: str) -> None:
    """A timm architecture, and its weight tag when one is given (``timm.is_model`` checks only the former)."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UsageError(f"unknown timm model {name!r}{hint}")
    arch, _, tag = name.partition(".")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        shown = ", ".join(tags[:12]) + (", ..." if len(tags) > 12 else "")
        raise UsageError(f"--model {name}: {arch} has no weight tag {tag!r}; its tags: {shown or 'none'}")


def build_model(
    name: str, num_classes: int, *, pretrained: bool = True, weights: Path | str | None = None
) -> nn.Module:
    """``timm.create_model(name)`` with ``num_classes`` outputs, its weights loaded strictly.

    ``weights`` (a file, ``pkg:NAME``/``lite0`` or ``sha256:HEX``: :mod:`.weights`) or, when ``pretrained``,
    the timm tag's checkpoint (Hugging Face hub, or its local cache offline) fill every tensor but the new
    head -- by name, or by position for foreign names -- or the build is refused naming the first tensor that
    does not fit. The model is initialised as timm initialises it (same seed, same bits) before the load.
    What loaded is kept on the model (:func:`load_report`). When weights cannot be had, the error names both
    ways out.
    """
    import timm

    check_timm_name(name)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if weights is not None:
        from .weights import head_names

        return _load_file(model, name, str(weights), head=head_names(model))
    if not pretrained:
        return model
    return _load_timm_tag(model, name)


def _load_file(model: nn.Module, name: str, weights: str, *, head: list[str]) -> nn.Module:
    from . import weights as w

    found = w.locate(weights)
    if not found.path.is_file():
        raise UsageError(f"--weights {weights}: no such file")
    sha = found.sha256 if found.sha256 and len(found.sha256) == 64 else w.file_sha256(found.path)
    state = w.read_state_dict(found.path)
    where = found.spec if found.spec == str(found.path) else f"{found.spec} ({found.path})"
    report = w.fit(model, state, head=head, source=found.spec, where=f"{where} into {name}", sha256=sha)
    return _keep(model, report, found.path)


def _load_timm_tag(model: nn.Module, name: str) -> nn.Module:
    from . import weights as w

    offline = hub_unreachable()
    try:
        with _hub_offline(offline is not None):  # a cached copy still loads; a missing one fails at once
            path = w.timm_checkpoint(model)
    except Exception as err:  # offline, hub unreachable, no pretrained tag for this model
        why = f": {offline}, and they are not in the local Hugging Face cache" if offline else f" ({first_line(err)})"
        raise EnsError(
            f"could not get ImageNet weights for {name}{why}; "
            f"pass --weights PATH (a local state dict or .safetensors file) or --no-pretrained"
        ) from None
    source = f"timm:{model.pretrained_cfg.get('architecture', name)}"
    tag = model.pretrained_cfg.get("tag")
    source = f"{source}.{tag}" if tag else source
    state = w.read_state_dict(path, what="the timm checkpoint")
    report = w.fit(
        model, state, head=w.head_names(model), source=source, where=f"{path} into {name}", sha256=w.file_sha256(path)
    )
    return _keep(model, report, path)


def _keep(model: nn.Module, report: LoadReport, path: Path) -> nn.Module:
    """Keep what loaded on the model: member.json's block and the line ``ens train`` prints."""
    model.ens_weights = report.to_json()  # type: ignore[attr-defined]
    model.ens_weights_line = report.line(path)  # type: ignore[attr-defined]
    return model


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
