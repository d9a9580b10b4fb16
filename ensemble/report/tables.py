"""Rendering rows of results as a terminal table, CSV, Markdown, LaTeX or JSON (pandas does the work)."""

from __future__ import annotations

import json
import math

import pandas as pd

PERCENT = ("accuracy", "f1_macro", "auc")


def _clean(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table (pandas' own needs the extra 'tabulate' package)."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def render(rows: list[dict], fmt: str, title: str = "", digits: int = 4) -> str:
    if fmt == "json":
        return json.dumps([{k: _clean(v) for k, v in r.items()} for r in rows], indent=2)
    df = pd.DataFrame(rows)
    if fmt == "csv":
        return df.to_csv(index=False, float_format=f"%.{digits + 2}f").rstrip("\n")
    if fmt == "markdown":
        return to_markdown(df, digits)
    if fmt == "latex":
        return df.to_latex(index=False, float_format=f"%.{digits}f", na_rep="--")
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    for col in df.columns:
        table.add_column(str(col), justify="right" if pd.api.types.is_numeric_dtype(df[col]) else "left")
    for row in df.itertuples(index=False):
        table.add_row(*("--" if isinstance(v, float) and math.isnan(v) else f"{v:.{digits}f}" if isinstance(v, float)
                        else str(v) for v in row))
    buf = StringIO()
    Console(file=buf, width=200, force_terminal=False).print(table)
    return buf.getvalue().rstrip("\n")
