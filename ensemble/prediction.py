"""``ens predict``: apply stored members to new images and fuse them.

Each member is applied as the mean of its fold models' softmax outputs (the cross-validation
models together form the member, as nnU-Net applies its folds), or as one fold's model with
``fold``. Each member's preprocessing comes from its recipe (input size; grey images to RGB and
ImageNet normalisation, as in training), decoded by the same functions training used, so a
fold model reproduces the probabilities stored when it was trained. The members are fused
with the expression's rule; uncertainty columns come with every row:

* ``entropy`` -- predictive entropy of the fused row, -sum p log p (natural log, 0 log 0 = 0);
* ``mutual_information`` -- entropy of the members' mean minus the mean of the members' entropies
  (the part of the uncertainty that comes from the members disagreeing, epistemic);
* ``agreement`` -- share of members whose own prediction is the fused prediction.

Segmentation members give probability maps: they are fused per pixel with the same rules at the
largest input size of the members, resized (bilinear) to each image's own size, and the argmax is
written as a mask PNG of the training's convention (binary: 0/255; label maps: class indices) into
``--masks DIR``; the table then has one row per image with the mask's path, each foreground class's
share of the pixels, and the mean over pixels of the entropy and agreement columns.

Multi-label members give one sigmoid probability per label: the table has one column per label (named
by the label) with its fused probability, ``predicted`` (the labels above 0.5, joined by ``|``, empty
for none) and ``agreement`` (the share of member calls at 0.5 that match the fused calls).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import UsageError
from .fusion import select
from .fusion.rules import RULES
from .store import Member, Store
from .tasks import get_task

RESERVED = ("path", "predicted", "entropy", "mutual_information", "agreement")


@dataclass
class Inputs:
    """The images to predict: files (decoded at each member's size), or arrays from a dataset."""

    ids: list[str]
    files: list[Path] | None = None
    pixels: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)  # what the caller should hear (an input given twice)
    _decoded: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def shapes(self) -> list[tuple[int, int]]:
        """(height, width) of every input as it is on disk (from the file header), for masks of its size."""
        from .data.images import image_size

        if self.files is None:
            return [tuple(p.shape[:2]) for p in self.pixels]
        return [image_size(f)[::-1] for f in self.files]

    def images(self, size: int, dicom_window: str = "file") -> np.ndarray:
        """(N, size, size, 3) uint8, decoded once per size and DICOM window (with the training's own functions)."""
        key = (size, dicom_window)
        if key not in self._decoded:
            from .data.images import prepare, read_image

            if self.files is not None:
                self._decoded[key] = np.stack([read_image(f, size, dicom_window) for f in self.files])
            else:
                self._decoded[key] = np.stack([prepare(img, size) for img in self.pixels])
        return self._decoded[key]

    def for_member(self, member: Applicable) -> np.ndarray:
        """The images as ``member`` was trained to see them: its input size and DICOM window."""
        return self.images(member.size, member.dicom_window)


def collect_inputs(items: list[str], data_dir: Path) -> Inputs:
    """Image files, folders (recursively) and dataset specs (``folder:PATH``; ``medmnist:NAME`` gives its
    test split; ``seg:PATH`` its images), in the order given; a missing path is an error naming it."""
    from .data.images import count_dicom, is_image
    from .data.scan import check_utf8_name, scan
    from .data.sources import resolve_prefixed

    ids: list[str] = []
    files: list[Path] = []
    arrays: list[np.ndarray] = []
    for item in items:
        ref = resolve_prefixed(item, data_dir)  # None: a file or folder
        if ref is not None and ref.images_folder is not None:
            item = str(ref.images_folder)
        elif ref is not None:
            listing = scan(ref)
            if listing.pixels is not None:
                test = [i for i, g in enumerate(listing.groups or []) if g == "test"] or list(range(len(listing.ids)))
                arrays.append(listing.pixels[test])
                ids += [f"{item}/{listing.ids[i]}" for i in test]
            else:
                files += listing.files
                ids += [str(ref.given_path / i) for i in listing.ids]  # as the user spelled the folder
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image(p))
            if not found:
                raise UsageError(f"INPUT {item}: the folder holds no images")
            files += found
            ids += [str(p) for p in found]
        elif path.is_file():
            files.append(path)
            ids.append(str(path))
        elif path.exists():
            raise UsageError(f"INPUT {item}: not a regular file or a folder (a device, pipe or socket)")
        else:
            raise UsageError(f"INPUT {item}: no such file or folder")
    for f in files:
        check_utf8_name(f, "INPUT ")
    count_dicom(files)  # pydicom is there if any input needs it
    if files and arrays:
        raise UsageError("INPUT: give image files and folders, or one array dataset (medmnist:NAME), not both")
    keys = ids if arrays else [os.path.realpath(f) for f in files]  # the same image by two spellings too
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        seen.setdefault(key, i)
    first = sorted(seen.values())  # the first time each image was given, in the order given
    notes = []
    if len(first) < len(keys):
        twice = [ids[i] for i in sorted(set(range(len(keys))) - set(first))]
        more = f" and {len(twice) - 3} more" if len(twice) > 3 else ""
        notes.append(
            f"{len(twice)} input image(s) given more than once ({', '.join(twice[:3])}{more}); each is predicted once"
        )
        ids = [ids[i] for i in first]
    if arrays:
        pixels = np.concatenate(arrays)
        return Inputs(ids, pixels=pixels[first] if notes else pixels, notes=notes)
    return Inputs(ids, files=[files[i] for i in first] if notes else files, notes=notes)


class Applicable(Protocol):
    """What applying a member needs -- its name, classes, input size, normalisation, fold count and fold
    models -- so that a store member (:class:`StoredMember`) and an exported one
    (:class:`ensemble.exported.ExportedMember`) feed the same code."""

    name: str
    classes: list[str]
    size: int
    normalisation: str
    folds: int
    channels_last: bool  # how it was trained (--memory-format), so its fold probabilities come back bit for bit
    dicom_window: str  # how its DICOM inputs become grey levels (--dicom-window, recorded in its recipe)

    def fold_model(self, k: int, device: Any) -> Any:
        """Fold ``k``'s network in eval mode on ``device``: called on a uint8-normalised NCHW batch."""
        ...


def build_fold_model(
    model_name: str, stem: str, n_classes: int, path: Path, device: Any, *, channels_last: bool = False
) -> Any:
    """The network ``model_name`` with the weights of ``path`` (read as tensors only, float32 on ``device``,
    channels-last if it was trained so)."""
    from safetensors.torch import load_file

    from .errors import StoreError, first_line
    from .learn.model import create_model, output_channels

    model = create_model(model_name, output_channels(model_name, n_classes), pretrained=False, stem=stem)
    try:
        state = load_file(path)
        model.load_state_dict({n: t.float() if t.is_floating_point() else t for n, t in state.items()})
    except Exception as err:  # a damaged or foreign file
        raise StoreError(f"{path}: cannot be loaded into {model_name} ({first_line(err, 200)})") from None
    model = model.to(device).eval()
    if channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    return model


def load_fold_model(member: Member, k: int, device: Any) -> Any:
    """Fold ``k``'s model of the store member ``member`` (weights read as tensors only, float32 on ``device``)."""
    recipe = member.meta.recipe
    return build_fold_model(
        recipe["model"],
        recipe.get("stem", "default"),
        len(member.classes),
        member.model_file(k),
        device,
        channels_last=trained_channels_last(member),
    )


def recorded_dicom_window(member: Member) -> str:
    """The member's ``--dicom-window`` (members of datasets without DICOM images record none: ``file``)."""
    import click

    from .errors import StoreError
    from .options import DicomWindow

    dicom = member.meta.recipe.get("dicom")
    window = dicom.get("window", "file") if isinstance(dicom, dict) else "file"
    try:
        return DicomWindow().convert(window, None, None)
    except click.BadParameter as err:
        raise StoreError(f"{member.name}: its recipe's dicom window {window!r} is not one ({err.message})") from None


def trained_channels_last(member: Member) -> bool:
    """``--memory-format channels-last`` as the member recorded it (members before ens 0.4: NCHW)."""
    return (member.meta.hardware or {}).get("memory_format") == "channels-last"


@dataclass(frozen=True)
class StoredMember:
    """A store member as :class:`Applicable`, read from its recipe."""

    member: Member

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def classes(self) -> list[str]:
        return self.member.classes

    @property
    def size(self) -> int:
        return int(self.member.meta.recipe["size"])

    @property
    def normalisation(self) -> str:
        return self.member.meta.recipe.get("normalisation", "imagenet")

    @property
    def folds(self) -> int:
        return self.member.meta.folds

    @property
    def channels_last(self) -> bool:
        return trained_channels_last(self.member)

    @property
    def dicom_window(self) -> str:
        return recorded_dicom_window(self.member)

    def fold_model(self, k: int, device: Any) -> Any:
        return load_fold_model(self.member, k, device)


def member_probs(
    member: Applicable,
    inputs: Inputs,
    *,
    device: Any,
    batch_size: int,
    tta: bool,
    fold: int | None = None,
    advance: Callable[[int], None] = lambda n: None,
    convert: Callable[[Any], Any] | None = None,
) -> np.ndarray:
    """(N, C): the mean softmax of the member's fold models (or of fold ``fold`` alone); ``convert`` is the
    task's logits-to-probabilities (softmax when None)."""
    from .learn.infer import NORMALISATIONS, Normaliser, nchw, probabilities

    images = inputs.for_member(member)
    normalise = Normaliser(device, *NORMALISATIONS[member.normalisation], channels_last=member.channels_last)
    folds = [fold] if fold is not None else list(range(member.folds))
    total = np.zeros((len(inputs), len(member.classes)), np.float64)
    for k in folds:
        model = member.fold_model(k, device)

        def batches():  # noqa: ANN202
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                yield nchw(chunk)
                advance(len(chunk))

        total += probabilities(model, batches(), normalise, n_classes=len(member.classes), tta=tta, convert=convert)
    return (total / len(folds)).astype(np.float32)


def _entropy(p: np.ndarray) -> np.ndarray:
    p = p.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)


def check_members(members: list[Member]) -> None:
    """Every store member can predict: a recipe, fold models kept, one task and one class list."""
    for m in members:
        if not m.meta.recipe:
            raise UsageError(f"{m.name} records no recipe (trained by an older ens or by hand): it cannot predict")
        if not m.has_models:
            raise UsageError(
                f"{m.name} has no fold models (trained with --no-keep-weights); retrain it to predict with it"
            )
        if m.meta.task != members[0].meta.task:
            raise UsageError(
                f"{m.name} is a {m.meta.task} member, {members[0].name} a {members[0].meta.task} one: "
                "they cannot be fused"
            )
        if m.classes != members[0].classes:
            raise UsageError(
                f"{m.name} has classes {m.classes}, {members[0].name} has {members[0].classes}: they cannot be fused"
            )


def predict(
    store: Store,
    dataset: str,
    expr: str,
    inputs: Inputs,
    *,
    rule: str = "sum",
    device: str = "auto",
    batch_size: int = 64,
    tta: bool = False,
    fold: int | None = None,
    progress: bool = False,
    masks: Path | None = None,
):  # noqa: ANN201
    """One row per input: path, fused probability per class, predicted class and the uncertainty columns
    (segmentation members: the mask written into ``masks`` and its summary, see :func:`predict_masks`)."""
    _, members = select(store, dataset, expr)
    check_members(members)
    return apply_members(
        [StoredMember(m) for m in members],
        members[0].meta.task,
        inputs,
        what=expr,
        rule=rule,
        device=device,
        batch_size=batch_size,
        tta=tta,
        fold=fold,
        progress=progress,
        masks=masks,
    )


def apply_members(
    members: Sequence[Applicable],
    task_name: str,
    inputs: Inputs,
    *,
    what: str,
    rule: str,
    device: str,
    batch_size: int,
    tta: bool,
    fold: int | None,
    progress: bool,
    masks: Path | None,
):  # noqa: ANN201
    """The task's table for ``inputs`` from members of one task and class list, whatever holds them (a store
    or an export); ``what`` names the ensemble in usage errors."""
    from rich.progress import Progress

    from .learn.trainer import resolve_device

    if rule not in RULES:
        raise UsageError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    for m in members:
        if fold is not None and not 0 <= fold < m.folds:
            raise UsageError(f"--fold {fold}: {m.name} has folds 0..{m.folds - 1}")
    task = get_task(task_name)
    task.check_predict(what, masks)
    dev = resolve_device(device)
    views = sum(1 if fold is not None else m.folds for m in members) * len(inputs)
    with Progress(*Progress.get_default_columns(), disable=not progress, transient=True) as bar:
        job = bar.add_task(f"predicting {len(inputs)} image(s) with {len(members)} member(s)", total=views)
        return task.predict(
            list(members),
            inputs,
            rule=rule,
            device=dev,
            batch_size=batch_size,
            tta=tta,
            fold=fold,
            masks=masks,
            advance=lambda n: bar.advance(job, n),
        )


def stacked_probs(
    members: list[Applicable],
    inputs: Inputs,
    *,
    device: Any,
    batch_size: int,
    tta: bool,
    fold: int | None,
    advance: Callable[[int], None],
    convert: Callable[[Any], Any] | None = None,
) -> np.ndarray:
    """(M, N, C): every member's probabilities of every input (:func:`member_probs`), for a fusion rule."""
    return np.stack(
        [
            member_probs(
                m, inputs, device=device, batch_size=batch_size, tta=tta, fold=fold, advance=advance, convert=convert
            )
            for m in members
        ]
    )


def predict_classes(
    members: list[Applicable],
    inputs: Inputs,
    *,
    rule: str,
    device,  # noqa: ANN001
    batch_size: int,
    tta: bool,
    fold: int | None,
    advance: Callable[[int], None],
    masks: Path | None = None,
):  # noqa: ANN201
    """The classification table: fused probabilities per class, the predicted class, and the uncertainty
    columns of the module docstring."""
    import pandas as pd

    classes = members[0].classes
    stacked = stacked_probs(members, inputs, device=device, batch_size=batch_size, tta=tta, fold=fold, advance=advance)
    fused = RULES[rule](stacked).astype(np.float64)
    predicted = fused.argmax(1)
    mean = stacked.astype(np.float64).mean(0)
    columns = [c if c not in RESERVED else f"class:{c}" for c in classes]
    table = pd.DataFrame(fused, columns=columns)
    table.insert(0, "path", inputs.ids)
    table["predicted"] = [classes[i] for i in predicted]
    table["entropy"] = _entropy(fused)
    table["mutual_information"] = _entropy(mean) - _entropy(stacked).mean(0)
    table["agreement"] = (stacked.argmax(2) == predicted[None, :]).mean(0)
    return table


def predict_labels(
    members: list[Applicable],
    inputs: Inputs,
    *,
    rule: str,
    device,  # noqa: ANN001
    batch_size: int,
    tta: bool,
    fold: int | None,
    advance: Callable[[int], None],
    convert: Callable[[Any], Any],
    combine: Callable[[np.ndarray], np.ndarray],
    masks: Path | None = None,
):  # noqa: ANN201
    """The multi-label table: one fused probability column per label, the labels predicted present (above
    0.5, joined by ``|``) and the members' agreement with those calls. ``convert`` and ``combine`` are the
    task's sigmoid and per-label rule."""
    import pandas as pd

    classes = members[0].classes
    stacked = stacked_probs(
        members, inputs, device=device, batch_size=batch_size, tta=tta, fold=fold, advance=advance, convert=convert
    )
    fused = combine(stacked).astype(np.float64)
    present = fused > 0.5
    columns = [c if c not in RESERVED else f"label:{c}" for c in classes]
    table = pd.DataFrame(fused, columns=columns)
    table.insert(0, "path", inputs.ids)
    table["predicted"] = ["|".join(c for c, p in zip(classes, row) if p) for row in present]
    table["agreement"] = ((stacked > 0.5) == present[None]).mean(axis=(0, 2))
    return table


def mask_targets(inputs: Inputs, folder: Path) -> list[Path]:
    """``folder/<name>.png`` for every input, checked before any work: two inputs may not write the same
    file, and a file already there is never overwritten."""
    if inputs.files is None:
        raise UsageError("--masks: segmentation members predict image files or folders, not an array dataset")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--masks {folder}: not a folder")
    from .data.images import image_stem

    targets = [folder / f"{image_stem(Path(f))}.png" for f in inputs.files]
    seen: dict[Path, Path] = {}
    for source, target in zip(inputs.files, targets):
        if target in seen:
            raise UsageError(
                f"--masks: {seen[target]} and {source} would both write {target}; predict them into separate folders"
            )
        seen[target] = source
        if target.exists():
            raise UsageError(f"--masks: {target} already exists; predicted masks never overwrite a file")
    return targets


def predict_masks(
    members: list[Applicable],
    inputs: Inputs,
    *,
    rule: str,
    device,  # noqa: ANN001
    batch_size: int,
    tta: bool,
    fold: int | None,
    advance: Callable[[int], None],
    masks: Path,
):  # noqa: ANN201
    """Fuse the members' probability maps per pixel, a chunk of images at a time (fold models loaded once), and
    write each image's mask into ``masks`` at its own size; returns one summary row per image. The targets are
    checked before any model is loaded (nothing is overwritten)."""
    import io

    import pandas as pd
    import torch
    from PIL import Image

    from .io import atomic_write_bytes

    targets = mask_targets(inputs, masks)
    shapes = inputs.shapes()

    from .learn.infer import NORMALISATIONS, Normaliser, nchw, probabilities

    classes = members[0].classes
    size = max(m.size for m in members)
    folds = {m.name: [fold] if fold is not None else list(range(m.folds)) for m in members}
    models = {m.name: [m.fold_model(k, device) for k in folds[m.name]] for m in members}
    normalisers = {
        m.name: Normaliser(device, *NORMALISATIONS[m.normalisation], channels_last=m.channels_last) for m in members
    }
    binary = len(classes) == 2
    rows = []
    for folder in {t.parent for t in targets}:
        folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(inputs), batch_size):
        stop = min(start + batch_size, len(inputs))
        per_member = []
        for m in members:
            images = inputs.for_member(m)[start:stop]
            maps = sum(
                probabilities(model, [nchw(images)], normalisers[m.name], n_classes=len(classes), tta=tta)
                for model in models[m.name]
            ) / len(models[m.name])
            if maps.shape[-1] != size:  # members trained at another size are fused at the largest
                maps = torch.nn.functional.interpolate(
                    torch.from_numpy(maps), size=(size, size), mode="bilinear", align_corners=False
                ).numpy()
            per_member.append(maps)
            advance((stop - start) * len(models[m.name]))
        stacked = np.stack(per_member)  # (M, n, C, size, size)
        fused = RULES[rule](stacked).astype(np.float32)
        entropy = _entropy(np.moveaxis(fused, 1, -1)).mean(axis=(1, 2))
        agreement = (stacked.argmax(2) == fused.argmax(1)[None]).mean(axis=(0, 2, 3))
        for i, (target, (h, w)) in enumerate(zip(targets[start:stop], shapes[start:stop])):
            full = torch.nn.functional.interpolate(
                torch.from_numpy(fused[i : i + 1]), size=(h, w), mode="bilinear", align_corners=False
            )[0]
            labels = full.argmax(0).numpy().astype(np.uint8)
            png = io.BytesIO()
            Image.fromarray(labels * 255 if binary else labels).save(png, format="PNG")
            atomic_write_bytes(target, png.getvalue())  # a failed write leaves no half mask
            rows.append(
                {
                    "path": inputs.ids[start + i],
                    "mask": str(target),
                    **{f"area:{c}": float((labels == k).mean()) for k, c in enumerate(classes) if k},
                    "entropy": float(entropy[i]),
                    "agreement": float(agreement[i]),
                }
            )
    return pd.DataFrame(rows)


def write_table(table, out: Path | None) -> str | None:  # noqa: ANN001
    """CSV (default, or to stdout), JSON or Parquet by ``out``'s suffix, written atomically (a failed write
    leaves no file behind to block the rerun); returns the CSV text for stdout."""
    from .io import atomic_write_bytes

    if out is None:
        return table.to_csv(index=False, float_format="%.8g")
    suffix = out.suffix.lower()
    if suffix == ".json":
        data = table.to_json(orient="records", indent=2).encode()
    elif suffix == ".parquet":
        import io

        buf = io.BytesIO()
        try:
            table.to_parquet(buf, index=False)
        except ImportError:
            raise UsageError("--out *.parquet needs pyarrow (pip install pyarrow); or write .csv or .json") from None
        data = buf.getvalue()
    elif suffix in (".csv", ""):
        data = table.to_csv(index=False, float_format="%.8g").encode()
    else:
        raise UsageError(f"--out {out}: write .csv, .json or .parquet")
    atomic_write_bytes(out, data)
    return None
