"""``csv:PATH``: a manifest of images, the way hospital data comes -- one row per image.

Columns (names mappable by the dataset argument's options, ``csv:m.csv?label=diagnosis&patient=subject``):

* ``path`` -- the image file, relative to the manifest's folder or absolute; the sample's id is this
  value as written, so a ``--splits`` file or ``ens predict`` names images as the manifest does;
* ``label`` -- the class name; or, for a multi-label manifest, the image's labels separated by ``|``
  (``effusion|nodule``; an empty cell is an image with no finding) -- one ``|`` anywhere in the column
  makes the manifest multi-label (its task is ``multilabel``), and a cell there that separates by ``,``
  or ``;`` is refused;
* ``labels`` (an option only, ``csv:m.csv?labels=effusion,nodule,mass``) -- instead of ``label``, one 0/1
  column per label, named in the order they get;
* ``patient`` (optional) -- any group id: no patient's images are ever in two folds' test sets, nor on
  both sides of a hold-out split;
* ``split`` (optional) -- ``train``, ``val`` or ``test``: the predefined protocol (as MedMNIST's official
  split); without it, 5-fold cross-validation (grouped by patient when there is a patient column).

``.tsv`` (and ``.tab``) files are tab-separated, anything else comma-separated. Everything is checked
here, before any work: a missing column, file or label, an unknown split value, a path given twice --
each one line naming the row (the file's line number, the header being row 1) and the column.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import DataError, ManifestError
from .images import is_image
from .scan import Listing

COLUMNS = ("path", "label", "patient", "split")  # the option keys, each a column's default name too
REQUIRED = ("path", "label")
SPLIT_VALUES = ("train", "val", "test")
MULTI_SEPARATOR = "|"  # between the labels of one cell of a multi-label manifest
OTHER_SEPARATORS = (",", ";")  # refused beside it: a cell is read one way only
LABELS_OPTION = "labels"  # ?labels=a,b,c: one 0/1 column per label
BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


def _label_columns(path: Path, columns: dict[str, str]) -> list[str] | None:
    """The 0/1 columns of ``?labels=a,b,c`` (None without the option), each named once."""
    if LABELS_OPTION not in columns:
        return None
    if "label" in columns:
        raise ManifestError(
            f"csv:{path}: give label= (one column of labels) or labels= (one 0/1 column per label), not both"
        )
    names = [n.strip() for n in columns[LABELS_OPTION].split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise ManifestError(f"csv:{path}?labels={columns[LABELS_OPTION]}: name each 0/1 column once, separated by ','")
    return names


def manifest_task(path: Path, columns: dict[str, str]) -> str | None:
    """``multilabel`` when the manifest is one (``labels=`` given, or a ``|`` in its label column), else None;
    a cheap look (the header and one column, no image), and None where the file cannot be read (the scan
    then says why)."""
    if LABELS_OPTION in columns:
        return "multilabel"
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter(path))
            header = [h.strip() for h in next(reader, [])]
            name = columns.get("label", "label")
            if name not in header:
                return None
            at = header.index(name)
            if any(MULTI_SEPARATOR in row[at] for row in reader if at < len(row)):
                return "multilabel"
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def _class_order(names: set[str]) -> list[str]:
    """Class names sorted; numerically when every one is an integer (``2`` before ``10``)."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def scan_manifest(path: Path, columns: dict[str, str]) -> Listing:
    """List a manifest; ``columns`` maps ``path``/``label``/``patient``/``split`` to the file's column names
    (a role not in it is its own name; ``patient`` and ``split`` are optional unless mapped)."""
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist" if not path.exists() else f"manifest {path} is not a file")
    label_columns = _label_columns(path, columns)
    names = {role: columns.get(role, role) for role in COLUMNS}
    required = ("path",) if label_columns else REQUIRED
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter(path))
            header = [h.strip() for h in next(reader, [])]
            where = {}
            for role, name in names.items():
                if name in header:
                    where[role] = header.index(name)
                elif role in required or role in columns:
                    found = ", ".join(repr(h) for h in header) or "none"
                    raise ManifestError(
                        f"{path}: no column {name!r} for the {role} (its columns: {found}); "
                        f"name yours with csv:{path}?{role}=COLUMN"
                    )
            for name in label_columns or ():
                if name not in header:
                    found = ", ".join(repr(h) for h in header) or "none"
                    raise ManifestError(f"{path}: no 0/1 column {name!r} of labels= (its columns: {found})")
            binary = {name: header.index(name) for name in label_columns} if label_columns else None
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read manifest {path}: {err}") from None
    if not rows:
        raise DataError(f"manifest {path} has no rows")
    return _listing(path, names, where, rows, binary)


def _listing(
    path: Path,
    names: dict[str, str],
    where: dict[str, int],
    rows: list[tuple[int, list[str]]],
    binary: dict[str, int] | None = None,
) -> Listing:
    root = path.parent
    ids, files, labels, patients, splits = [], [], [], [], []
    label_sets: list[list[str]] = []  # a multi-label manifest's labels of each row
    first_row: dict[str, int] = {}
    multi = binary is None and any(
        where["label"] < len(row) and MULTI_SEPARATOR in row[where["label"]] for _, row in rows
    )
    for line, row in rows:

        def cell(role: str, line: int = line, row: list[str] = row) -> str:
            value = row[where[role]].strip() if where[role] < len(row) else ""
            if not value:
                raise ManifestError(f"{path} row {line}, column {names[role]!r}: empty {role}")
            return value

        image = cell("path")
        if image in first_row:
            raise ManifestError(
                f"{path} row {line}, column {names['path']!r}: {image!r} is listed already (row {first_row[image]})"
            )
        first_row[image] = line
        file = Path(image).expanduser()
        file = file if file.is_absolute() else root / file
        if not file.is_file():
            raise ManifestError(f"{path} row {line}, column {names['path']!r}: no image file {file}")
        if not is_image(file):
            raise ManifestError(f"{path} row {line}, column {names['path']!r}: {file} is not an image file")
        ids.append(image)
        files.append(file)
        if binary is not None:
            label_sets.append(_binary_row(path, line, row, binary))
        elif multi:
            label_sets.append(_label_set(path, line, row[where["label"]] if where["label"] < len(row) else "", names))
        else:
            labels.append(cell("label"))
        if "patient" in where:
            patients.append(cell("patient"))
        if "split" in where:
            split = cell("split").lower()
            if split not in SPLIT_VALUES:
                raise ManifestError(
                    f"{path} row {line}, column {names['split']!r}: unknown split {split!r} "
                    f"(one of {', '.join(SPLIT_VALUES)})"
                )
            splits.append(split)
    if binary is not None or multi:
        classes = list(binary) if binary is not None else _class_order({y for ys in label_sets for y in ys})
        if not classes:
            raise ManifestError(f"{path}: column {names['label']!r} names no label in any row")
        index = {c: i for i, c in enumerate(classes)}
        targets = np.zeros((len(ids), len(classes)), dtype=np.uint8)
        for r, ys in enumerate(label_sets):
            targets[r, [index[y] for y in ys]] = 1
    else:
        classes = _class_order(set(labels))
        index = {c: i for i, c in enumerate(classes)}
        targets = np.array([index[y] for y in labels], dtype=np.int64)
    listing = Listing(
        ids,
        targets,
        classes,
        splits or None,
        files=files,
        patients=patients or None,
    )
    if splits:
        _check_splits(path, names["split"], listing)
    return listing


def _label_set(path: Path, line: int, value: str, names: dict[str, str]) -> list[str]:
    """One cell of a multi-label column: labels separated by ``|``, none for an empty cell."""
    value = value.strip()
    if not value:
        return []
    other = next((sep for sep in OTHER_SEPARATORS if sep in value), None)
    if other is not None:
        raise ManifestError(
            f"{path} row {line}, column {names['label']!r}: {value!r} separates labels by {other!r}, but this "
            f"column is multi-label with {MULTI_SEPARATOR!r} between labels (write {value.replace(other, '|')!r})"
        )
    out = [y.strip() for y in value.split(MULTI_SEPARATOR)]
    if not all(out):
        raise ManifestError(f"{path} row {line}, column {names['label']!r}: {value!r} has an empty label between '|'")
    if len(set(out)) != len(out):
        raise ManifestError(f"{path} row {line}, column {names['label']!r}: {value!r} names a label twice")
    return out


def _binary_row(path: Path, line: int, row: list[str], binary: dict[str, int]) -> list[str]:
    """The labels of a row whose ``labels=`` columns hold 1 (each cell 0 or 1)."""
    out = []
    for name, at in binary.items():
        value = row[at].strip() if at < len(row) else ""
        if value not in BINARY:
            raise ManifestError(
                f"{path} row {line}, column {name!r}: {value!r} is not 0 or 1 (a labels= column holds 0/1 per image)"
            )
        if BINARY[value]:
            out.append(name)
    return out


def _check_splits(path: Path, column: str, listing: Listing) -> None:
    """A predefined split trains on ``train`` and tests on ``test``: both must have rows. A patient on two
    sides of it is a warning (the figures would be optimistic), not an error: the protocol is the user's."""
    for needed in ("train", "test"):
        if needed not in listing.groups:
            raise ManifestError(f"{path}: column {column!r} has no {needed!r} rows (a split needs train and test)")
    if listing.patients:
        sides: dict[str, set[str]] = {}
        for patient, split in zip(listing.patients, listing.groups):
            sides.setdefault(patient, set()).add(split)
        shared = sorted(p for p, s in sides.items() if len(s) > 1)
        if shared:
            listing.warnings.append(
                f"{path}: {len(shared)} patient(s) have images in more than one split (e.g. {shared[0]!r}): "
                "their test figures are optimistic"
            )
