"""Rendering rows of results as a terminal table, CSV, Markdown, LaTeX or JSON (pandas does the work)."""

from __future__ import annotations

import json
import math
import re

import pandas as pd


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


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_escape(text: str) -> str:
    """Text as LaTeX prints it literally (names from the filesystem are data, not markup)."""
    return re.sub(r"[\\&%$#_{}~^<>]", lambda m: _LATEX[m.group(0)], str(text))


def render(rows: list[dict], fmt: str, title: str = "", digits: int = 4) -> str:
    if fmt == "json":
        return json.dumps([{k: _clean(v) for k, v in r.items()} for r in rows], indent=2)
    df = pd.DataFrame(rows)
    if fmt == "csv":
        return df.to_csv(index=False, float_format=f"%.{digits + 2}f").rstrip("\n")
    if fmt == "markdown":
        return to_markdown(df, digits)
    if fmt == "latex":
        df = df.rename(columns=latex_escape)
        for col in df.columns:
            if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
                df[col] = df[col].map(lambda v: latex_escape(v) if isinstance(v, str) else v)
        return df.to_latex(index=False, float_format=f"%.{digits}f", na_rep="--", escape=False)
    from io import StringIO

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text, not markup: a class folder named "[/x]" is data, not a rich style tag
    table = Table(title=Text(title) if title else None)
    for col in df.columns:
        table.add_column(Text(str(col)), justify="right" if pd.api.types.is_numeric_dtype(df[col]) else "left")
    for row in df.itertuples(index=False):
        table.add_row(
            *(
                Text(
                    "--"
                    if isinstance(v, float) and math.isnan(v)
                    else f"{v:.{digits}f}"
                    if isinstance(v, float)
                    else str(v)
                )
                for v in row
            )
        )
    buf = StringIO()
    Console(file=buf, width=200, force_terminal=False).print(table)
    return buf.getvalue().rstrip("\n")
