"""Command-line values, checked before any work starts: one click type per kind of input.

Each type names the option and the value it got and says what it expects (click puts the
option's name in front), so a bad value never reaches a fold task.
"""

from __future__ import annotations

import math
import re

import click


class FiniteFloat(click.ParamType):
    """A finite number, optionally bounded below (``nan`` and ``inf`` are refused)."""

    name = "number"

    def __init__(self, minimum: float | None = None, *, strict: bool = False) -> None:
        self.minimum, self.strict = minimum, strict

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 - click's signature
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
        return number


POSITIVE = FiniteFloat(0.0, strict=True)
NON_NEGATIVE = FiniteFloat(0.0)

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?|mps")


class Device(click.ParamType):
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; whether it exists is checked before training."""

    name = "device"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        if not isinstance(value, str) or not _DEVICE.fullmatch(value):
            self.fail(f"{value!r} is not a training device (use auto, cpu, cuda, cuda:N or mps)", param, ctx)
        return value


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
