"""Command-line values, checked before any work starts: one click type per kind of input.

Each type names the option and the value it got and says what it expects (click puts the
option's name in front), so a bad value never reaches a fold task.
"""

from __future__ import annotations

import math
import re

import click


class FiniteFloat(click.ParamType):
    """A finite number, optionally bounded (``nan`` and ``inf`` are refused; click's FloatRange lets ``nan`` by)."""

    name = "number"

    def __init__(
        self,
        minimum: float | None = None,
        *,
        strict: bool = False,
        maximum: float | None = None,
        max_open: bool = False,
    ) -> None:
        self.minimum, self.strict, self.maximum, self.max_open = minimum, strict, maximum, max_open

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 - click's signature
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number", param, ctx)
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.minimum is not None and (number < self.minimum or (self.strict and number == self.minimum)):
            bound = "greater than" if self.strict else "at least"
            self.fail(f"{value!r} must be {bound} {self.minimum:g}", param, ctx)
        if self.maximum is not None and (number > self.maximum or (self.max_open and number == self.maximum)):
            bound = "less than" if self.max_open else "at most"
            self.fail(f"{value!r} must be {bound} {self.maximum:g}", param, ctx)
        return number

    def describe(self) -> str:
        """The range in words, for ``ens optimizers``."""
        low = "" if self.minimum is None else f"{'>' if self.strict else '>='} {self.minimum:g}"
        high = "" if self.maximum is None else f"{'<' if self.max_open else '<='} {self.maximum:g}"
        return " and ".join(p for p in (low, high) if p) or "any finite number"


POSITIVE = FiniteFloat(0.0, strict=True)
NON_NEGATIVE = FiniteFloat(0.0)
UNIT = FiniteFloat(0.0, maximum=1.0, max_open=True)  # [0, 1): momentum, betas
OPEN_UNIT = FiniteFloat(0.0, strict=True, maximum=1.0, max_open=True)  # (0, 1): a held-out share


class Milestones(click.ParamType):
    """``E1,E2,...``: positive, increasing epochs; ``none`` (or nothing) for none. A YAML list is taken too."""

    name = "E1,E2"
    sequence = True  # a list (from YAML) reaches convert as it is

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        if isinstance(value, (list, tuple)):
            epochs = tuple(check_value(v, click.IntRange(min=1)) for v in value)
        elif value.strip().lower() in ("", "none"):
            return ()
        else:
            try:
                epochs = tuple(int(v) for v in value.split(","))
            except ValueError:
                self.fail(f"{value!r} is not a comma-separated list of epochs (e.g. 50,75)", param, ctx)
        if any(e < 1 for e in epochs) or list(epochs) != sorted(set(epochs)):
            self.fail(f"{value!r}: epochs must be positive and increasing", param, ctx)
        return epochs


class Pair(click.ParamType):
    """Two numbers, each checked by ``item`` (Adam's betas): ``[0.9, 0.999]`` or ``0.9,0.999``."""

    name = "pair"
    sequence = True

    def __init__(self, item: click.ParamType) -> None:
        self.item = item

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else value
        if not isinstance(parts, (list, tuple)) or len(parts) != 2:
            self.fail(f"{value!r} is not a pair of numbers (e.g. [0.9, 0.999])", param, ctx)
        return tuple(check_value(p, self.item) for p in parts)

    def describe(self) -> str:
        describe = getattr(self.item, "describe", None)
        return f"two numbers, each {describe()}" if describe else "two numbers"


def describe(ptype: click.ParamType) -> str:
    """A type's accepted values in words (``ens optimizers`` lists them beside each setting)."""
    if hasattr(ptype, "describe"):
        return ptype.describe()
    if isinstance(ptype, click.types.BoolParamType):
        return "true or false"
    if isinstance(ptype, click.IntRange):
        return f"integer >= {ptype.min}" if ptype.min is not None else "integer"
    return ptype.name


def as_text(value: object, ptype: click.ParamType) -> object:
    """How a YAML or ``--set`` value would be written on the command line, so it gets the flag's own check:
    ``2.5`` is no integer there, ``true`` no number. A list reaches only a type that takes several values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)) and getattr(ptype, "sequence", False):
        return value
    if isinstance(value, (list, tuple, dict)):
        raise click.BadParameter(f"{value!r} is a {type(value).__name__}; one value is expected")
    return str(value)


def check_value(value: object, ptype: click.ParamType) -> object:
    """``value`` (from a YAML file or ``--set``) through ``ptype``'s convert, as its flag's text would go.

    A number that passes keeps the form it was written in (``1`` stays ``1``, not ``1.0``): recipes
    recorded from YAML files before this check keep their hash. Raises :class:`click.BadParameter`.
    """
    converted = ptype.convert(as_text(value, ptype), None, None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and converted == value:
        return value
    return converted


_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?|mps")


class Device(click.ParamType):
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; whether it exists is checked before training."""

    name = "device"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        if not isinstance(value, str) or not _DEVICE.fullmatch(value):
            self.fail(f"{value!r} is not a training device (use auto, cpu, cuda, cuda:N or mps)", param, ctx)
        return value


# named CT windows (centre, width in Hounsfield units), as radiology viewers offer them
CT_WINDOWS = {
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft-tissue": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "bone": (400.0, 1800.0),
}


class DicomWindow(click.ParamType):
    """``--dicom-window``: ``file``, ``minmax``, ``C,W`` (centre and width in the file's rescaled units, width >= 1)
    or a named CT window, turned into the canonical spelling the recipe records (a name becomes its numbers)."""

    name = "window"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        text = str(value).strip().lower()
        if text in ("file", "minmax"):
            return text
        if text in CT_WINDOWS:
            centre, width = CT_WINDOWS[text]
        else:
            parts = text.split(",")
            try:
                centre, width = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
            except ValueError:
                centre = width = math.nan
            if not (math.isfinite(centre) and math.isfinite(width)):
                self.fail(
                    f"{value!r} is not a window: use file, minmax, CENTRE,WIDTH (e.g. 40,400) or one of "
                    f"{', '.join(CT_WINDOWS)}",
                    param,
                    ctx,
                )
            if width < 1:
                self.fail(f"{value!r}: the width must be at least 1 (DICOM's linear window)", param, ctx)
        return f"{centre:g},{width:g}"

    def describe(self) -> str:
        return f"file, minmax, CENTRE,WIDTH or {', '.join(CT_WINDOWS)}"


_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")


class SchedulerAddress(click.ParamType):
    """A Dask scheduler address: ``tcp://host:port``, ``tls://host:port`` (or another comm), or ``host:port``."""

    name = "address"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        scheme, sep, rest = value.partition("://")
        if not sep:
            scheme, rest = "tcp", value
        if scheme not in _SCHEMES:
            self.fail(
                f"{value!r}: unknown scheme {scheme!r} (use {', '.join(s + '://' for s in _SCHEMES)})", param, ctx
            )
        if scheme != "inproc":
            m = re.fullmatch(r"(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})", rest)
            if not m or not 0 < int(m.group(2)) < 65536:
                self.fail(f"{value!r} is not SCHEME://HOST:PORT (e.g. tcp://head:8786)", param, ctx)
        return f"{scheme}://{rest}"


class Checksum(click.ParamType):
    """``md5:HEX``, ``sha1:HEX`` or ``sha256:HEX`` with the right number of hex digits."""

    name = "checksum"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        from .data.fetch import parse_checksum
        from .errors import EnsError

        try:
            return parse_checksum(value)
        except EnsError as err:
            self.fail(str(err), param, ctx)
