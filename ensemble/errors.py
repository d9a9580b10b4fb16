"""User-facing errors: the CLI prints their message on one line, never a traceback."""

from __future__ import annotations


class EnsError(Exception):
    """Something the user can fix (a bad file, a bad argument); ``exit_code`` is what the CLI returns."""

    exit_code = 1


def first_line(err: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``: enough of a foreign exception for a one-line error."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:limit]}" if text else type(err).__name__


class UsageError(EnsError):
    """A malformed request on the command line (exit code 2, as click's own usage errors)."""

    exit_code = 2


class DataError(EnsError):
    """A dataset that is missing, malformed or unreadable; the message names the path."""


class ManifestError(DataError):
    """A manifest's row or column at fault (a bad cell, a missing column): bad input, exit code 2 as a usage
    error, the message naming the file, row and column."""

    exit_code = 2


class StoreError(EnsError):
    """A member store that is inconsistent or cannot be written."""


class WeightsError(UsageError):
    """A weights file whose content is no state dict that fits the model (random bytes, a truncated file, a
    pickled object, a missing or misshapen tensor): bad input like a bad argument, exit code 2, the message
    naming the file and the fault."""
