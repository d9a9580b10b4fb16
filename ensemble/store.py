"""The member store (SPEC §5): the one owner of the layout and the schema of ``members/``.

    members/<dataset>/<Label>[@<variant>]/<run>/member.json    (written last)
    members/<dataset>/<Label>[@<variant>]/<run>/fold-<k>.npz   (probs, labels, ids)
    members/<dataset>/splits.json                              (the folds every member of it used)
    members/<dataset>/content.json                             (the sha256 of every sample it was trained on)

A run is built in a hidden staging directory ``.<run>.staging`` and renamed into place
when complete, so readers (which ignore names beginning with ``.``) never see half a
member. A label's lock file (``.lock``, released by the OS when a process dies, even
by ``kill -9``) keeps two processes from training the same runs; the staging directory
keeps finished folds, the run's recipe and the last epoch's checkpoint so a killed run
resumes -- under the recipe it started with, never another.

Everything read from disk is untrusted: :func:`read_member` checks the schema of
``member.json`` and the content of every fold file, and names the file and the fault.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError, UsageError
from .io import atomic_write_json
from .tasks import TASKS, get_task

RUN_DIGITS = 3
SCHEMA_VERSION = 2
MODEL_FILE = "model-{}.safetensors"  # fold k's model, kept beside its predictions
LOCK_FILE = ".lock"  # a label's lock: one `ens train` trains its runs at a time
SPLITS_FILE = "splits.json"  # a dataset's folds, nnU-Net's splits_final.json form: the same for every member
CONTENT_FILE = "content.json"  # a dataset's content: the sha256 of every sample's bytes, beside its folds
CONTENT_VERSION = 1
MAX_EXPANSION = 256  # a fold file's arrays may declare at most this many bytes per byte on disk (above 1 MiB)
LEASE_FILE = ".lease.json"  # a label's lease: remote workers watch it instead of the coordinator's pid
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
_VARIANT = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,39}")
_RUN = re.compile(r"\d+")


# --------------------------------------------------------------------------- names
def check_name(value: str, what: str) -> str:
    """A dataset, label or run name that is safe as one path component, or a one-line error."""
    if not isinstance(value, str) or not _PLAIN.fullmatch(value) or ".." in value:
        raise UsageError(
            f"{what} {value!r} is not a plain name (letters, digits, '_', '.', '+', '-'; "
            "starting with a letter or digit)"
        )
    return value


def check_variant(value: str) -> str:
    """Variant names: a letter, then letters, digits or '-' (so ``DGrad@long7`` reads as long, 7)."""
    if not isinstance(value, str) or not _VARIANT.fullmatch(value):
        raise UsageError(
            f"variant {value!r} is not a valid name (a letter, then letters, digits or '-', at most 40 characters)"
        )
    return value


def run_name(run: int) -> str:
    return f"{run:0{RUN_DIGITS}d}"


def label_key(label: str, variant: str | None = None) -> str:
    """How a label and its variant are written in paths, expressions and tables: ``DGrad@long``."""
    return f"{label}@{variant}" if variant else label


def more_runs_command(command: str, *, n: int, members_dir: str) -> str:
    """A run's recorded command turned into the one that trains its label up to ``n`` runs of the same
    recipe (``--run K`` dropped, ``--n`` and the store added)."""
    import shlex

    args = shlex.split(command)
    kept = [a for i, a in enumerate(args) if a != "--run" and (i == 0 or args[i - 1] != "--run")]
    return shlex.join([*kept, "--n", str(n), "--members-dir", members_dir])


def split_key(key: str) -> tuple[str, str | None]:
    label, _, variant = key.partition("@")
    return label, variant or None


# --------------------------------------------------------------------------- recipes
def recipe_hash(recipe: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the recipe's canonical JSON (sorted keys)."""
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipe_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``field: old -> new`` for every recipe field that differs (nested dicts as ``a.b``)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(unset)"), new.get(key, "(unset)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{line}" for line in recipe_diff(a, b)]
        elif a != b:
            out.append(f"{key}: {a} -> {b}")
    return out


def recipe_summary(recipe: dict[str, Any]) -> str:
    """One line for tables: model, size, epochs, batch, lr."""
    if not recipe:
        return "(not recorded)"
    opt = recipe.get("optimizer") if isinstance(recipe.get("optimizer"), dict) else {}
    lr = opt.get("lr", opt.get("max_lr"))
    text = f"{recipe.get('model')} {recipe.get('size')}px {recipe.get('epochs')}ep b{recipe.get('batch_size')}"
    return text + (f" lr {lr:g}" if isinstance(lr, (int, float)) else "")


# --------------------------------------------------------------------------- schema
@dataclass
class MemberMeta:
    """``member.json``: one typed, versioned record.

    Schema 1 (members written before recipes existed, or by hand) needs only the first
    six fields; schema 2 adds the recipe and its hash, which :func:`read_member` requires.
    """

    dataset: str
    label: str
    run: int
    fingerprint: str
    classes: list[str]
    folds: int
    schema_version: int = 1
    variant: str | None = None
    dataset_spec: str = ""
    protocol: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    recipe_hash: str = ""
    optimizer: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    epochs: int = 0
    seed: list[int] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    fold_seconds: list[float] = field(default_factory=list)
    fold_device: list[Any] = field(default_factory=list)
    fold_threads: list[Any] = field(default_factory=list)
    fold_accuracy: list[Any] = field(default_factory=list)
    curves: list[Any] = field(default_factory=list)
    accuracy: float | None = None
    finished: str = ""
    fold_models: dict[str, Any] = field(default_factory=dict)  # present, bytes, dtype per fold
    command: str = ""  # the `ens train` arguments that retrain exactly this run (add --members-dir)
    learnt_nothing: bool = False  # validation (or training) accuracy at or below the majority-class rate
    diagnosis: str = ""
    task: str = "classification"  # or segmentation (fold files hold probability maps and masks)
    dice: float | None = None  # segmentation: mean foreground Dice over every image
    # the starting weights as loaded: source, sha256, tensors_loaded, tensors_new, by ("name" or "position");
    # None (and absent from the file) for a member from scratch or written before it was recorded
    weights: dict[str, Any] | None = None
    # where the folds ran: CPU model and flags, --cpu-isa and its pins, torch's kernels, the memory format, and
    # whether the recorded command gives the same bits elsewhere (portable, why); None before ens 0.4
    hardware: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields of a hand-made member we keep but do not know

    @property
    def key(self) -> str:
        return label_key(self.label, self.variant)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if out["weights"] is None:
            del out["weights"]  # member.json as before for a member with no starting weights
        if out["hardware"] is None:
            del out["hardware"]
        return {**self.extra, **out}

    @classmethod
    def from_json(cls, obj: Any, where: Path) -> MemberMeta:
        """Check types and values field by field; any fault is a :class:`StoreError` naming ``where``."""
        if not isinstance(obj, dict):
            raise StoreError(f"{where}: expected a JSON object, found {type(obj).__name__}")
        version = obj.get("schema_version", 1)
        if not _is_int(version) or version not in (1, 2):
            raise StoreError(
                f"{where}: schema_version {version!r} is not one this ens reads (1 or {SCHEMA_VERSION}); upgrade ens"
            )
        required = ["dataset", "label", "run", "fingerprint", "classes", "folds"]
        if version >= 2:
            required += ["recipe", "recipe_hash"]
        missing = [k for k in required if k not in obj]
        if missing:
            raise StoreError(f"{where}: missing field(s) {', '.join(missing)}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in obj.items() if k in known}
        for name, check in _CHECKS.items():
            if name in values and values[name] is not None and not check(values[name]):
                raise StoreError(f"{where}: field {name!r} has a wrong type or value: {_short(values[name])}")
        if _is_int(values.get("seed")) and _is_int(values.get("folds")) and 1 <= values["folds"] <= 1000:
            values["seed"] = [values["seed"]] * values["folds"]  # SPEC §5: a hand-made member's one seed, every fold
        meta = cls(**values, extra={k: v for k, v in obj.items() if k not in known})
        for name in ("dataset", "label"):
            if not _PLAIN.fullmatch(getattr(meta, name)) or ".." in getattr(meta, name):
                _bad(where, name, getattr(meta, name))
        if meta.variant is not None and not _VARIANT.fullmatch(str(meta.variant)):
            _bad(where, "variant", meta.variant)
        # fingerprints reach file names (report folders): hex for ens's own members, a plain token by hand
        fp_ok = (
            re.fullmatch(r"[0-9a-f]{8,64}", meta.fingerprint)
            if version >= 2
            else re.fullmatch(r"[A-Za-z0-9_-]{1,64}", meta.fingerprint)
        )
        if not fp_ok:
            _bad(where, "fingerprint", meta.fingerprint)
        if version >= 2 and (
            not re.fullmatch(r"[0-9a-f]{16}", meta.recipe_hash) or recipe_hash(meta.recipe) != meta.recipe_hash
        ):
            raise StoreError(f"{where}: recipe_hash {_short(meta.recipe_hash)} does not match its recipe")
        if not 1 <= meta.folds <= 1000:
            _bad(where, "folds", meta.folds)
        if not meta.classes or len(set(meta.classes)) != len(meta.classes):
            raise StoreError(f"{where}: classes must be distinct names, found {_short(meta.classes)}")
        return meta


MAX_JSON_DEPTH = 64  # member.json nests a few levels (recipe.optimizer...); deeper is no member ens reads


def too_deep(obj: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether parsed JSON nests deeper than ``limit`` (checked without recursion: every later reader recurses)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


_CHECKS = {
    "schema_version": _is_int,
    "dataset": lambda v: isinstance(v, str),
    "label": lambda v: isinstance(v, str),
    "run": lambda v: _is_int(v) and 0 <= v < 10**6,
    "fingerprint": lambda v: isinstance(v, str),
    "classes": lambda v: isinstance(v, list) and all(isinstance(c, str) and c for c in v),
    "folds": _is_int,
    "variant": lambda v: isinstance(v, str),
    "dataset_spec": lambda v: isinstance(v, str),
    "protocol": lambda v: isinstance(v, str),
    "recipe": lambda v: isinstance(v, dict),
    "weights": lambda v: isinstance(v, dict) and _is_int(v.get("tensors_loaded")),
    "hardware": lambda v: isinstance(v, dict),
    "recipe_hash": lambda v: isinstance(v, str),
    "optimizer": lambda v: isinstance(v, dict),
    "model": lambda v: isinstance(v, str),
    "epochs": _is_int,
    "seed": lambda v: _is_int(v) or (isinstance(v, list) and all(_is_int(s) for s in v)),
    "versions": lambda v: isinstance(v, dict),
    "fold_seconds": lambda v: isinstance(v, list) and all(_is_num(s) for s in v),
    "fold_device": lambda v: isinstance(v, list),
    "fold_threads": lambda v: isinstance(v, list),
    "fold_accuracy": lambda v: isinstance(v, list),
    "curves": lambda v: isinstance(v, list),
    "accuracy": _is_num,
    "finished": lambda v: isinstance(v, str),
    "fold_models": lambda v: isinstance(v, dict),
    "command": lambda v: isinstance(v, str),
    "learnt_nothing": lambda v: isinstance(v, bool),
    "diagnosis": lambda v: isinstance(v, str),
    "task": lambda v: v in TASKS,
    "dice": _is_num,
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(where: Path, name: str, value: Any) -> None:
    raise StoreError(f"{where}: field {name!r} has a wrong value: {_short(value)}")


# --------------------------------------------------------------------------- fold files
def fold_name(k: int, split: str = "fold") -> str:
    """``fold-<k>.npz`` (test predictions) or ``val-<k>.npz`` (validation): the one place these are spelled."""
    return f"{split}-{k}.npz"


def write_fold(path: Path, probs: np.ndarray, targets: np.ndarray, ids: np.ndarray, task: str) -> None:
    """One fold's predictions, in the schema of ``task`` (:meth:`ensemble.tasks.Task.write_fold`)."""
    get_task(task).write_fold(path, probs, targets, ids)


def read_fold(path: Path, n_classes: int, task: str = "classification") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fold file's (probs, targets, ids), checked by its task: a plain file of its run (no link out of the
    store), a zip of .npy arrays whose headers -- read before any array is -- declare the task's shapes in
    sane sizes, no pickles, finite probabilities summing to 1, targets in range (labels, or masks)."""
    kind = get_task(task)
    headers = fold_headers(path)
    missing = [k for k in ("probs", kind.target_key, "ids") if k not in headers]
    if missing:
        raise StoreError(f"{path}: missing array(s) {', '.join(missing)}")
    kind.check_header(path, {k: headers[k][0] for k in ("probs", kind.target_key, "ids")}, n_classes)
    try:
        with np.load(path, allow_pickle=False) as z:
            probs, targets, ids = z["probs"], z[kind.target_key], z["ids"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise StoreError(f"{path}: unreadable ({type(err).__name__}: {str(err)[:120]})") from None
    return kind.check_fold(path, probs, targets, ids, n_classes)


def fold_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array's (shape, dtype) from its .npy header inside the zip, nothing else read: a missing file, a
    link out of the run, a file that is no npz, object arrays, or arrays declaring far more bytes than the
    file holds (a decompression bomb) are refused here."""
    from numpy.lib import format as npy

    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(path.parent.resolve()):
            raise StoreError(
                f"{path}: a link out of its run folder (to {target}); a fold file is a file of its run, "
                "never a link out of the store"
            )
    if not path.exists():
        raise StoreError(f"{path}: missing (the run is incomplete)")
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise StoreError(f"{path}: not an npz file (a fold file is a zip of .npy arrays: probs, targets, ids)")
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    declared = 0
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = npy.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = npy.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = npy.read_array_header_2_0(f)
                    else:
                        raise StoreError(f"{path}: {info.filename} has .npy format {version}, not 1.0 or 2.0")
                name = info.filename[: -len(".npy")]
                if dtype.hasobject:
                    raise StoreError(f"{path}: {name} holds pickled (object) data, which ens never reads")
                out[name] = (tuple(int(n) for n in shape), dtype)
                declared += math.prod(shape) * dtype.itemsize
    except StoreError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise StoreError(f"{path}: unreadable ({type(err).__name__}: {str(err)[:120]})") from None
    size = path.stat().st_size
    if declared > MAX_EXPANSION * max(size, 1 << 20):
        shapes = ", ".join(f"{k} {v[0]}" for k, v in out.items())
        raise StoreError(
            f"{path}: its arrays declare {declared / 2**20:.0f} MiB ({shapes}) in a file of {size / 2**20:.1f} MiB; "
            "refused before loading (a decompression bomb, or no fold file ens wrote)"
        )
    return out


def check_fold_ids(path: Path, ids: np.ndarray, expected: np.ndarray) -> None:
    """A fold file holds exactly the dataset's ids of that fold (a foreign or swapped file is refused)."""
    got, want = set(map(str, ids)), set(map(str, expected))
    if got != want:
        foreign = sorted(got - want)
        lacking = sorted(want - got)
        what = f"id {foreign[0]!r} is not in this fold" if foreign else f"id {lacking[0]!r} is missing"
        raise StoreError(
            f"{path}: holds other samples than the dataset's fold ({what}; {len(foreign)} foreign, "
            f"{len(lacking)} missing); not published: move the staged run aside to train it again"
        )


# --------------------------------------------------------------------------- reading
@dataclass
class Member:
    """One complete member: its metadata and its predictions on every test sample, fold by fold."""

    path: Path
    meta: MemberMeta
    probs: np.ndarray  # (N, C) float32, folds concatenated in fold order; (N, C, H, W) float16 maps
    labels: np.ndarray  # (N,) int64; (N, H, W) uint8 masks for segmentation
    ids: np.ndarray  # (N,) str
    fold_of: np.ndarray  # (N,) int: the fold each row came from

    @property
    def label(self) -> str:
        """``Label`` or ``Label@variant``: the member's name in expressions and tables."""
        return self.meta.key

    @property
    def run(self) -> int:
        return self.meta.run

    @property
    def fingerprint(self) -> str:
        return self.meta.fingerprint

    @property
    def recipe_hash(self) -> str:
        return self.meta.recipe_hash

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def name(self) -> str:
        return f"{self.meta.dataset}/{self.label}/{run_name(self.run)}"

    @property
    def has_models(self) -> bool:
        """Every fold's model was kept (see :meth:`model_file`)."""
        return bool(self.meta.fold_models.get("present")) and all(
            self.model_file(k).is_file() for k in range(self.meta.folds)
        )

    def model_file(self, k: int) -> Path:
        return self.path / MODEL_FILE.format(k)

    def validation(self) -> Member | None:
        """The member's predictions on the dataset's validation split, or None where it has none."""
        return read_member(self.path, "val") if (self.path / fold_name(0, "val")).exists() else None


def read_meta(path: Path) -> MemberMeta:
    """``member.json`` of the run directory ``path``, schema-checked against where it lies."""
    meta_path = path / "member.json"
    try:
        obj = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{meta_path}: missing (a visible run directory must hold member.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{meta_path}: unreadable ({type(err).__name__}: {str(err)[:120]})") from None
    except RecursionError:
        raise StoreError(f"{meta_path}: unreadable (JSON nested too deeply)") from None
    if too_deep(obj):
        raise StoreError(
            f"{meta_path}: JSON nested more than {MAX_JSON_DEPTH} levels deep; not a member.json ens reads"
        )
    meta = MemberMeta.from_json(obj, meta_path)
    label, variant = split_key(path.parent.name)
    expected = {
        "run": int(path.name) if path.name.isdigit() else path.name,
        "label": label,
        "dataset": path.parent.parent.name,
    }
    got = {"run": meta.run, "label": meta.label, "dataset": meta.dataset}
    for key in expected:
        if expected[key] != got[key]:
            raise StoreError(f"{meta_path}: {key} {got[key]!r} does not match its folder ({expected[key]!r})")
    if (meta.variant or None) != variant:
        raise StoreError(f"{meta_path}: variant {meta.variant!r} does not match its folder ({variant!r})")
    return meta


def read_member(path: Path, split: str = "fold") -> Member:
    """Read and check a complete run directory; ``split="val"`` reads its validation predictions instead."""
    meta = read_meta(path)
    parts = []
    for k in range(meta.folds):
        f = path / fold_name(k, split)
        if split != "fold" and not f.exists():
            continue
        probs, labels, ids = read_fold(f, len(meta.classes), meta.task)
        parts.append((probs, labels, ids, np.full(len(labels), k)))
    if not parts:
        raise StoreError(f"{path} has no {split}-*.npz predictions")
    probs, labels, ids, fold_of = (np.concatenate(x) for x in zip(*parts))
    if len(np.unique(ids)) != len(ids):
        raise StoreError(f"{path}: a sample id appears in more than one row of the {split} files")
    return Member(path, meta, probs, labels, ids, fold_of)


# --------------------------------------------------------------------------- a run's files
@dataclass(frozen=True)
class RunDir:
    """Where every file of one run lies, staged or published: the one place these names are spelled."""

    label_dir: Path
    run: int

    @property
    def name(self) -> str:
        return run_name(self.run)

    @property
    def final(self) -> Path:
        return self.label_dir / self.name

    @property
    def staging(self) -> Path:
        return self.label_dir / f".{self.name}.staging"

    @property
    def scratch(self) -> Path:
        """Checkpoints, progress and error files: dropped when the run is published."""
        return self.staging / "scratch"

    @property
    def recipe_file(self) -> Path:
        return self.staging / "recipe.json"

    def fold_file(self, k: int, split: str = "fold") -> Path:
        return self.staging / fold_name(k, split)

    def write_fold(
        self, k: int, task: str, probs: np.ndarray, targets: np.ndarray, ids: np.ndarray, split: str = "fold"
    ) -> None:
        """Stage fold ``k``'s predictions (test, or ``split="val"``) in the schema of ``task``."""
        write_fold(self.fold_file(k, split), probs, targets, ids, task)

    def read_fold(self, k: int, task: str, n_classes: int, split: str = "fold") -> tuple[np.ndarray, ...]:
        """A staged fold's (probs, targets, ids), checked as :func:`read_fold` checks a published one."""
        return read_fold(self.fold_file(k, split), n_classes, task)

    def summary(self, k: int) -> Path:
        return self.staging / f"fold-{k}.json"

    def model_file(self, k: int) -> Path:
        return self.staging / MODEL_FILE.format(k)

    def checkpoint(self, k: int) -> Path:
        return self.scratch / f"fold-{k}.ckpt"

    def progress(self, k: int) -> Path:
        return self.scratch / f"progress-{k}.json"

    def error_log(self, k: int) -> Path:
        return self.scratch / f"fold-{k}.error.txt"

    def staged_recipe(self) -> dict[str, Any] | None:
        """The recipe the staged run started under; None when nothing is staged."""
        if not self.staging.exists():
            return None
        if not self.recipe_file.exists() and not any(p.is_file() and not _is_tmp(p) for p in self.staging.rglob("*")):
            return None  # created by a process killed before it wrote anything (a half .recipe.json.*.tmp at most)
        try:
            obj = json.loads(self.recipe_file.read_text())
        except (OSError, ValueError, RecursionError):
            return {}  # staged by an older ens, or damaged: matches no recipe
        return obj if isinstance(obj, dict) else {}

    def stage(self, recipe: dict[str, Any]) -> None:
        """Start (or keep) a staged run under ``recipe``; the caller has checked it matches and holds the lock,
        so the half-written files of a killed writer (``.*.tmp``) are dropped first."""
        self.drop_tmp(self.staging)
        if not self.recipe_file.exists():
            atomic_write_json(self.recipe_file, recipe)

    @staticmethod
    def drop_tmp(folder: Path) -> None:
        """Remove what a write killed half-way left (:func:`ensemble.io.atomic_write_bytes`' temporary names)."""
        if folder.is_dir():
            for p in folder.rglob(".*.tmp"):
                if p.is_file():
                    p.unlink(missing_ok=True)

    def set_aside(self) -> Path:
        """Move a stale staging directory out of the way (``--restart``), keeping it for inspection."""
        target = self.label_dir / f".{self.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        os.rename(self.staging, target)
        return target

    def finished_folds(self, folds: int) -> list[int]:
        return [k for k in range(folds) if self.fold_file(k).exists() and self.summary(k).exists()]

    def read_summaries(self, folds: int) -> list[dict[str, Any]]:
        out = []
        for k in range(folds):
            try:
                obj = json.loads(self.summary(k).read_text())
            except (OSError, ValueError, RecursionError) as err:
                raise StoreError(f"{self.summary(k)}: unreadable ({type(err).__name__})") from None
            if not isinstance(obj, dict):
                raise StoreError(f"{self.summary(k)}: expected a JSON object")
            out.append(obj)
        return out

    def publish(self, meta: MemberMeta) -> Path:
        """member.json into staging, the rename into place, then the staging-only files dropped.

        Each step can be interrupted: until the rename, everything needed to repeat the publish
        stays in staging (a rerun calls this again); after it, the member is complete and the
        leftovers are only tidied (:meth:`tidy`).
        """
        if self.final.exists():
            raise StoreError(f"{self.final} already exists; a finished member is never overwritten")
        missing = [k for k in range(meta.folds) if not self.fold_file(k).exists()]
        if missing:
            raise StoreError(f"{self.staging} lacks fold(s) {missing}; the run is not complete")
        atomic_write_json(self.staging / "member.json", meta.to_json())
        self.drop_tmp(self.staging)  # a member.json write killed on an earlier try leaves nothing in the member
        os.rename(self.staging, self.final)
        self.tidy()
        return self.final

    def tidy(self) -> None:
        """Drop what only staging needed from a published run (a publish killed after its rename)."""
        for p in self.final.glob("fold-*.json"):
            p.unlink(missing_ok=True)
        (self.final / "recipe.json").unlink(missing_ok=True)
        shutil.rmtree(self.final / "scratch", ignore_errors=True)
        self.drop_tmp(self.final)


def _is_tmp(path: Path) -> bool:
    """A temporary name of :func:`ensemble.io.atomic_write_bytes` (``.<name>.<random>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


class ContentMismatch(StoreError):
    """The data under a dataset's name changed (same names, other bytes) since its members were trained."""


def _split_sets(doc: list[dict[str, list[str]]]) -> list[dict[str, frozenset[str]]]:
    return [{key: frozenset(map(str, ids)) for key, ids in fold.items()} for fold in doc]


class Store:
    """A members/ directory."""

    def __init__(self, root: Path | str = "members") -> None:
        self.root = Path(root)

    def __iter__(self) -> Iterator[Member]:
        """Every complete member of every dataset and label, by run index, each read and checked."""
        for dataset in self.datasets():
            for label in self.labels(dataset):
                yield from self.members(dataset, label)

    def label_dir(self, dataset: str, label: str) -> Path:
        """``label`` may carry a variant (``DGrad@long``); every part is checked before it touches a path."""
        name, variant = split_key(label)
        check_name(dataset, "dataset")
        check_name(name, "label")
        if variant is not None:
            check_variant(variant)
        return self.root / dataset / label

    def run_dir(self, dataset: str, label: str, run: int) -> RunDir:
        return RunDir(self.label_dir(dataset, label), run)

    def splits_file(self, dataset: str) -> Path:
        return self.root / check_name(dataset, "dataset") / SPLITS_FILE

    def recorded_splits(self, dataset: str) -> list[dict[str, list[str]]] | None:
        """The folds the members of ``dataset`` were trained on (None: none recorded, e.g. an older store)."""
        path = self.splits_file(dataset)
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"{path}: unreadable ({err})") from None
        except RecursionError:
            raise StoreError(f"{path}: unreadable (JSON nested too deeply)") from None
        if not isinstance(doc, list) or not all(isinstance(f, dict) and {"train", "val"} <= set(f) for f in doc):
            raise StoreError(f"{path}: not a list of folds, each {{'train': [ids], 'val': [ids]}}")
        return doc

    def record_splits(self, dataset: str, doc: list[dict[str, list[str]]]) -> Path:
        """Write the folds beside the members, once: a different split for the same store name is refused
        (train it under another --name, or another --members-dir)."""
        path = self.splits_file(dataset)
        old = self.recorded_splits(dataset)
        if old is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, doc)
        elif _split_sets(old) != _split_sets(doc):
            diff = next(
                (k for k, (a, b) in enumerate(zip(_split_sets(old), _split_sets(doc))) if a != b),
                min(len(old), len(doc)),
            )
            raise StoreError(
                f"{path} records other folds than this training's ({len(old)} fold(s) there, {len(doc)} here; "
                f"fold {diff} differs): store these members apart with --name NAME, or use another --members-dir"
            )
        return path

    def content_file(self, dataset: str) -> Path:
        return self.root / check_name(dataset, "dataset") / CONTENT_FILE

    def recorded_content(self, dataset: str) -> dict[str, str] | None:
        """The sha256 of every sample the members of ``dataset`` were trained on (None: not recorded, a store
        written before ens kept it)."""
        path = self.content_file(dataset)
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as err:
            raise StoreError(f"{path}: unreadable ({type(err).__name__})") from None
        samples = doc.get("samples") if isinstance(doc, dict) else None
        if (
            not isinstance(doc, dict)
            or doc.get("version") != CONTENT_VERSION
            or not isinstance(samples, dict)
            or not all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in samples.values())
        ):
            raise StoreError(f"{path}: not a content record (version {CONTENT_VERSION}, samples: {{id: sha256}})")
        return samples

    def check_members_content(self, dataset: str, members: list[Member]) -> None:
        """Refuse to fuse or report members whose dataset's content record is damaged: unreadable, or silent on
        a sample they predicted. Fusion reads stored probabilities, never the images, so it cannot hash data;
        and there is one record per dataset, shared by every member of it (training on changed bytes is
        refused, :meth:`check_content`), so members cannot disagree with each other about it. What is left
        is the record itself, untrusted like every file here. A store without one (written before ens kept
        it) has nothing to check."""
        recorded = self.recorded_content(dataset)
        if recorded is None:
            return
        for m in members:
            missing = [str(i) for i in m.ids if str(i) not in recorded]
            if missing:
                raise StoreError(
                    f"{self.content_file(dataset)}: records no content for sample {missing[0]!r}, which {m.name} "
                    f"predicted ({len(missing)} of its sample(s) missing); the record is damaged or another "
                    "dataset's: restore it, or delete it and the next `ens train` records the data anew"
                )

    def _holds_members(self, dataset: str) -> bool:
        return any(self.runs(dataset, label) or self.staged(dataset, label) for label in self.labels(dataset))

    def check_content(self, dataset: str, hashes: dict[str, str], *, where: dict[str, str], spec: str) -> str | None:
        """Refuse to train more members of ``dataset`` on data whose bytes differ from what its members were
        trained on (the fingerprint sees names, labels and folds only); nothing is written here. Returns the
        note to print when :meth:`record_content` will write the record (None when it is there and equal)."""
        path = self.content_file(dataset)
        old = self.recorded_content(dataset)
        members = self._holds_members(dataset)
        if old is None:
            if members:
                return (
                    f"note: {path}: recording the content of {len(hashes)} sample(s) now (this store had none; "
                    "the members trained before cannot be checked against it)"
                )
            return None
        changed = [i for i, h in hashes.items() if old.get(i) != h] + sorted(set(old) - set(hashes))
        if not changed:
            return None
        if not members:
            return f"note: {path}: the data changed and no member was trained on the old; recorded anew"
        first = where.get(changed[0], changed[0])
        raise ContentMismatch(
            f"{first}: its content differs from what the members in {self.root / dataset} were trained on "
            f"({len(changed)} sample(s) changed, recorded in {path}); train on the new data under --name NEW, "
            "or use a fresh --members-dir"
        )

    def record_content(self, dataset: str, hashes: dict[str, str]) -> Path:
        """Write ``content.json`` when it is absent or differs (:meth:`check_content` has allowed it)."""
        path = self.content_file(dataset)
        if self.recorded_content(dataset) != hashes:
            atomic_write_json(path, {"version": CONTENT_VERSION, "algorithm": "sha256", "samples": hashes})
        return path

    def datasets(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def labels(self, dataset: str) -> list[str]:
        """Label directories of a dataset (``DGrad``, ``DGrad@long``), each name checked."""
        d = self.root / check_name(dataset, "dataset")
        if not d.is_dir():
            return []
        out = []
        for p in sorted(d.iterdir()):
            if not p.is_dir() or p.name.startswith("."):
                continue
            name, variant = split_key(p.name)
            if not _PLAIN.fullmatch(name) or ".." in name or (variant is not None and not _VARIANT.fullmatch(variant)):
                raise StoreError(f"{p}: not a label folder (Label or Label@variant)")
            out.append(p.name)
        return out

    def runs(self, dataset: str, label: str) -> list[int]:
        """Indices of the complete runs of a label; any other visible folder is an error naming it."""
        d = self.label_dir(dataset, label)
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            if p.name.startswith(".") or not p.is_dir():
                continue
            if not _RUN.fullmatch(p.name) or p.name != run_name(int(p.name)):
                raise StoreError(f"{p}: not a run folder (run folders are named {run_name(0)}, {run_name(1)}, ...)")
            if not (p / "member.json").exists():
                raise StoreError(f"{p / 'member.json'}: missing (a visible run directory must hold member.json)")
            out.append(int(p.name))
        return sorted(out)

    def member_dirs(self, dataset: str, label: str) -> list[Path]:
        return [self.label_dir(dataset, label) / run_name(r) for r in self.runs(dataset, label)]

    def metas(self, dataset: str, label: str) -> list[MemberMeta]:
        return [read_meta(p) for p in self.member_dirs(dataset, label)]

    def members(self, dataset: str, label: str, count: int | None = None, split: str = "fold") -> list[Member]:
        """The first ``count`` complete members of a label, by run index; all of them are checked,
        and they must share one recipe."""
        members = [read_member(p, split) for p in self.member_dirs(dataset, label)]
        check_one_recipe(members)
        return members[:count]

    def staged(self, dataset: str, label: str) -> list[int]:
        """Runs with a staging directory (started, not published)."""
        d = self.label_dir(dataset, label)
        if not d.is_dir():
            return []
        found = (re.fullmatch(r"\.(\d+)\.staging", p.name) for p in d.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    # ---------------------------------------------------------------- at a glance
    def inventory(self, dataset: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """Every complete member as a row (recipe, accuracy, fold models, disk use), and notes: unreadable
        members, staged runs, labels being trained, leases left by a job that died."""
        rows, notes = [], []
        for ds in [dataset] if dataset else self.datasets():
            try:
                labels = self.labels(ds)
            except StoreError as err:
                notes.append(f"unreadable: {err}")
                continue
            for label in labels:
                label_dir = self.label_dir(ds, label)
                try:
                    dirs = self.member_dirs(ds, label)
                except StoreError as err:
                    notes.append(f"unreadable: {err}")
                    dirs = [p for p in label_dir.iterdir() if _RUN.fullmatch(p.name) and (p / "member.json").exists()]
                for path in dirs:
                    try:
                        m = read_member(path)
                    except StoreError as err:
                        notes.append(f"unreadable: {err}")
                        continue
                    rows.append(
                        {
                            "dataset": ds,
                            "label": m.label,
                            "optimizer": m.meta.label,
                            "variant": m.meta.variant,
                            "run": m.run,
                            "recipe_hash": m.recipe_hash or None,
                            "recipe": recipe_summary(m.meta.recipe),
                            "accuracy": m.meta.accuracy,
                            "dice": m.meta.dice,
                            "weights": m.has_models,
                            "weights_bytes": int(m.meta.fold_models.get("bytes", 0)),
                            "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
                            "path": str(path),
                        }
                    )
                for run in self.staged(ds, label):
                    notes.append(
                        f"staged (started, not published): {label_dir / f'.{run_name(run)}.staging'}; "
                        "the next `ens train` of this label resumes it"
                    )
                notes += _lock_notes(label_dir)
        return rows, notes

    # ---------------------------------------------------------------- writing
    @contextlib.contextmanager
    def wait_lock(
        self, dataset: str, label: str, timeout: float, on_wait: Callable[[], None] | None = None
    ) -> Iterator[bool]:
        """Hold the label's lock, waiting up to ``timeout`` seconds for a process that holds it; yields True
        when it had to wait (what the holder published must then be planned again). A :class:`StoreError`
        names the label and the bound when the wait runs out."""
        import filelock

        d = self.label_dir(dataset, label)
        d.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(d / LOCK_FILE, mode=0o666)
        waited = False
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            waited = True
            if on_wait is not None:
                on_wait()
            try:
                lock.acquire(timeout=timeout)
            except filelock.Timeout:
                raise StoreError(
                    f"{d} is still being trained by another `ens train` after {timeout:g} s (--lock-timeout); "
                    "rerun when it is done, or wait longer with --lock-timeout SECONDS"
                ) from None
        try:
            yield waited
        finally:
            lock.release()

    @contextlib.contextmanager
    def try_lock(self, dataset: str, label: str) -> Iterator[bool]:
        """Yield True while holding the label's lock, False if another process holds it.

        One lock per label and job (not one open file per run), through ``filelock``: the OS
        frees it when the process dies, even by ``kill -9``, on POSIX and Windows alike.
        """
        import filelock

        d = self.label_dir(dataset, label)
        d.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(d / LOCK_FILE, mode=0o666)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()


def _lock_notes(label_dir: Path) -> list[str]:
    """A label being trained right now, or a lease left by a job that died."""
    import filelock

    notes = []
    lock_path = label_dir / LOCK_FILE
    held = False
    if lock_path.exists():
        lock = filelock.FileLock(lock_path)
        try:
            lock.acquire(timeout=0)
            lock.release()
        except filelock.Timeout:
            held = True
            notes.append(f"being trained now: {label_dir} is locked by a running `ens train`")
    if (label_dir / LEASE_FILE).exists() and not held:
        notes.append(
            f"stale lease: {label_dir / LEASE_FILE} was left by an `ens train` that died; the next one takes it over"
        )
    return notes


def check_one_recipe(members: list[Member]) -> None:
    """Members of one label (and variant) must share one recipe: a table row is one recipe."""
    hashes = {m.recipe_hash for m in members if m.recipe_hash}
    if len(hashes) > 1:
        first = members[0]
        other = next(m for m in members if m.recipe_hash != first.recipe_hash)
        diff = "; ".join(recipe_diff(first.meta.recipe, other.meta.recipe)[:5])
        raise StoreError(
            f"{other.path}: trained under another recipe than {first.path} ({diff}); "
            "one label holds one recipe -- move it to a variant (Label@name) or another store"
        )
