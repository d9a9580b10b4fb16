"""Dataset sources: one registry of the kinds of dataset argument, and one parser for them all.

A ``--dataset`` argument (or a dataset given to ``ens predict``) is one of

* a name of the catalogue -- ``hela``, ``bg``, ``lar``, ``digits`` (:data:`.catalog.CATALOG`);
* ``medmnist:NAME[@SIZE]`` -- MedMNIST's official ``NAME.npz`` (28 px) or ``NAME_SIZE.npz`` (64, 128,
  224 px: MedMNIST+), at ``<data-dir>/medmnist/``;
* ``folder:PATH`` -- an image folder: class folders, or fold folders of class folders;
* ``seg:PATH`` -- a segmentation folder: ``images/`` and ``masks/``;
* ``csv:PATH`` -- a manifest (``.csv`` or ``.tsv``): one row per image, columns ``path``, ``label`` and
  optionally ``patient`` and ``split`` (see :mod:`.manifest`); a multi-label one when its label cells
  hold ``|``-separated labels or ``?labels=a,b,c`` names one 0/1 column per label;
* ``PATH`` alone -- an existing folder (read by its layout, as ``folder:`` or ``seg:``) or a ``.csv``/``.tsv``
  file (as ``csv:``); catalogue names come first, so ``lar`` is always the catalogue's.

Any of them may end in options, ``?key=value&key=value``: ``splits=FILE`` (your own folds, a JSON list
of ``{"train": [ids], "val": [ids]}``, see :func:`.splits.read_splits`) for every kind, and the column
names for ``csv:`` (``csv:m.csv?label=diagnosis&patient=subject``). Options are part of the text, so
a recorded retrain command carries them.

:func:`resolve` is the one door: it parses the text once into a frozen :class:`DatasetRef` that
knows its kind, its name in the member store, its task, its absolute path (resolved against the
current directory once, so a worker started elsewhere reads the same files), how it is scanned,
and both of its spellings -- ``spec``, as the user typed it (recorded in retrain commands, which
stay portable), and ``absolute_spec`` (what workers are given).

Each kind is one :class:`SourceKind` in :data:`SOURCES` (modelled on timm's registries). A new kind
is one :func:`register` call: nothing else branches on kinds.
Nothing here imports numpy, PIL or torch at module level: usage errors must answer fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from ..errors import DataError, UsageError
from .catalog import CATALOG, MEDMNIST, MEDMNIST_SIZES, MEDMNIST_URL, DatasetInfo, Source, medmnist_file

if TYPE_CHECKING:
    from .scan import Listing

TASKS = ("classification", "segmentation", "multilabel")


@dataclass(frozen=True)
class SourceKind:
    """One kind of dataset source: how its text is parsed, how it is listed, what it is for.

    ``name`` is the prefix before ``:`` for a prefixed kind (``folder`` for ``folder:PATH``); a kind
    with ``prefixed=False`` claims bare words instead (``claims``), tried in registration order after
    the prefixes. ``parse(kind, text, argument, data_dir)`` builds the :class:`DatasetRef` (``argument``
    is what follows the prefix, or the whole text) and raises :class:`UsageError` naming the value.
    """

    name: str
    forms: tuple[str, ...]  # how it is written, for messages: ("folder:PATH",), or the catalogue's names
    task: str  # "classification", "segmentation" or "multilabel" (a parse or ``task_of`` may set a ref's own)
    parse: Callable[[SourceKind, str, str, Path], DatasetRef]
    scan: Callable[[DatasetRef], Listing]  # what the dataset holds (ids, labels, groups), nothing decoded
    prefixed: bool = True
    claims: Callable[[str], bool] | None = None  # unprefixed kinds: whether a bare word is theirs
    store_spec: Callable[[str], str | None] | None = None  # a store name back to the text that makes it
    listed: Callable[[Path], list[tuple[str, bool]]] | None = None  # `ens data list` rows: (text, show if absent)
    images: str | None = None  # a sub-folder holding the images alone (read as a plain folder by ens predict)
    options: tuple[str, ...] = ()  # the kind's own ``?key=value`` options (``splits`` is every kind's)
    # the task of a resolved ref where its text alone cannot say (a manifest's label column): a cheap look
    task_of: Callable[[DatasetRef], str] | None = None


@dataclass(frozen=True)
class DatasetRef:
    """A resolved dataset argument: one parse, then every reader asks this object.

    ``path`` is absolute (None for a built-in dataset); ``given_path`` is the same place as the user
    spelled it (for display and for ``ens predict``'s ids).
    """

    kind: SourceKind
    spec: str  # as typed: recorded in retrain commands
    absolute_spec: str  # the same dataset, readable from any working directory: given to workers
    name: str  # the dataset's name in the member store
    task: str
    path: Path | None
    given_path: Path | None
    info: DatasetInfo
    options: tuple[tuple[str, str], ...] = ()  # the kind's own ``?key=value`` options, as given
    splits: Path | None = None  # your own folds (``?splits=FILE``), absolute

    def option(self, key: str, default: str) -> str:
        """A ``?key=value`` option's value (a manifest's column name), or ``default``."""
        return dict(self.options).get(key, default)

    @property
    def present(self) -> bool:
        return self.path is None or self.path.exists()

    @property
    def images_folder(self) -> Path | None:
        """The folder of the dataset's images alone, where its kind has one (``seg:``'s ``images/``)."""
        return self.given_path / self.kind.images if self.kind.images and self.given_path else None


SOURCES: dict[str, SourceKind] = {}


def register(kind: SourceKind) -> SourceKind:
    """Add a kind of source; a name registered twice is a programming error."""
    if kind.name in SOURCES:
        raise ValueError(f"dataset source {kind.name!r} is registered already")
    if kind.task not in TASKS:
        raise ValueError(f"dataset source {kind.name!r}: task {kind.task!r} is not one of {', '.join(TASKS)}")
    if not kind.prefixed and kind.claims is None:
        raise ValueError(f"dataset source {kind.name!r} has no prefix and claims nothing")
    SOURCES[kind.name] = kind
    return kind


def valid_forms() -> str:
    """Every way a dataset can be written, for error messages: ``hela, ..., folder:PATH, seg:PATH``."""
    return ", ".join(form for kind in SOURCES.values() for form in kind.forms)


def _prefixed_kind(text: str) -> SourceKind | None:
    prefix, sep, _ = text.partition(":")
    kind = SOURCES.get(prefix.lower()) if sep else None
    return kind if kind is not None and kind.prefixed else None


def resolve(text: str | DatasetRef, data_dir: Path | str = "datasets") -> DatasetRef:
    """Parse a dataset argument (a :class:`DatasetRef` is returned as it is); an unknown one lists what is
    valid. ``data_dir`` is where named datasets live (``datasets/hela``, ``datasets/medmnist/NAME.npz``)."""
    if isinstance(text, DatasetRef):
        return text
    data_dir = Path(data_dir)
    body, sep, query = text.partition("?")
    kind = _prefixed_kind(body)
    if kind is not None:
        ref = kind.parse(kind, body, body.partition(":")[2], data_dir)
    else:
        kind = next((k for k in SOURCES.values() if not k.prefixed and k.claims(body)), None)
        if kind is None:
            raise UsageError(f"unknown dataset {text!r}; valid: {valid_forms()}")
        ref = kind.parse(kind, body, body, data_dir)
    ref = _with_options(ref, text, _parse_options(text, query, ref.kind)) if sep else ref
    return replace(ref, task=ref.kind.task_of(ref)) if ref.kind.task_of else ref


SPLITS_OPTION = "splits"


def _parse_options(text: str, query: str, kind: SourceKind) -> dict[str, str]:
    """``key=value&key=value`` (values percent-decoded, ``+`` kept): each key the kind's or ``splits``."""
    allowed = (SPLITS_OPTION, *kind.options)
    out: dict[str, str] = {}
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not key or not value:
            raise UsageError(f"{text}: option {item!r} is not KEY=VALUE (options: {', '.join(allowed)})")
        if key not in allowed:
            raise UsageError(f"{text}: unknown option {key!r} for {kind.name}: (options: {', '.join(allowed)})")
        if key in out:
            raise UsageError(f"{text}: option {key!r} is given twice")
        out[key] = unquote(value)
    return out


def _with_options(ref: DatasetRef, text: str, options: dict[str, str]) -> DatasetRef:
    """``ref`` with its options: the spec as typed, the absolute spec with the splits file made absolute."""
    splits = options.pop(SPLITS_OPTION, None)
    path = Path(splits).expanduser().resolve() if splits else None
    pairs = tuple(options.items())
    absolute = pairs + (((SPLITS_OPTION, str(path)),) if path else ())
    query = "&".join(f"{k}={quote(v, safe='/:._-~@ ')}" for k, v in absolute)
    return replace(ref, spec=text, absolute_spec=f"{ref.absolute_spec}?{query}", options=pairs, splits=path)


def with_splits(text: str, splits: Path | str | None) -> str:
    """The dataset argument ``text`` with ``?splits=FILE`` added (``ens train --splits FILE``)."""
    if splits is None:
        return text
    if resolve(text).splits is not None:
        raise UsageError(f"--splits {splits} and {text!r} both give the folds; give them once")
    sep = "&" if "?" in text else "?"
    return f"{text}{sep}{SPLITS_OPTION}={quote(str(splits), safe='/:._-~@ ')}"


def resolve_prefixed(text: str, data_dir: Path | str = "datasets") -> DatasetRef | None:
    """:func:`resolve` for text that names a kind by its prefix (``folder:``, ``seg:``, ``medmnist:``...);
    None for anything else (``ens predict`` reads that as a file or folder)."""
    return resolve(text, data_dir) if _prefixed_kind(text) is not None else None


def spec_for(store_name: str) -> str:
    """The dataset argument that gives ``store_name`` (``medmnist-blood`` -> ``medmnist:blood``), as well
    as can be known without a recorded one; the name itself otherwise."""
    for kind in SOURCES.values():
        spec = kind.store_spec(store_name) if kind.store_spec else None
        if spec:
            return spec
    return store_name


def listed(data_dir: Path | str = "datasets") -> list[tuple[str, bool]]:
    """The datasets ``ens data list`` shows, in order: (text, whether its row shows while it is absent)."""
    return [row for kind in SOURCES.values() if kind.listed for row in kind.listed(Path(data_dir))]


# --------------------------------------------------------------------------- scanning (imports lazily)
def _require(ref: DatasetRef) -> Path:
    from .scan import missing_message

    if not ref.path.exists():
        raise DataError(missing_message(ref))
    return ref.path


def _scan_catalogue(ref: DatasetRef) -> Listing:
    from .scan import scan_digits, scan_folder

    return scan_digits() if ref.path is None else scan_folder(_require(ref))


def _scan_folder(ref: DatasetRef) -> Listing:
    from .scan import scan_folder

    return scan_folder(_require(ref))


def _scan_seg(ref: DatasetRef) -> Listing:
    from .scan import scan_seg

    return scan_seg(_require(ref))


# --------------------------------------------------------------------------- the kinds
def _parse_catalogue(kind: SourceKind, text: str, argument: str, data_dir: Path) -> DatasetRef:
    info = CATALOG[argument.lower()]
    builtin = info.layout == "builtin"
    given = None if builtin else data_dir / info.name
    path = None if builtin else data_dir.resolve() / info.name  # as workers see it: data_dir made absolute
    return DatasetRef(kind, text, text, info.name, kind.task, path, given, info)


register(
    SourceKind(
        "catalogue",
        tuple(CATALOG),
        "classification",
        _parse_catalogue,
        _scan_catalogue,
        prefixed=False,
        claims=lambda text: text.lower() in CATALOG,
        listed=lambda data_dir: [(name, True) for name in CATALOG],
    )
)

_MEDMNIST_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_MEDMNIST_STORE = re.compile(r"medmnist-(?P<name>.+?)(?:-(?P<size>64|128|224))?")


def _parse_medmnist(kind: SourceKind, text: str, argument: str, data_dir: Path) -> DatasetRef:
    """``medmnist:NAME[@SIZE]``: 28 px (the default) keeps its store name ``medmnist-NAME``; the MedMNIST+
    sizes get their own, ``medmnist-NAME-SIZE``."""
    sub, at, size_text = argument.lower().partition("@")
    known = ", ".join(MEDMNIST)
    if not sub:
        raise UsageError(f"medmnist: needs a name, e.g. medmnist:breastmnist or medmnist:dermamnist@128 ({known})")
    if not _MEDMNIST_NAME.fullmatch(sub):
        raise UsageError(f"{text} is not a MedMNIST name (letters, digits, '_' or '-'; known: {known})")
    sizes = ", ".join(map(str, MEDMNIST_SIZES))
    if at and not (size_text.isdigit() and int(size_text) in MEDMNIST_SIZES):
        raise UsageError(f"{text}: size {size_text!r} is not a MedMNIST size ({sizes}; 28 if none is given)")
    size = int(size_text) if at else 28
    entry = MEDMNIST.get(sub)
    counts = dict(zip(("_train", "_val", "_test"), entry.split)) if entry else {}
    file = medmnist_file(sub, size)
    px = f" at {size} px" if size != 28 else ""
    info = DatasetInfo(
        f"medmnist-{sub}" + (f"-{size}" if size != 28 else ""),
        f"MedMNIST v2 {sub}{px} (official train/val/test split)",  # Yang et al. (2023), MedMNIST v2 / MedMNIST+
        "official",
        "npz",
        counts,
        (Source(MEDMNIST_URL.format(file=file), f"md5:{entry.md5[size]}", file),) if entry else (),
        ""
        if entry
        else f"{text}: unknown MedMNIST name {sub!r} (known: {known}); a file of your own goes "
        f"at {data_dir / 'medmnist' / file} by hand, or give --url",
    )
    given = data_dir / "medmnist" / file
    path = data_dir.resolve() / "medmnist" / file
    task = "multilabel" if entry is not None and entry.multilabel else kind.task  # ChestMNIST: 14 findings
    return DatasetRef(kind, text, text, info.name, task, path, given, info)


def _medmnist_store_spec(name: str) -> str | None:
    match = _MEDMNIST_STORE.fullmatch(name)
    if not match:
        return None
    sub, size = match["name"], match["size"]
    return f"medmnist:{sub}@{size}" if size else f"medmnist:{sub}"


def _medmnist_listed(data_dir: Path) -> list[tuple[str, bool]]:
    """The known sets at 28 px (only BreastMNIST's row shows while absent), the other sizes found there, then
    any other ``.npz`` found there."""
    rows = [(f"medmnist:{m}", m == "breastmnist") for m in MEDMNIST]
    files = {medmnist_file(m, z): f"medmnist:{m}@{z}" for m in MEDMNIST for z in MEDMNIST_SIZES if z != 28}
    local = sorted((data_dir / "medmnist").glob("*.npz"))
    rows += [(files[p.name], False) for p in local if p.name in files]
    known = {medmnist_file(m) for m in MEDMNIST} | set(files)
    return rows + [(f"medmnist:{p.stem}", False) for p in local if p.name not in known]


def _scan_medmnist(ref: DatasetRef) -> Listing:
    """A multi-label set (ChestMNIST) is read with one 0/1 column per finding."""
    sub = ref.spec.partition(":")[2].partition("@")[0].lower()
    entry = MEDMNIST.get(sub)
    from .scan import scan_npz

    return scan_npz(ref.path, ref.name, classes=sub, multilabel=entry is not None and entry.multilabel)


register(
    SourceKind(
        "medmnist",
        ("medmnist:NAME",),  # and NAME@SIZE: its own messages say so
        "classification",
        _parse_medmnist,
        _scan_medmnist,
        store_spec=_medmnist_store_spec,
        listed=_medmnist_listed,
    )
)


def _folder_name(path: Path) -> str:
    """A folder's store name: its own name, with anything but letters, digits, ``_.-`` replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.name).lstrip("._").replace("..", "_") or "folder"


def _parse_path(
    kind: SourceKind, text: str, argument: str, data_dir: Path, *, describe: str, protocol: str, layout: str
) -> DatasetRef:
    """A kind whose argument is a path (``folder:PATH``, ``seg:PATH``): made absolute once."""
    if not argument:
        raise UsageError(f"{kind.name}: needs a path, e.g. {kind.name}:/data/my_images")
    given = Path(argument).expanduser()
    path = given.resolve()
    name = _folder_name(path)
    info = DatasetInfo(name, describe.format(path=given), protocol, layout)
    return DatasetRef(kind, text, f"{kind.name}:{path}", name, kind.task, path, given, info)


register(
    SourceKind(
        "folder",
        ("folder:PATH",),
        "classification",
        partial(_parse_path, describe="image folder {path}", protocol="cv5-or-predefined", layout="folder"),
        _scan_folder,
    )
)
register(
    SourceKind(
        "seg",
        ("seg:PATH",),
        "segmentation",
        partial(_parse_path, describe="segmentation folder {path} (images/ + masks/)", protocol="cv5", layout="seg"),
        _scan_seg,
        images="images",
    )
)


# --------------------------------------------------------------------------- manifests and bare paths
MANIFEST_SUFFIXES = (".csv", ".tsv", ".tab")


def _parse_csv(kind: SourceKind, text: str, argument: str, data_dir: Path) -> DatasetRef:
    """``csv:PATH``: the store name is the manifest's file name without its suffix."""
    if not argument:
        raise UsageError("csv: needs a manifest, e.g. csv:/data/study/images.csv")
    given = Path(argument).expanduser()
    path = given.resolve()
    name = _folder_name(Path(path.stem))
    info = DatasetInfo(name, f"manifest {given}", "cv5-or-split", "csv")
    return DatasetRef(kind, text, f"{kind.name}:{path}", name, kind.task, path, given, info)


def _scan_csv(ref: DatasetRef) -> Listing:
    from .manifest import scan_manifest

    return scan_manifest(ref.path, dict(ref.options))


def _csv_task(ref: DatasetRef) -> str:
    """``multilabel`` for a manifest with ``labels=`` columns or ``|``-separated label cells (read cheaply,
    without its images), else the kind's task."""
    from .manifest import manifest_task

    return manifest_task(ref.path, dict(ref.options)) or ref.kind.task


register(
    SourceKind(
        "csv",
        ("csv:PATH",),
        "classification",
        _parse_csv,
        _scan_csv,
        options=("path", "label", "patient", "split", "labels"),  # column names: csv:m.csv?label=diagnosis
        task_of=_csv_task,
    )
)


def _claims_path(text: str) -> bool:
    """An existing folder, or a manifest's file name (an absent one is then reported as missing)."""
    path = Path(text).expanduser()
    return path.suffix.lower() in MANIFEST_SUFFIXES or path.is_dir()


def _parse_bare(kind: SourceKind, text: str, argument: str, data_dir: Path) -> DatasetRef:
    """A bare path is read as the kind its layout says: ``csv:`` for a manifest, ``seg:`` for images/ and
    masks/, ``folder:`` otherwise; the spec stays as typed, the absolute spec names the kind."""
    path = Path(argument).expanduser()
    if path.suffix.lower() in MANIFEST_SUFFIXES and not path.is_dir():
        target = SOURCES["csv"]
    elif (path / "images").is_dir() and (path / "masks").is_dir():
        target = SOURCES["seg"]
    else:
        target = SOURCES["folder"]
    return target.parse(target, text, argument, data_dir)


register(
    SourceKind(
        "path",
        ("PATH",),
        "classification",
        _parse_bare,
        lambda ref: ref.kind.scan(ref),  # never called: a bare path resolves to the kind it is
        prefixed=False,
        claims=_claims_path,
    )
)
