"""Rendering rows of results as a terminal table, CSV, Markdown, LaTeX or JSON (pandas does the work).

CSV and JSON keep the machine names of the columns (``accuracy_mean``, ``p_mcnemar``) that scripts read;
the formats a person reads -- the terminal table, Markdown, LaTeX and the report's HTML -- show them as
human headers (:func:`human`). The terminal table never cuts a header: a table wider than the terminal is
split into several tables, each repeating the first (identifying) column.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import pandas as pd

# the words a metric's machine name is made of, as a paper prints them
_WORDS = {
    "accuracy": "Accuracy",
    "f1": "Macro-F1",
    "f1_macro": "Macro-F1",
    "auc": "AUC",
    "nll": "NLL",
    "brier": "Brier",
    "ece": "ECE",
    "ece_temperature": "ECE, temperature-scaled",
    "dice": "Dice",
    "iou": "IoU",
    "hd95": "HD95",
    "precision": "Precision",
    "recall": "Recall",
    "exact_match": "Exact match",
    "bce": "BCE",
}
_SUFFIXES = {
    "mean": "mean",
    "std": "std",
    "lo": "95% CI low",
    "hi": "95% CI high",
    "mixed": "mixed",
    "single": "single",
    "fold_mean": "fold mean",
    "fold_std": "fold std",
}
HEADERS = {
    "expression": "Expression",
    "ensemble": "Ensemble",
    "selection": "Selection",
    "kind": "Kind",
    "rule": "Rule",
    "members": "Members",
    "label": "Label",
    "model": "Model",
    "parameters": "Parameters",
    "learnt_nothing": "Learnt nothing",
    "auc_labels": "AUC labels",
    "recipe": "Recipe",
    "setup": "Setup",
    "mixed": "Mixed",
    "single": "Single",
    "difference": "Difference",
    "p_mcnemar": "p (McNemar)",
    "p_wilcoxon": "p (Wilcoxon)",
    "verdict": "Verdict",
    "label_a": "Label A",
    "label_b": "Label B",
    "pairs": "Pairs",
    "yule_q": "Yule's Q",
    "double_fault": "Double fault",
    "error_correlation": "Error correlation",
    "disagreement": "Disagreement",
    "class": "Class",
    "support": "Support",
    "f1": "F1",  # per class; the means over members are macro-F1 (below)
    "metric": "Metric",
    "test": "Test",
    "p": "p",
    "A": "A",
    "B": "B",
    "true": "True class",
}


def human(column: str) -> str:
    """A column's header as a paper prints it (``accuracy_mean`` -> "Accuracy (mean)"); a name it does not
    know (a class name, say) is returned unchanged -- it is data."""
    if column in HEADERS:
        return HEADERS[column]
    if column in _WORDS:
        return _WORDS[column]
    m = re.fullmatch(r"p_auc \((.+)\)", column)
    if m:
        return f"p (AUC, {m.group(1)})"
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        base = column.removesuffix(f"_{suffix}")
        if base != column and base in _WORDS:
            return f"{_WORDS[base]} ({_SUFFIXES[suffix]})"
    return column


def with_intervals(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Each metric with ``X_lo`` and ``X_hi`` beside it as one column, "0.8136 [0.7773, 0.8477]", headed
    "X [95% CI]" after :func:`human` (the CSV keeps the three columns)."""
    df = df.copy()
    for col in list(df.columns):
        lo, hi = f"{col}_lo", f"{col}_hi"
        if lo in df.columns and hi in df.columns:
            df[col] = [_interval(v, a, b, digits) for v, a, b in zip(df[col], df[lo], df[hi])]
            df = df.drop(columns=[lo, hi]).rename(columns={col: f"{human(col)} [95% CI]"})
    return df


def _interval(value: object, lo: object, hi: object, digits: int) -> str:
    if not all(isinstance(v, (int, float)) and not math.isnan(v) for v in (value, lo, hi)):
        return _cell(value, digits)
    # the bounds kept together: a wrapped cell reads "0.814" over "[0.777, 0.848]"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _clean(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def _cell(v: object, digits: int, na: str = "") -> str:
    if isinstance(v, float):
        return na if math.isnan(v) else f"{v:.{digits}f}"
    return "" if v is None else str(v)


_NUMBER = re.compile(r"-?\d+(\.\d+)?( \[-?\d+(\.\d+)?, -?\d+(\.\d+)?\])?")


def numeric(column: pd.Series) -> bool:
    """Whether a column holds numbers (or numbers already written, "0.81 [0.77, 0.85]"): right-aligned."""
    if pd.api.types.is_bool_dtype(column):
        return False
    if pd.api.types.is_numeric_dtype(column):
        return True
    written = [v for v in column if isinstance(v, str) and v]
    return bool(written) and all(isinstance(v, str) for v in column) and all(_NUMBER.fullmatch(v) for v in written)


def to_html(df: pd.DataFrame, digits: int = 4) -> str:
    """An HTML table with human headers (the CSV's name as the header's tooltip), numbers right-aligned,
    every name escaped."""
    from html import escape

    num = [numeric(df[c]) for c in df.columns]
    NUM = ' class="num"'  # noqa: N806
    head = "".join(f'<th title="{escape(str(c))}">{escape(human(str(c)))}</th>' for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td{NUM if n else ''}>{escape(_cell(v, digits))}</td>" for v, n in zip(row, num)) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table with human headers (pandas' own needs the extra 'tabulate' package)."""

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    head = "| " + " | ".join(esc(human(str(c))) for c in df.columns) + " |"
    sep = "|" + "|".join("---:" if numeric(df[c]) else "---" for c in df.columns) + "|"
    body = ["| " + " | ".join(esc(_cell(v, digits)) for v in row) + " |" for row in df.itertuples(index=False)]
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


WRAP_AT = 24  # characters: a LaTeX text column wider than this wraps in a p{} column


def to_latex(df: pd.DataFrame, digits: int = 4) -> str:
    """A LaTeX tabular with human headers; long text columns wrap (``p{...}``) so the table fits a page."""
    fmt = []
    for col in df.columns:
        if numeric(df[col]):
            fmt.append("r")
            continue
        longest = max((len(_cell(v, digits)) for v in df[col]), default=0)
        fmt.append(f"p{{{min(longest, 40) * 0.16:.1f}cm}}" if longest > WRAP_AT else "l")
    df = df.rename(columns=lambda c: latex_escape(human(str(c))))
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
            df[col] = df[col].map(lambda v: latex_escape(v) if isinstance(v, str) else v)
    return df.to_latex(index=False, float_format=f"%.{digits}f", na_rep="--", escape=False, column_format="".join(fmt))


def terminal_width() -> int:
    """The terminal's width (``COLUMNS`` first); 100 when the output is not a terminal."""
    return shutil.get_terminal_size((100, 24)).columns


def render(
    rows: list[dict] | pd.DataFrame, fmt: str, title: str = "", digits: int = 4, width: int | None = None
) -> str:
    """Rows in one of ``FORMATS``: csv and json with the machine names of the columns, the others with
    human headers; the terminal table in ``width`` columns (the terminal's)."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if fmt == "json":
        return json.dumps([{k: _clean(v) for k, v in r.items()} for r in df.to_dict("records")], indent=2)
    if fmt == "csv":
        return df.to_csv(index=False, float_format=f"%.{digits + 2}f").rstrip("\n")
    if fmt == "markdown":
        return to_markdown(df, digits)
    if fmt == "latex":
        return to_latex(df, digits)
    return rich_table(df, title, digits, width or terminal_width())


def rich_table(df: pd.DataFrame, title: str, digits: int, width: int) -> str:
    """The terminal table in ``width`` columns: headers and cells wrap at spaces, never inside a word (nor
    inside an interval's brackets); when even that is too wide, the columns are split over several tables,
    each beginning with the first (identifying) column."""
    from io import StringIO

    from rich.console import Console

    cols = list(df.columns)
    if not cols:
        return ""
    text = {c: [human(str(c)), *(_cell(v, digits, na="--") for v in df[c])] for c in cols}
    longest = {c: max(len(t) for t in text[c]) for c in cols}
    word = {c: max(len(w) for t in text[c] for w in (_WORD.findall(t) or [""])) for c in cols}

    def needed(chosen: list[str]) -> int:  # rich: one space of padding each side, a border between
        return sum(word[c] for c in chosen) + 3 * len(chosen) + 1

    groups: list[list[str]] = []
    current = cols[:1]
    for col in cols[1:]:
        if needed([*current, col]) <= width:
            current.append(col)
        else:
            groups.append(current)
            current = [cols[0], col]
    groups.append(current)
    buf = StringIO()
    console = Console(file=buf, width=width, force_terminal=False)
    for i, chosen in enumerate(groups):
        part = f" ({i + 1}/{len(groups)})" if len(groups) > 1 else ""
        widths = _fit({c: longest[c] for c in chosen}, {c: word[c] for c in chosen}, width - 3 * len(chosen) - 1)
        console.print(_table(df, text, widths, f"{title}{part}" if title else ""))
    return buf.getvalue().rstrip("\n")


_WORD = re.compile(r"\[[^\]]*\]|[^\s\[]+")  # an interval "[0.777, 0.848]" is one word


def _fit(longest: dict[str, int], word: dict[str, int], room: int) -> dict[str, int]:
    """Column widths within ``room``: each as wide as its longest cell, the widest narrowed first, none
    below its longest word."""
    widths = dict(longest)
    while sum(widths.values()) > room:
        slack = [c for c in widths if widths[c] > word[c]]
        if not slack:
            break
        widest = max(slack, key=lambda c: widths[c])
        widths[widest] -= 1
    return widths


def _table(df: pd.DataFrame, text: dict[str, list[str]], widths: dict[str, int], title: str):  # noqa: ANN202
    """A rich Table of the ``widths`` columns; in a narrowed column an interval goes under its value."""
    from rich.table import Table
    from rich.text import Text

    def cells(col: str) -> list[str]:
        if widths[col] >= max(len(t) for t in text[col]):
            return text[col]
        return [t.replace(" [", "\n[") for t in text[col]]

    columns = {c: cells(c) for c in widths}
    # Text, not markup: a class folder named "[/x]" is data, not a rich style tag
    table = Table(title=Text(title) if title else None)
    for col, w in widths.items():
        numeric = pd.api.types.is_numeric_dtype(df[col])
        table.add_column(Text(columns[col][0]), justify="right" if numeric else "left", width=w, overflow="fold")
    for row in zip(*(columns[c][1:] for c in widths)):
        table.add_row(*(Text(t) for t in row))
    return table


KEY_COLUMNS = ("expression", "members", "accuracy", "f1_macro", "auc", "nll", "ece")
KEY_COLUMNS += ("dice", "dice_std", "iou", "hd95", "hd95_std")  # segmentation
KEY_COLUMNS += ("exact_match",)  # multi-label (accuracy: mean per label; auc: macro over labels)


def key_view(rows: list[dict], digits: int = 4) -> pd.DataFrame:
    """The columns a person reads first (expression, members, accuracy, macro-F1, AUC, NLL, ECE; Dice, IoU,
    HD95), each interval beside its metric as one "0.8136 [0.7773, 0.8477]" column: ``ens fuse``'s default
    terminal view. The full rows are for ``--details`` and the file formats."""
    df = pd.DataFrame(rows)
    keep = [c for c in df.columns if c in KEY_COLUMNS or c.removesuffix("_lo").removesuffix("_hi") in KEY_COLUMNS]
    return with_intervals(df[keep], digits)
