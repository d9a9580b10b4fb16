"""Dataset sources: one registry of the kinds of dataset argument, and one parser for them all.

A ``--dataset`` argument (or a dataset given to ``ens predict``) is one of

* a name of the catalogue -- ``hela``, ``bg``, ``lar``, ``digits`` (:data:`.catalog.CATALOG`);
* ``medmnist:NAME`` -- MedMNIST's official ``NAME.npz``, at ``<data-dir>/medmnist/NAME.npz``;
* ``folder:PATH`` -- an image folder: class folders, or fold folders of class folders;
* ``seg:PATH`` -- a segmentation folder: ``images/`` and ``masks/``.

:func:`resolve` is the one door: it parses the text once into a frozen :class:`DatasetRef` that
knows its kind, its name in the member store, its task, its absolute path (resolved against the
current directory once, so a worker started elsewhere reads the same files), how it is scanned,
and both of its spellings -- ``spec``, as the user typed it (recorded in retrain commands, which
stay portable), and ``absolute_spec`` (what workers are given).

Each kind is one :class:`SourceKind` in :data:`SOURCES` (modelled on timm's registries). A new kind
(``csv:PATH``, a bare folder path) is one :func:`register` call: nothing else branches on kinds.
Nothing here imports numpy, PIL or torch at module level: usage errors must answer fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError, UsageError
from .catalog import CATALOG, MEDMNIST, MEDMNIST_URL, DatasetInfo, Source

if TYPE_CHECKING:
    from .scan import Listing

TASKS = ("classification", "segmentation")


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
    task: str  # "classification" or "segmentation" (a parse may still set a ref's own)
    parse: Callable[[SourceKind, str, str, Path], DatasetRef]
    scan: Callable[[DatasetRef], Listing]  # what the dataset holds (ids, labels, groups), nothing decoded
    prefixed: bool = True
    claims: Callable[[str], bool] | None = None  # unprefixed kinds: whether a bare word is theirs
    store_spec: Callable[[str], str | None] | None = None  # a store name back to the text that makes it
    listed: Callable[[Path], list[tuple[str, bool]]] | None = None  # `ens data list` rows: (text, show if absent)
    images: str | None = None  # a sub-folder holding the images alone (read as a plain folder by ens predict)


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
    kind = _prefixed_kind(text)
    if kind is not None:
        return kind.parse(kind, text, text.partition(":")[2], data_dir)
    for kind in SOURCES.values():
        if not kind.prefixed and kind.claims(text):
            return kind.parse(kind, text, text, data_dir)
    raise UsageError(f"unknown dataset {text!r}; valid: {valid_forms()}")


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


def _scan_npz(ref: DatasetRef) -> Listing:
    from .scan import scan_npz

    return scan_npz(ref.path, ref.name)


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


def _parse_medmnist(kind: SourceKind, text: str, argument: str, data_dir: Path) -> DatasetRef:
    sub = argument.lower()
    if not sub:
        raise UsageError(f"medmnist: needs a name, e.g. medmnist:breastmnist ({', '.join(MEDMNIST)})")
    if not _MEDMNIST_NAME.fullmatch(sub):
        raise UsageError(f"{text} is not a MedMNIST name (letters, digits, '_' or '-'; known: {', '.join(MEDMNIST)})")
    md5, n_train, n_val, n_test = MEDMNIST.get(sub, (None, 0, 0, 0))
    info = DatasetInfo(
        f"medmnist-{sub}",
        f"MedMNIST v2 {sub} (official train/val/test split)",  # Yang et al. (2023), MedMNIST v2
        "official",
        "npz",
        {"_train": n_train, "_val": n_val, "_test": n_test} if md5 else {},
        (Source(MEDMNIST_URL.format(name=sub), f"md5:{md5}" if md5 else None, f"{sub}.npz"),),
    )
    given = data_dir / "medmnist" / f"{sub}.npz"
    path = data_dir.resolve() / "medmnist" / f"{sub}.npz"
    return DatasetRef(kind, text, text, info.name, kind.task, path, given, info)


def _medmnist_listed(data_dir: Path) -> list[tuple[str, bool]]:
    """The known sets (only BreastMNIST's row shows while absent), then any other ``.npz`` found there."""
    rows = [(f"medmnist:{m}", m == "breastmnist") for m in MEDMNIST]
    local = sorted((data_dir / "medmnist").glob("*.npz"))
    return rows + [(f"medmnist:{p.stem}", False) for p in local if p.stem not in MEDMNIST]


register(
    SourceKind(
        "medmnist",
        ("medmnist:NAME",),
        "classification",
        _parse_medmnist,
        _scan_npz,
        store_spec=lambda name: f"medmnist:{name.removeprefix('medmnist-')}" if name.startswith("medmnist-") else None,
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
