"""One declaration of every training option, and everything derived from it.

:data:`OPTIONS` says, once per option, its name, type (a click type: its range or choices),
its value under each named preset, its help, and whether it is part of a member's identity
(what it learns) or only of how it runs (device, threads, workers, keep_weights,
checkpoint_every). From that table come:

* the flags of ``ens train`` (:func:`click_options`),
* :class:`TrainConfig`'s fields and defaults (the ``paper`` preset, and each run-only default),
* the presets :data:`RECIPES` (``ens train --recipe NAME``; ``ens recipes`` lists them),
* the ``--config`` YAML reader (:func:`read_config`) and ``--set`` parsing (:func:`parse_sets`),
  each value through the same click type as its flag, before any work,
* the recorded retrain command (:func:`train_command`).

What a member was trained with is its recipe (:func:`build_recipe`): two members of one label
(and variant) share one; ``ens train`` refuses to add members under another, and a staged run
resumes only under the recipe it started with. The recipe is plain JSON (what ``member.json``
stores and the store hashes).

This module imports no torch, timm or numpy: the CLI reads it to answer usage errors at once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import click

from .errors import UsageError
from .optim.registry import get, resolve
from .options import NON_NEGATIVE, OPEN_UNIT, POSITIVE, Device, DicomWindow, Milestones, check_value
from .portable import ISAS
from .tasks import TASKS, get_task

if TYPE_CHECKING:
    import torch

    from .data.dataset import Dataset

PRESETS = ("paper", "medmnist", "unet")
"""The named recipes, in the order :attr:`Option.presets` gives their values."""


@dataclass(frozen=True)
class Option:
    """One training option of ``ens train``.

    ``presets`` holds its value under each of :data:`PRESETS` (``None``: not part of the presets,
    ``default`` applies); ``identity`` says whether it changes what a member learns (and so its
    recipe and hash) or only how the run goes. ``nullable`` options take ``None`` ("not set").
    """

    name: str
    type: click.ParamType
    help: str
    presets: tuple[Any, ...] | None = None
    identity: bool = True
    default: Any = None
    nullable: bool = False
    metavar: str | None = None
    default_text: str = "[default: from the recipe]"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def switch(self) -> bool:
        """A boolean: ``--name/--no-name`` on the command line."""
        return isinstance(self.type, click.types.BoolParamType)

    @property
    def in_presets(self) -> bool:
        return self.presets is not None

    def preset(self, name: str) -> Any:
        return self.presets[PRESETS.index(name)] if self.presets is not None else self.default

    def check(self, value: Any) -> Any:
        """A YAML value through this option's flag type; raises :class:`click.BadParameter`."""
        if value is None:
            if self.nullable:
                return None
            raise click.BadParameter("needs a value (null is not one)")
        return check_value(value, self.type)

    def words(self, value: Any) -> list[str]:
        """``value`` on the command line: the words that give it back when parsed."""
        if value is None:
            return []
        if self.switch:
            return [self.flag if value else "--no-" + self.flag[2:]]
        if isinstance(self.type, Milestones):
            return [self.flag, ",".join(map(str, value)) or "none"]
        return [self.flag, repr(value) if isinstance(value, float) else str(value)]

    def click_option(self) -> Callable[[Callable], Callable]:
        """The flag of ``ens train``: recipe options default to ``None`` (the recipe's value)."""
        help_text = " ".join(p for p in (self.help, self.default_text if self.in_presets else "") if p)
        default = None if self.in_presets else self.default
        if self.switch:
            return click.option(f"{self.flag}/--no-{self.flag[2:]}", self.name, default=default, help=help_text)
        return click.option(self.flag, self.name, type=self.type, default=default, metavar=self.metavar, help=help_text)


_CHOICES = {
    "stem": ("default", "small"),
    "augment": ("paper", "flips", "none"),
    "normalise": ("auto", "imagenet", "half"),
    "select": ("last", "best-val-auc", "best-val-loss"),
    "class_weights": ("none", "balanced"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "loss": ("auto", "ce", "dice", "bce-dice", "bce"),
    "memory_format": ("channels-last", "nchw"),
    "cpu_isa": ISAS,
}


def _choice(name: str) -> click.Choice:
    return click.Choice(list(_CHOICES[name]))


class WeightsType(click.ParamType):
    """``--weights``: a weight package (``lite0``, ``pkg:NAME``), ``sha256:HEX`` or an existing file, turned into
    the spelling the recorded command keeps (:func:`ensemble.learn.weights.canonical`); no file is read here."""

    name = "weights"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from .learn.weights import canonical

        if not isinstance(value, (str, Path)):
            self.fail(f"{value!r} is not a weight source", param, ctx)
        try:
            return canonical(str(value))
        except UsageError as err:
            self.fail(f"{value}: {str(err).removeprefix(f'--weights {value}: ')}", param, ctx)  # names the value


class LogChoice(click.Choice):
    """``--log none|tensorboard``, refused as it is parsed (before any training) when tensorboard is missing."""

    def __init__(self) -> None:
        from .learn.tblog import LOGS

        super().__init__(list(LOGS))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from .learn.tblog import check_available

        value = super().convert(value, param, ctx)
        check_available(value)
        return value


# presets:                paper               medmnist    unet
OPTIONS: tuple[Option, ...] = (
    Option(
        "model",
        click.STRING,
        "timm model name, with a weight tag (resnet50.tv_in1k); for segmentation unet, light-unet or "
        "lighter-unet@C (C in 1, 2, 4, ..., 128).",
        ("resnet50.tv_in1k", "resnet18", "lighter-unet@128"),
    ),
    Option("pretrained", click.BOOL, "Start from ImageNet weights.", (True, False, False)),
    Option("size", click.IntRange(min=8), "Input size in pixels.", (224, 28, 256)),
    Option("epochs", click.IntRange(min=1), "", (20, 100, 100)),
    Option("batch_size", click.IntRange(min=2), "", (30, 128, 8)),
    Option(
        "lr",
        POSITIVE,
        "Learning rate of every optimizer of the job",
        (None, 1e-3, 1e-4),
        nullable=True,
        default_text="[default: the recipe's, or the optimizer's paper default].",
    ),
    Option(
        "head_lr_factor", POSITIVE, "Learning-rate factor of the new head (1 under CLMR and TASO).", (20.0, 1.0, 1.0)
    ),
    Option("weight_decay", NON_NEGATIVE, "L2 added to the gradient.", (1e-4, 0.0, 1e-4)),
    Option(
        "augment",
        _choice("augment"),
        "paper: flips + independent x/y scale in [1, 2] (segmentation: flips, rotation, scale, translation, "
        "shear of image and mask); flips; none.",
        ("paper", "none", "paper"),
    ),
    Option(
        "normalise",
        _choice("normalise"),
        "Input mean/std: auto follows the starting weights (timm's pretrained config: 0.5/0.5 for the Lite "
        "models, ImageNet's for torchvision's; ImageNet's from scratch); imagenet; half (0.5/0.5).",
        ("auto", "half", "half"),
    ),
    Option(
        "stem",
        _choice("stem"),
        "small: 3x3 stride-1 first convolution, no max-pool (timm ResNets).",
        ("default", "small", "default"),
    ),
    Option(
        "select",
        _choice("select"),
        "The epoch kept: the last, or the best on the validation split (the dataset's, else an inner "
        "stratified split of each training fold).",
        ("last", "best-val-auc", "last"),
    ),
    Option(
        "val_fraction",
        OPEN_UNIT,
        "Share of each training fold held out for --select when there is no validation split.",
        (0.1, 0.1, 0.1),
    ),
    Option(
        "milestones",
        Milestones(),
        "Epochs at which the learning rate is multiplied by --gamma ('none': constant).",
        ([], [50, 75], []),
        metavar="E1,E2",
    ),
    Option("gamma", POSITIVE, "", (0.1, 0.1, 0.1)),
    Option(
        "class_weights",
        _choice("class_weights"),
        "balanced: cross-entropy weighted by n / (C n_c) of the training fold.",
        ("none", "none", "none"),
    ),
    Option(
        "precision",
        _choice("precision"),
        "Training autocast (auto: bf16 on CUDA, none on CPU); predictions are fp32.",
        ("auto", "auto", "auto"),
    ),
    Option(
        "loss",
        _choice("loss"),
        "auto: cross-entropy for classification, Dice for segmentation, binary cross-entropy per label (bce) "
        "for multi-label.",
        ("auto", "auto", "dice"),
    ),
    Option(
        "plateau",
        click.IntRange(min=0),
        "Halve the learning rate when the validation loss has not improved for EPOCHS epochs (0: off; not "
        "for CLMR/TASO, which follow their own schedule).",
        (0, 0, 5),
        metavar="EPOCHS",
    ),
    Option(
        "dicom_window",
        DicomWindow(),
        "How DICOM pixel values become grey levels, after the file's rescale slope/intercept: file (the file's "
        "window centre/width, else its VOI LUT, else the image's range), minmax (the image's range), CENTRE,WIDTH "
        "(one window for all, e.g. 40,400 in HU) or a CT window (lung, bone, brain, mediastinum, soft-tissue, "
        'liver). Recorded in the recipe of members of a dataset with DICOM images. pip install "ens[dicom]".',
        (None, None, None),
        nullable=True,
        metavar="WINDOW",
        default_text="[default: file]",
    ),
    # identity, not preset: the file's hash is part of the recipe
    Option(
        "weights",
        WeightsType(),
        "Starting weights instead of the timm tag's: a weight package (lite0, lite1, lite2 = "
        'pkg:efficientnet-lite0..2; pip install "ens[pretrained]"), sha256:HEX (a file registered before) or a '
        "state dict / .safetensors FILE (registered by its sha256, which the recorded command names). Loaded "
        "strictly: every tensor but the new head, by name or by position.",
        nullable=True,
        metavar="SOURCE",
    ),
    # run-only: how the run goes, never what it learns
    Option("device", Device(), "cpu, cuda, cuda:N, mps or auto.", identity=False, default="auto"),
    Option("workers", click.IntRange(min=0), "Data-loading worker processes.", identity=False, default=2),
    Option(
        "threads",
        click.IntRange(min=1),
        "torch CPU threads per fold task [default: every core for --executor local, cores / --jobs for a "
        "pool; recorded in each member's command, which reproduces it exactly].",
        identity=False,
        nullable=True,
    ),
    Option(
        "memory_format",
        _choice("memory_format"),
        "Layout of the CPU batches and model: channels-last (the default: tf_efficientnet_lite0 steps 1.3-1.8x "
        "faster) or nchw (every member before ens 0.4); CUDA is always channels-last. The last bits differ, "
        "so each member's command records it.",
        identity=False,
        default="channels-last",
    ),
    Option(
        "cpu_isa",
        _choice("cpu_isa"),
        "CPU code paths of torch, oneDNN, MKL and numba: avx2 (pinned: the member retrains to the same bits on "
        "any x86-64 CPU with AVX2 and the same library versions) or native (this CPU's best, e.g. AVX-512; "
        "every member before ens 0.4). Recorded in each member's command.",
        identity=False,
        default="avx2",
    ),
    Option(
        "keep_weights",
        click.BOOL,
        "Keep each fold's model (safetensors) in the run, so `ens predict` can apply the member.",
        identity=False,
        default=True,
    ),
    Option(
        "checkpoint_every",
        NON_NEGATIVE,
        "Save a fold's training state at most this often (0: after every epoch); a killed run resumes from "
        "the last save, to the same member.",
        identity=False,
        default=60.0,
        metavar="SECONDS",
    ),
    Option(
        "log",
        LogChoice(),
        "tensorboard: write each fold's loss, accuracy and learning rate per epoch under the run "
        '(<run>/tensorboard/fold-<k>; pip install "ens[tensorboard]").',
        identity=False,
        default="none",
    ),
)

OPTION: Mapping[str, Option] = MappingProxyType({o.name: o for o in OPTIONS})
RECIPE_KEYS = tuple(o.name for o in OPTIONS if o.in_presets)
"""The keys a preset (and a ``--config`` file) sets: every identity option but the weights file."""

RECIPES: Mapping[str, dict[str, Any]] = MappingProxyType(
    {name: {key: OPTION[key].preset(name) for key in RECIPE_KEYS} for name in PRESETS}
)
DEFAULT_RECIPE = {name: task.default_recipe for name, task in TASKS.items()}
RECIPE_HELP = {
    "paper": "SPEC §2 (Nanni et al. 2021): torchvision's ImageNet ResNet50 fine-tuned, head x20, L2 1e-4, "
    "flips + x/y scale, 20 epochs, batch 30, constant lr",
    "medmnist": "MedMNIST v2 baseline: ResNet-18 with a 3x3 stride-1 stem at 28 px from scratch, Adam 1e-3, "
    "batch 128, 100 epochs, lr x0.1 at 50 and 75, no augmentation, 0.5/0.5 normalisation, "
    "model chosen on validation AUC",
    "unet": "lightweight U-Net paper (segmentation; the default for seg:PATH): Lighter U-net@128 from scratch at "
    "256 px, Dice loss, Adam 1e-4, lr halved after 5 epochs without a better validation loss (10% inner "
    "split), batch 8, L2 1e-4, flips/rotation/scale/translation/shear on image and mask, 100 epochs",
}


def click_options(f: Callable) -> Callable:
    """Every declared option as a flag of ``f`` (``ens train``), in declaration order."""
    for option in reversed(OPTIONS):
        f = option.click_option()(f)
    return f


# --------------------------------------------------------------------------- TrainConfig
def _annotation(option: Option) -> str:
    kind = {
        click.types.BoolParamType: "bool",
        click.types.IntParamType: "int",
        Milestones: "tuple[int, ...]",
    }
    base = next((v for t, v in kind.items() if isinstance(option.type, t)), None)
    if base is None:
        base = (
            "str"
            if isinstance(option.type, (click.types.StringParamType, click.Choice, Device, DicomWindow))
            else "float"
        )
    if isinstance(option.type, (click.Path, WeightsType)):
        base = "str"
    return f"{base} | None" if option.nullable else base


def _field_default(option: Option) -> Any:
    value = option.preset("paper")
    return tuple(value) if isinstance(value, list) else value


class _TrainConfigMethods:
    """What every :class:`TrainConfig` answers about itself (its fields come from :data:`OPTIONS`)."""

    overrides: dict[str, dict[str, Any]]
    normalise: str
    pretrained: bool
    weights: str | None
    lr: float | None
    weight_decay: float
    head_lr_factor: float
    plateau: int
    loss: str
    precision: str

    def __post_init__(self) -> None:
        """``--normalise auto`` from scratch is ``imagenet`` at once; with weights it waits for
        :func:`resolve_normalisation` (which asks timm, too heavy for a usage error)."""
        if self.normalise == "auto" and not self.pretrained and not self.weights:
            self.normalise = "imagenet"

    def optimizer_overrides(self, label: str) -> dict[str, Any]:
        """What ``optim.build`` gets for ``label``: --set values (for all, then for this optimizer), the
        protocol's L2 and --lr."""
        overrides = {**self.overrides.get("*", {}), **self.overrides.get(get(label).label, {})}
        overrides.setdefault("weight_decay", self.weight_decay)
        if self.lr is not None:
            overrides.setdefault("lr", self.lr)
        return overrides

    def head_factor(self, label: str) -> float:
        """The head's learning-rate factor under ``label``: CLMR and TASO are schedules whose range is the
        learning rate the papers intended for every layer, so their head gets factor 1."""
        return 1.0 if get(label).kind == "schedule" else self.head_lr_factor

    def uses_plateau(self, label: str) -> bool:
        """Plateau halving applies to the constant-rate optimizers; CLMR and TASO keep their own schedule."""
        return self.plateau > 0 and get(label).kind != "schedule"

    def loss_for(self, task: str) -> str:
        """The loss a member of ``task`` trains on (``auto``: the task's own)."""
        return get_task(task).loss_name(self.loss)

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        import torch

        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return torch.float16 if self.precision == "fp16" else None


TrainConfig = dataclasses.make_dataclass(
    "TrainConfig",
    [(o.name, _annotation(o), field(default=_field_default(o))) for o in OPTIONS]
    + [("overrides", "dict[str, dict[str, Any]]", field(default_factory=dict))],  # "*" or label -> --set values
    bases=(_TrainConfigMethods,),
    kw_only=True,
)
TrainConfig.__module__ = __name__  # pickled by reference (worker processes, Dask)
TrainConfig.__doc__ = (
    "Every training option of ``ens train`` (fields and defaults from :data:`OPTIONS`; the defaults are "
    "the paper preset), plus ``overrides``: the --set values, by optimizer label or ``*``."
)


# --------------------------------------------------------------------------- --config and --set
def _yaml_loader(where: str) -> type:
    """PyYAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN202 - PyYAML's signature
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    twice = key in seen
                except TypeError:  # an unhashable key: PyYAML names it below
                    continue
                if twice:
                    raise UsageError(f"{where}: key {key!r} is given twice (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def read_config(path: str) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """A ``--config`` YAML file: its recipe values, each checked by its flag's type, and its ``set:`` entries.

    Every error names the file and the key; nothing is checked later than here.
    """
    import yaml

    from .io import read_text_file

    where = f"--config {path}"
    text = read_text_file(Path(path), "--config")  # a binary or non-regular file: one line, not a decode error
    try:
        loaded = yaml.load(text, Loader=_yaml_loader(where)) or {}  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"{where}: cannot be read ({str(err).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{where}: expected KEY: VALUE lines")
    unknown = sorted(map(str, set(loaded) - set(RECIPE_KEYS) - {"set"}))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(RECIPE_KEYS)}, set")
    raw = loaded.pop("set", None) or {}
    if isinstance(raw, dict):
        sets: list[tuple[str, Any]] = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        sets = [(item, _NO_VALUE) for item in raw]
    else:
        raise UsageError(f"{where}: set: expected a mapping of [OPT.]KEY: VALUE (or a list of KEY=VALUE)")
    values = {}
    for key, value in loaded.items():
        try:
            values[key] = OPTION[key].check(value)
        except click.BadParameter as err:
            raise UsageError(f"{where}: {key}: {err.message}") from None
    return values, sets


_NO_VALUE = object()  # a --set item still in its KEY=VALUE text


def _parse_value(text: str, where: str, item: str) -> Any:
    """A ``--set`` value as written: JSON (numbers as written, 1e-6 too, true/false, [0.9, 0.99]), else YAML."""
    import yaml

    try:
        return json.loads(text)
    except ValueError:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            raise UsageError(f"{where} {item!r}: {text!r} is not a value") from None


def _is_plain(value: Any) -> bool:
    import math

    numbers = value if isinstance(value, list) else [value]
    return all(
        (isinstance(v, (int, float, bool)) or v is None) and not (isinstance(v, float) and not math.isfinite(v))
        for v in numbers
    )


def parse_sets(
    items: list[str] | list[tuple[str, Any]], labels: list[str], where: str = "--set"
) -> dict[str, dict[str, Any]]:
    """``KEY=VALUE`` (every optimizer of the job) or ``OPT.KEY=VALUE`` (that one), or ``(KEY, VALUE)`` pairs
    from a YAML ``set:`` mapping: each checked against the registry (the setting exists, its value has
    the setting's type and range) before any work, with the valid keys named; a key given twice is refused."""
    out: dict[str, dict[str, Any]] = {}
    for entry in items:
        key, value = entry if isinstance(entry, tuple) else (entry, _NO_VALUE)
        if value is _NO_VALUE:
            key, sep, text = str(key).partition("=")
            item = str(entry if isinstance(entry, str) else entry[0])
            if not sep or not key.strip():
                raise UsageError(f"{where} {item!r}: expected KEY=VALUE or OPTIMIZER.KEY=VALUE (e.g. dgrad.lr=1e-4)")
            value = _parse_value(text, where, item)
        else:
            item, text = f"{key}: {value!r}", repr(value)
        target, dot, name = key.strip().rpartition(".")
        if dot and not target.strip():
            raise UsageError(f"{where} {item!r}: no optimizer before '.' (write {name}=VALUE for every optimizer)")
        if not name.strip():
            raise UsageError(f"{where} {item!r}: no setting name after '.'")
        if target:
            try:
                target = get(target).label
            except ValueError as err:
                raise UsageError(f"{where} {item!r}: {err}") from None
            if target not in labels:
                raise UsageError(f"{where} {item!r}: {target} is not among this job's optimizers ({', '.join(labels)})")
        if not _is_plain(value):
            raise UsageError(f"{where} {item!r}: {text!r} is not a finite number, a boolean or a list of numbers")
        settings = out.setdefault(target or "*", {})
        if name in settings:
            raise UsageError(f"{where} {item!r}: {f'{target}.' if target else ''}{name} is given twice")
        for label in [target] if target else labels:
            try:
                checked = get(label).check(name, value)
            except ValueError as err:
                raise UsageError(f"{where} {item!r}: {err}") from None
        settings[name] = checked
    return out


def compose_config(
    recipe: str,
    *,
    config_file: str | None,
    explicit: dict[str, Any],
    sets: list[str],
    labels: list[str],
    **execution: Any,
) -> TrainConfig:
    """The effective options: the named recipe, then the YAML file's keys, then explicit flags, then --set.

    ``explicit`` holds the flags as click converted them (``None``: not given); ``execution`` the run-only
    options and the weights file. Every value is checked here, before any work starts.
    """
    if recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)} (see `ens recipes`)")
    values = dict(RECIPES[recipe])
    file_sets: list[tuple[str, Any]] = []
    if config_file:
        loaded, file_sets = read_config(config_file)
        values.update(loaded)
    values.update({k: v for k, v in explicit.items() if v is not None})
    values["milestones"] = tuple(values["milestones"] or ())
    overrides = parse_sets(file_sets, labels, f"--config {config_file} set") if file_sets else {}
    for target, settings in parse_sets(sets, labels).items():
        overrides.setdefault(target, {}).update(settings)
    unknown = sorted((set(values) | set(execution)) - set(OPTION))
    if unknown:
        raise UsageError(f"recipe values: unknown option(s) {', '.join(unknown)}")
    return TrainConfig(**values, overrides=overrides, **execution)


# --------------------------------------------------------------------------- the recipe
def weight_source(cfg: TrainConfig) -> str:
    """Where the starting weights come from: ``timm:<model>.<tag>``, ``file:sha256:<hex>`` or ``none``.

    A file is named by its content, however it was given (a path, ``sha256:HEX``, or a weight package such as
    ``lite0``, whose sha256 the registry knows): the same bytes are the same recipe on every machine."""
    if cfg.weights:
        from .learn.weights import file_sha256, known_sha256

        sha = known_sha256(cfg.weights) or file_sha256(Path(cfg.weights))
        return f"file:sha256:{sha[:16]}"
    from .learn.model import is_segmentation_model

    if not cfg.pretrained or is_segmentation_model(cfg.model):
        return "none"
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(cfg.model)
    if not tag:
        pre = get_pretrained_cfg(cfg.model)
        tag = pre.tag if pre is not None else ""
    return f"timm:{arch}.{tag}" if tag else f"timm:{arch}"


_STATISTICS = {  # the input statistics of --normalise's values, as timm's pretrained configs give them
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def resolve_normalisation(cfg: TrainConfig) -> str:
    """``--normalise auto`` as the weights want it: a weight package's own, else the timm pretrained config of
    the model (its tag, or its default tag for a weights file); ``imagenet`` from scratch (what every member
    before ``auto`` recorded). Any other value is returned as it is."""
    if cfg.normalise != "auto":
        return cfg.normalise
    if cfg.weights:
        from .learn.weights import known_normalisation

        known = known_normalisation(cfg.weights)
        if known:
            return known
    elif not cfg.pretrained:
        return "imagenet"
    from .learn.model import is_segmentation_model

    if is_segmentation_model(cfg.model):
        return "imagenet"
    import timm
    from timm.models import get_pretrained_cfg

    if timm.is_model(cfg.model):
        from .learn.model import check_timm_name

        check_timm_name(cfg.model)  # a weight tag timm does not have: one line, not timm's RuntimeError
    pre = get_pretrained_cfg(cfg.model) if timm.is_model(cfg.model) else None
    if pre is None:
        return "imagenet"
    stats = (tuple(round(v, 3) for v in pre.mean), tuple(round(v, 3) for v in pre.std))
    for name, values in _STATISTICS.items():
        if stats == values:
            return name
    raise UsageError(
        f"--normalise auto: {cfg.model}'s weights expect mean {stats[0]} and std {stats[1]}, which is neither "
        "imagenet nor half; pass --normalise imagenet or half"
    )


def check_recipe(cfg: TrainConfig, label: str, task: str) -> dict[str, Any]:
    """The checks across options (they need the optimizer and the task, not the data), and the optimizer's
    block of the recipe. ``ens train`` runs them before any work; :func:`build_recipe` again."""
    if cfg.milestones and get(label).kind == "schedule":
        raise UsageError(
            f"--milestones: {label} sets its learning rate by its own schedule; milestones apply to "
            "the constant-rate optimizers"
        )
    try:
        optimizer = {"name": label, **resolve(label, **cfg.optimizer_overrides(label))}
    except ValueError as err:  # e.g. --lr with CLMR, whose schedule sets the learning rate
        raise UsageError(f"{err} (check --lr and the optimizer's own settings in `ens optimizers`)") from None
    if optimizer.get("fused") is False:  # the eager step: recorded as members before the fused kernels were
        del optimizer["fused"]
    get_task(task).check_options(
        loss=cfg.loss_for(task), select=cfg.select, model=cfg.model, stem=cfg.stem, class_weights=cfg.class_weights
    )
    if cfg.plateau and cfg.milestones:
        raise UsageError("--plateau and --milestones both set the learning rate; give one of them")
    return optimizer


def build_recipe(cfg: TrainConfig, label: str, ds: Dataset) -> dict[str, Any]:
    """The recipe of a member of optimizer ``label`` trained with ``cfg`` on ``ds``, as stored JSON.

    Its keys are the stored names (``augmentation``, ``normalisation``, ...) every earlier member has;
    keys added later appear only where they differ from what earlier members were, so earlier recipes
    keep their hash.
    """
    optimizer = check_recipe(cfg, label, ds.task)
    recipe = {
        "model": cfg.model,
        "weights": weight_source(cfg),
        "size": cfg.size,
        "stem": cfg.stem,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "optimizer": optimizer,
        "head_lr_factor": cfg.head_factor(label),
        "weight_decay": cfg.weight_decay,
        "milestones": list(cfg.milestones),
        "gamma": cfg.gamma,
        "augmentation": cfg.augment,
        "normalisation": resolve_normalisation(cfg),
        "class_weights": cfg.class_weights,
        "select": cfg.select,
        "val_fraction": cfg.val_fraction if cfg.select != "last" else None,
        "precision": cfg.precision,
        "dataset": {
            "fingerprint": ds.fingerprint,
            "protocol": ds.protocol,
            "folds": len(ds.folds),
            "classes": list(ds.classes),
        },
    }
    get_task(ds.task).stamp_recipe(recipe, loss=cfg.loss_for(ds.task))
    if ds.dicom:  # how its DICOM images were shown to the member (members without DICOM keep their hash)
        recipe["dicom"] = {"window": cfg.dicom_window or "file"}
    if cfg.uses_plateau(label):
        recipe["plateau"] = {"patience": cfg.plateau, "factor": 0.5, "on": "validation loss"}
        recipe["val_fraction"] = cfg.val_fraction
    return json.loads(json.dumps(recipe))  # tuples become lists: the form it has when read back


# --------------------------------------------------------------------------- the retrain command
def train_command(
    *,
    spec: str,
    data_dir: str,
    label: str,
    run: int,
    cfg: TrainConfig,
    name: str | None,
    device: str,
    threads: int | None,
) -> str:
    """The ``ens train`` arguments that retrain exactly this run (same run index, so the same seeds) into a
    store given with --members-dir: every identity option spelled out (none left to a preset), the device
    threads, memory format and CPU code paths it ran with, and the run's --set values."""
    import shlex

    optimizer, _, variant = label.partition("@")
    args = ["ens", "train", "--dataset", spec, "--data-dir", data_dir, "--opt", optimizer, "--run", str(run)]
    for option in OPTIONS:
        if option.identity:
            value = resolve_normalisation(cfg) if option.name == "normalise" else getattr(cfg, option.name)
            args += option.words(value)
    args += OPTION["memory_format"].words(cfg.memory_format) + OPTION["cpu_isa"].words(cfg.cpu_isa)
    args += OPTION["device"].words(device) + OPTION["threads"].words(threads or None)
    if variant:
        args += ["--variant", variant]
    if name:
        args += ["--name", name]
    for target, settings in sorted(cfg.overrides.items()):
        if target in ("*", optimizer):
            args += [a for k, v in sorted(settings.items()) for a in ("--set", f"{optimizer.lower()}.{k}={_text(v)}")]
    return shlex.join(args)


def _text(value: Any) -> str:
    """A --set value as :func:`parse_sets` reads it back: ``true``, ``[0.8, 0.99]``, ``1e-06``."""
    if isinstance(value, (bool, list, tuple)) or value is None:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return repr(value) if isinstance(value, float) else str(value)
