"""Fusion expressions (SPEC §6): ``TERM (+ TERM)*`` with TERM = LABEL[@VARIANT] COUNT.

COUNT follows the label directly (``SGD14``), after an underscore (``Cos1_7``, needed when
the label ends in a digit) or in parentheses (``DGrad(7)``, the paper's ``Cos#1(7)``).
A variant (members trained under another recipe, stored apart) follows an ``@``:
``DGrad@long7`` is 7 members of the variant ``long``; ``DGrad@v2_7`` when it ends in a digit.
Errors name the column and what was expected, with a caret under the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError
from ..optim import REGISTRY

DIGITS = "0123456789"  # ASCII only: str.isdigit() also accepts '²'
MAX_COUNT_DIGITS = 6


@dataclass(frozen=True)
class Term:
    label: str  # label key: DGrad, or DGrad@long for a variant
    count: int
    column: int  # 1-based position of the term in the expression


class ExpressionError(UsageError):
    """A malformed expression; the message points at the column."""


def _fail(expr: str, pos: int, message: str) -> ExpressionError:
    return ExpressionError(f"column {pos + 1}: {message}\n  {expr}\n  {' ' * pos}^")


def _count(expr: str, pos: int, pattern: str, expected: str) -> tuple[str, int]:
    """The digits ``pattern`` matches at ``pos`` (its last group) and the position after the match."""
    digits = re.match(pattern, expr[pos:])
    if not digits:
        raise _fail(expr, pos, expected)
    return digits.group(digits.lastindex or 0), pos + len(digits.group(0))


def _spellings() -> list[tuple[str, str]]:
    """(spelling, label), longest first: ``Cos1`` and the paper's ``Cos#1``."""
    out = []
    for label in REGISTRY:
        out.append((label.lower(), label))
        m = re.fullmatch(r"(.*\D)(\d+)", label)
        if m:
            out.append((f"{m.group(1)}#{m.group(2)}".lower(), label))
    return sorted(out, key=lambda s: -len(s[0]))


def parse(expr: str) -> list[Term]:
    """Parse ``expr`` into terms; the same label twice is refused (a member would count twice)."""
    terms: list[Term] = []
    pos, n = 0, len(expr)
    spellings = _spellings()
    while True:
        while pos < n and expr[pos].isspace():
            pos += 1
        if pos >= n:
            raise _fail(
                expr, pos, "expected a term such as SGD7 or DGrad(7)" if not terms else "expected a term after '+'"
            )
        start = pos
        low = expr.lower()
        match = next(((s, lab) for s, lab in spellings if low.startswith(s, pos)), None)
        if match is None:
            word = re.match(r"[A-Za-z#_]*", expr[pos:]).group(0) or expr[pos]
            raise _fail(expr, pos, f"unknown label {word!r}; expected one of {', '.join(REGISTRY)}")
        spelling, label = match
        pos += len(spelling)
        glued = None
        if pos < n and expr[pos] == "@":
            label, pos, glued = _variant(expr, start, pos, label)
        if glued is not None:
            count_text = glued
        elif pos < n and expr[pos] == "_":
            count_text, pos = _count(
                expr, pos + 1, r"[0-9]+", f"expected a member count after '{expr[start : pos + 1]}'"
            )
        elif pos < n and expr[pos] == "(":
            count_text, pos = _count(expr, pos + 1, r"\s*([0-9]+)\s*", f"expected a member count inside '{label}( )'")
            if pos >= n or expr[pos] != ")":
                raise _fail(expr, pos, "expected ')'")
            pos += 1
        elif pos < n and expr[pos] in DIGITS:
            if label[-1] in DIGITS:
                raise _fail(expr, pos, f"{label} ends in a digit: write {label}_<N> or {label}(<N>)")
            count_text = re.match(r"[0-9]+", expr[pos:]).group(0)
            pos += len(count_text)
        else:
            raise _fail(
                expr,
                pos,
                f"expected a member count after '{expr[start:pos]}' (e.g. {term_text(label, 7)} or {label}(7))",
            )
        if len(count_text.lstrip("0")) > MAX_COUNT_DIGITS:
            raise _fail(expr, start, f"{label}: a count of {len(count_text)} digits is not a member count")
        count = int(count_text)
        if count < 1:
            raise _fail(expr, start, f"{label} needs at least 1 member")
        previous = next((t for t in terms if t.label == label), None)
        if previous is not None:
            raise _fail(
                expr,
                start,
                f"{label} appears twice (also at column {previous.column}): its first "
                f"members would be fused twice; write one term {term_text(label, '<N>')}",
            )
        terms.append(Term(label, count, start + 1))
        while pos < n and expr[pos].isspace():
            pos += 1
        if pos >= n:
            return terms
        if expr[pos] != "+":
            raise _fail(expr, pos, f"expected '+' or the end, found {expr[pos]!r}")
        pos += 1


def _variant(expr: str, start: int, pos: int, label: str) -> tuple[str, int, str | None]:
    """``@name`` after a label: (label key, position after the name, count if it was glued to the name).

    The name is letters, digits and '-'. When neither '_' nor '(' follows it, its trailing
    digits are the count (``DGrad@long7``), as for a label.
    """
    m = re.match(r"@([A-Za-z][A-Za-z0-9-]*)", expr[pos:])
    if not m:
        raise _fail(expr, pos + 1, "expected a variant name after '@' (a letter, then letters, digits or '-')")
    name, end = m.group(1), pos + len(m.group(0))
    if end < len(expr) and expr[end] in "_(":
        return f"{label}@{name}", end, None
    glued = re.fullmatch(r"(.*?[A-Za-z-])([0-9]+)", name)
    if not glued:
        raise _fail(
            expr, end, f"expected a member count after '{expr[start:end]}' (e.g. {label}@{name}_7 or {label}@{name}(7))"
        )
    return f"{label}@{glued.group(1)}", end, glued.group(2)


def term_text(label: str, count: int | str) -> str:
    """Canonical spelling of one term: ``SGD14``, ``Cos1_7`` (an underscore after a trailing digit)."""
    return f"{label}{'_' if label[-1].isdigit() else ''}{count}"


def format_terms(terms: list[Term]) -> str:
    """Canonical spelling: ``SGD14+DGrad7+Cos1_7``."""
    return "+".join(term_text(t.label, t.count) for t in terms)
