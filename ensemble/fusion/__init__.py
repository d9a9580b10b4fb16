"""Fusion of stored members (SPEC §6): expressions, rules, metrics, selection, statistics.

The core -- selecting members, aligning them, fusing and scoring -- is :mod:`.core`; this
package re-exports its public names.
"""

from __future__ import annotations

from .core import (
    FusionResult,
    IncompatibleMembers,
    MissingMembers,
    aligned,
    details,
    fuse,
    fuse_members,
    select,
)
from .expr import ExpressionError, Term, parse
from .rules import RULES

__all__ = [
    "RULES",
    "ExpressionError",
    "FusionResult",
    "IncompatibleMembers",
    "MissingMembers",
    "Term",
    "aligned",
    "details",
    "fuse",
    "fuse_members",
    "parse",
    "select",
]
