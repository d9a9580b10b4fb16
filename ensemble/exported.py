"""An ``ens export`` folder read back: ``ens predict --from DIR`` with nothing but the folder.

:func:`load_export` reads ``DIR/manifest.json`` -- untrusted input, checked field by field, every
fault one :class:`~ensemble.errors.StoreError` line naming the manifest and the field -- into an
:class:`ExportedEnsemble` whose members are :class:`~ensemble.prediction.Applicable`: they are
applied by the very functions that apply store members (same decoding, same normalisation, same
fusion), so an export predicts what the store predicts. With ``engine="onnx"`` the fold models are
the folder's ONNX files, run by onnxruntime on the CPU.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .errors import StoreError, UsageError, first_line
from .exporting import MANIFEST_VERSION
from .fusion.rules import RULES
from .options import DicomWindow
from .prediction import Inputs, apply_members, build_fold_model
from .tasks import TASKS

if TYPE_CHECKING:
    import pandas as pd

ENGINES = ("torch", "onnx")
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 * 2**20  # a manifest is a few KB; a bigger file is not one
MAX_SIZE = 4096  # input side in pixels
STEMS = ("default", "small")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}")


@dataclass(frozen=True)
class ExportedMember:
    """One member of an export: what :class:`~ensemble.prediction.Applicable` asks, and its files."""

    name: str  # Label/run, as the store names it (without the dataset)
    classes: list[str]
    size: int
    normalisation: str
    folds: int
    model: str
    stem: str
    files: tuple[Path, ...]  # model-<k>.safetensors, fold order
    onnx_files: tuple[Path, ...]  # model-<k>.onnx, fold order, or none
    engine: str = "torch"
    channels_last: bool = False  # trained so (preprocessing.memory_format), so applied so
    dicom_window: str = "file"  # preprocessing.dicom_window: how DICOM inputs become grey levels

    def fold_model(self, k: int, device: Any) -> Any:
        """Fold ``k``'s network: the safetensors weights in the timm/U-Net model, or the ONNX file."""
        if self.engine == "onnx":
            return OnnxModel(self.onnx_files[k])
        return build_fold_model(
            self.model, self.stem, len(self.classes), self.files[k], device, channels_last=self.channels_last
        )


class OnnxModel:
    """An ONNX fold model called like a torch module (onnxruntime on the CPU; outputs back on the input's device)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # a damaged or foreign file
            raise StoreError(f"{path}: not an ONNX model onnxruntime can load ({first_line(err, 200)})") from None
        self.input = self.session.get_inputs()[0].name

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, x: Any) -> Any:
        import torch

        out = self.session.run(None, {self.input: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


@dataclass(frozen=True)
class ExportedEnsemble:
    """An exported ensemble: its members and how the manifest says to fuse them."""

    path: Path
    task: str
    dataset: str
    expression: str
    rule: str
    classes: list[str]
    members: tuple[ExportedMember, ...]
    engine: str = "torch"

    def predict(
        self,
        inputs: Inputs,
        *,
        rule: str | None = None,
        device: str = "auto",
        batch_size: int = 64,
        tta: bool = False,
        fold: int | None = None,
        masks: Path | None = None,
        progress: bool = False,
    ) -> pd.DataFrame:
        """The rows ``ens predict`` gives from the store for the same members (``rule`` None: the manifest's)."""
        return apply_members(
            self.members,
            self.task,
            inputs,
            what=f"the export {self.path}",
            rule=rule or self.rule,
            device=device,
            batch_size=batch_size,
            tta=tta,
            fold=fold,
            progress=progress,
            masks=masks,
        )


def load_export(path: str | Path, *, engine: str = "torch") -> ExportedEnsemble:
    """Read and check ``path/manifest.json``; ``engine`` ``onnx`` applies the folder's ONNX models."""
    root = Path(path)
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine}: valid engines are {', '.join(ENGINES)}")
    where = root / MANIFEST
    if not root.is_dir():
        raise UsageError(f"--from {root}: no such folder (give the folder `ens export --out` wrote)")
    if not where.is_file():
        raise UsageError(f"--from {root}: no {MANIFEST} in it (give the folder `ens export --out` wrote)")
    if where.stat().st_size > MAX_MANIFEST_BYTES:
        raise StoreError(f"{where}: {where.stat().st_size} bytes is too big for a manifest")
    try:
        obj = json.loads(where.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{where}: not valid JSON ({first_line(err, 200)})") from None
    if not isinstance(obj, dict):
        raise StoreError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    version = obj.get("manifest_version")
    if version != MANIFEST_VERSION or isinstance(version, bool):
        if version is None:
            _bad(where, "manifest_version", "is missing: written by an older ens; export the ensemble again")
        _bad(where, "manifest_version", f"is {_short(version)}; this ens reads {MANIFEST_VERSION} (upgrade ens)")
    task = _get(where, obj, "task", str)
    if task not in TASKS:
        _bad(where, "task", f"is {_short(task)}; this ens knows {', '.join(TASKS)}")
    classes = _get(where, obj, "classes", list)
    if len(classes) < 2 or not all(isinstance(c, str) and 0 < len(c) <= 200 for c in classes):
        _bad(where, "classes", "must list at least two class names (non-empty strings)")
    if len(set(classes)) != len(classes):
        _bad(where, "classes", "names a class twice")
    rule = _get(where, obj, "rule", str)
    if rule not in RULES:
        _bad(where, "rule", f"is {_short(rule)}; valid: {', '.join(RULES)}")
    entries = _get(where, obj, "members", list)
    if not entries:
        _bad(where, "members", "is empty: an ensemble has at least one member")
    if engine == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UsageError('--engine onnx needs onnxruntime: pip install "ens[onnx]" (or --engine torch)') from None
    members = [_member(root, where, i, e, classes, engine) for i, e in enumerate(entries)]
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        _bad(where, "members", f"lists {dup} twice")
    return ExportedEnsemble(
        path=root,
        task=task,
        dataset=str(obj.get("dataset", "")),
        expression=str(obj.get("expression", "")),
        rule=rule,
        classes=list(classes),
        members=tuple(members),
        engine=engine,
    )


def _member(root: Path, where: Path, i: int, entry: Any, classes: list[str], engine: str) -> ExportedMember:
    import timm

    from .learn.infer import NORMALISATIONS
    from .learn.model import is_segmentation_model

    at = f"members[{i}]"
    if not isinstance(entry, dict):
        _bad(where, at, f"must be an object, found {type(entry).__name__}")
    label = _get(where, entry, "label", str, at)
    if not _LABEL.fullmatch(label) or ".." in label:
        _bad(where, f"{at}.label", f"is {_short(label)}: not a member label")
    run = _get(where, entry, "run", int, at)
    if run < 0:
        _bad(where, f"{at}.run", f"is {run}: runs count from 0")
    model = _get(where, entry, "model", str, at)
    if not (is_segmentation_model(model) or timm.is_model(model)):
        _bad(where, f"{at}.model", f"is {_short(model)}: not a model this ens (timm) can build")
    stem = entry.get("stem", "default")
    if stem not in STEMS:
        _bad(where, f"{at}.stem", f"is {_short(stem)}; valid: {', '.join(STEMS)}")
    pre = _get(where, entry, "preprocessing", dict, at)
    size = _get(where, pre, "size", int, f"{at}.preprocessing")
    if not 1 <= size <= MAX_SIZE:
        _bad(where, f"{at}.preprocessing.size", f"is {size}: an input side is 1..{MAX_SIZE} pixels")
    norm = pre.get("normalisation", "imagenet")
    if norm not in NORMALISATIONS:
        _bad(where, f"{at}.preprocessing.normalisation", f"is {_short(norm)}; valid: {', '.join(NORMALISATIONS)}")
    memory_format = pre.get("memory_format", "nchw")
    if memory_format not in ("nchw", "channels-last"):
        _bad(where, f"{at}.preprocessing.memory_format", f"is {_short(memory_format)}; valid: nchw, channels-last")
    try:
        dicom_window = DicomWindow().convert(pre.get("dicom_window", "file"), None, None)
    except click.BadParameter as err:
        _bad(where, f"{at}.preprocessing.dicom_window", f"is {_short(pre.get('dicom_window'))}: {err.message}")
    folds = _get(where, entry, "folds", list, at)
    if not 1 <= len(folds) <= 1000:
        _bad(where, f"{at}.folds", "must list the member's fold models (one or more)")
    files = tuple(_inside(root, where, f"{at}.folds[{k}]", f, ".safetensors") for k, f in enumerate(folds))
    onnx = entry.get("onnx") or []
    if not isinstance(onnx, list) or (onnx and len(onnx) != len(folds)):
        _bad(where, f"{at}.onnx", f"must list one ONNX file per fold ({len(folds)}) or none")
    onnx_files = tuple(_inside(root, where, f"{at}.onnx[{k}]", f, ".onnx") for k, f in enumerate(onnx))
    if engine == "onnx" and not onnx_files:
        raise UsageError(
            f"--engine onnx: {where} lists no ONNX models for {label} (export with onnx installed, or --engine torch)"
        )
    return ExportedMember(
        name=f"{label}/{run:03d}",
        classes=list(classes),
        size=size,
        normalisation=norm,
        folds=len(files),
        model=model,
        stem=stem,
        files=files,
        onnx_files=onnx_files,
        engine=engine,
        channels_last=memory_format == "channels-last",
        dicom_window=dicom_window,
    )


def _inside(root: Path, where: Path, at: str, value: Any, suffix: str) -> Path:
    """A file the manifest names: a relative POSIX path under ``root`` (no ``..``, no link leading out)."""
    if not isinstance(value, str) or not value or any(c in value for c in "\\:\x00"):
        _bad(where, at, f"is {_short(value)}: not a relative path inside the folder")
    rel = PurePosixPath(value)
    if rel.is_absolute() or ".." in rel.parts or value.startswith("~"):
        _bad(where, at, f"is {_short(value)}: a path inside the folder has no '..' and does not start with '/'")
    if rel.suffix != suffix:
        _bad(where, at, f"is {_short(value)}: expected a {suffix} file")
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        _bad(where, at, f"is {_short(value)}: it leads outside the folder (a link?)")
    if not target.is_file():
        _bad(where, at, f"is {_short(value)}: no such file in {root}")
    return target


def _get(where: Path, obj: dict, key: str, kind: type, at: str = "") -> Any:
    name = f"{at}.{key}" if at else key
    if key not in obj:
        _bad(where, name, "is missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        _bad(where, name, f"must be {'an' if kind is int else 'a'} {_KINDS[kind]}, found {_short(value)}")
    return value


_KINDS = {str: "string", int: "integer", list: "list", dict: "object"}


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, Path) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(where: Path, field: str, why: str) -> NoReturn:
    raise StoreError(f"{where}: field {field!r} {why}")
