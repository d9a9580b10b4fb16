"""Fusion expressions (SPEC §6): ``TERM (+ TERM)*`` with TERM = LABEL COUNT.

COUNT follows the label directly (``SGD14``), after an underscore (``Cos1_7``, needed when
the label ends in a digit) or in parentheses (``DGrad(7)``, the paper's ``Cos#1(7)``).
Errors name the column and what was expected, with a caret under the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError
from ..optim import REGISTRY


@dataclass(frozen=True)
class Term:
    label: str
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
            raise _fail(expr, pos, "expected a term such as SGD7 or DGrad(7)" if not terms
                        else "expected a term after '+'")
        start = pos
        low = expr.lower()
        match = next(((s, lab) for s, lab in spellings if low.startswith(s, pos)), None)
        if match is None:
            word = re.match(r"[A-Za-z#_]*", expr[pos:]).group(0) or expr[pos]
            raise _fail(expr, pos, f"unknown label {word!r}; expected one of {', '.join(REGISTRY)}")
        spelling, label = match
        pos += len(spelling)
        if pos < n and expr[pos] == "_":
            count_text, pos = _count(expr, pos + 1, r"\d+", f"expected a member count after '{expr[start:pos + 1]}'")
        elif pos < n and expr[pos] == "(":
            count_text, pos = _count(expr, pos + 1, r"\s*(\d+)\s*", f"expected a member count inside '{label}( )'")
            if pos >= n or expr[pos] != ")":
                raise _fail(expr, pos, "expected ')'")
            pos += 1
        elif pos < n and expr[pos].isdigit():
            if label[-1].isdigit():
                raise _fail(expr, pos, f"{label} ends in a digit: write {label}_<N> or {label}(<N>)")
            count_text = re.match(r"\d+", expr[pos:]).group(0)
            pos += len(count_text)
        else:
            raise _fail(expr, pos, f"expected a member count after '{expr[start:pos]}' "
                        f"(e.g. {term_text(label, 7)} or {label}(7))")
        count = int(count_text)
        if count < 1:
            raise _fail(expr, start, f"{label} needs at least 1 member")
        previous = next((t for t in terms if t.label == label), None)
        if previous is not None:
            raise _fail(expr, start, f"{label} appears twice (also at column {previous.column}): its first "
                        f"members would be fused twice; write one term {term_text(label, '<N>')}")
        terms.append(Term(label, count, start + 1))
        while pos < n and expr[pos].isspace():
            pos += 1
        if pos >= n:
            return terms
        if expr[pos] != "+":
            raise _fail(expr, pos, f"expected '+' or the end, found {expr[pos]!r}")
        pos += 1


def term_text(label: str, count: int | str) -> str:
    """Canonical spelling of one term: ``SGD14``, ``Cos1_7`` (an underscore after a trailing digit)."""
    return f"{label}{'_' if label[-1].isdigit() else ''}{count}"


def format_terms(terms: list[Term]) -> str:
    """Canonical spelling: ``SGD14+DGrad7+Cos1_7``."""
    return "+".join(term_text(t.label, t.count) for t in terms)
