"""``csv:PATH``: a manifest of images, the way hospital data comes -- one row per image.

Columns (names mappable by the dataset argument's options, ``csv:m.csv?label=diagnosis&patient=subject``):

* ``path`` -- the image file, relative to the manifest's folder or absolute; the sample's id is this
  value as written, so a ``--splits`` file or ``ens predict`` names images as the manifest does;
* ``label`` -- the class name;
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

from ..errors import DataError
from .images import is_image
from .scan import Listing

COLUMNS = ("path", "label", "patient", "split")  # the option keys, each a column's default name too
REQUIRED = ("path", "label")
SPLIT_VALUES = ("train", "val", "test")


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
    names = {role: columns.get(role, role) for role in COLUMNS}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter(path))
            header = [h.strip() for h in next(reader, [])]
            where = {}
            for role, name in names.items():
                if name in header:
                    where[role] = header.index(name)
                elif role in REQUIRED or role in columns:
                    found = ", ".join(repr(h) for h in header) or "none"
                    raise DataError(
                        f"{path}: no column {name!r} for the {role} (its columns: {found}); "
                        f"name yours with csv:{path}?{role}=COLUMN"
                    )
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read manifest {path}: {err}") from None
    if not rows:
        raise DataError(f"manifest {path} has no rows")
    return _listing(path, names, where, rows)


def _listing(path: Path, names: dict[str, str], where: dict[str, int], rows: list[tuple[int, list[str]]]) -> Listing:
    root = path.parent
    ids, files, labels, patients, splits = [], [], [], [], []
    first_row: dict[str, int] = {}
    for line, row in rows:

        def cell(role: str, line: int = line, row: list[str] = row) -> str:
            value = row[where[role]].strip() if where[role] < len(row) else ""
            if not value:
                raise DataError(f"{path} row {line}, column {names[role]!r}: empty {role}")
            return value

        image = cell("path")
        if image in first_row:
            raise DataError(
                f"{path} row {line}, column {names['path']!r}: {image!r} is listed already (row {first_row[image]})"
            )
        first_row[image] = line
        file = Path(image).expanduser()
        file = file if file.is_absolute() else root / file
        if not file.is_file():
            raise DataError(f"{path} row {line}, column {names['path']!r}: no image file {file}")
        if not is_image(file):
            raise DataError(f"{path} row {line}, column {names['path']!r}: {file} is not an image file")
        ids.append(image)
        files.append(file)
        labels.append(cell("label"))
        if "patient" in where:
            patients.append(cell("patient"))
        if "split" in where:
            split = cell("split").lower()
            if split not in SPLIT_VALUES:
                raise DataError(
                    f"{path} row {line}, column {names['split']!r}: unknown split {split!r} "
                    f"(one of {', '.join(SPLIT_VALUES)})"
                )
            splits.append(split)
    classes = _class_order(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    listing = Listing(
        ids,
        np.array([index[y] for y in labels], dtype=np.int64),
        classes,
        splits or None,
        files=files,
        patients=patients or None,
    )
    if splits:
        _check_splits(path, names["split"], listing)
    return listing


def _check_splits(path: Path, column: str, listing: Listing) -> None:
    """A predefined split trains on ``train`` and tests on ``test``: both must have rows. A patient on two
    sides of it is a warning (the figures would be optimistic), not an error: the protocol is the user's."""
    for needed in ("train", "test"):
        if needed not in listing.groups:
            raise DataError(f"{path}: column {column!r} has no {needed!r} rows (a split needs train and test)")
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
