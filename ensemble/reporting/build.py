"""``ens report``: renders Table 1, Table 2 and figures for every dataset in the store.

What is shown is computed by :mod:`ensemble.fusion.summary`, which reads and checks the
whole store first, so a bad member fails the report before any file is written. Every
name that comes from the filesystem (datasets, classes, labels) is escaped for HTML and LaTeX.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ..fusion.ml_summary import MultiLabelSummary
from ..fusion.seg_summary import SegSummary
from ..fusion.summary import GroupSummary, summarise
from ..io import atomic_write_bytes
from ..store import Store
from ..tasks import get_task
from .tables import render, to_html, to_latex, to_markdown, with_intervals

RECIPE_COLUMNS = ("model", "parameters", "recipe", "setup")  # Table 1's own small table: what was trained
PER_MIXED = ("mixed", "accuracy_mixed", "auc_mixed", "dice_mixed")  # a mixed ensemble's cells, shown once


def presented(rows: list[dict]) -> list[pd.DataFrame]:
    """The tables a reader sees for ``rows`` (the CSV keeps them whole, with machine names): each metric's
    interval beside it as one column; Table 1's recipe columns split off into their own table; a mixed
    ensemble's own cells written once above the comparisons it is in."""
    df = with_intervals(pd.DataFrame(rows))
    recipe = [c for c in RECIPE_COLUMNS if c in df.columns]
    if recipe and "label" in df.columns:
        return [df.drop(columns=recipe), df[["label", *recipe]]]
    if "mixed" in df.columns:
        repeat = df["mixed"].eq(df["mixed"].shift())
        for col in (c for c in PER_MIXED if c in df.columns):
            df[col] = ["" if r else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v, r in zip(df[col], repeat)]
    return [df]


def write_tables(out: Path, stem: str, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    parts = presented(rows)
    # each file appears whole or not at all: a full disk leaves no half table1.md behind
    atomic_write_bytes(out / f"{stem}.md", ("\n\n".join(to_markdown(df) for df in parts) + "\n").encode())
    atomic_write_bytes(out / f"{stem}.csv", (render(rows, "csv") + "\n").encode())
    atomic_write_bytes(out / f"{stem}.tex", "\n".join(to_latex(df) for df in parts).encode())


def report(store: Store, out: Path, step: int = 7, echo: Callable[[str], None] | None = None) -> list[Path]:
    """Write every table and figure, each dataset version's page drawn by its task; returns the HTML pages.
    ``echo`` gets a warning line for everything Table 2 left out (also written on the page)."""
    pages = []
    for group in summarise(store, step):
        for note in getattr(group, "notes", []):
            if echo is not None:
                echo(f"warning: {group.name}: {note}")
        task = get_task(next(iter(group.by_label.values()))[0].meta.task)
        pages.append(task.render_report(out / group.name, group))
    return pages


def classification_page(target: Path, group: GroupSummary) -> Path:
    """Tables 1 and 2, per class, mixed against single, diversity, and the figures of a classification set."""
    from .figures import diversity_figure, reliability_figure, write_figures

    write_tables(target, "table1", group.table1)
    write_tables(target, "table2", group.table2)
    per_class = group.per_class()
    write_tables(target, "per_class", per_class)
    write_tables(target, "mixed_vs_single", group.comparison)
    write_tables(target, "diversity", group.diversity)
    figs = write_figures(target, group.by_label, group.best)
    figs += [
        f
        for f in (reliability_figure(target, group.by_label, group.best), diversity_figure(target, group.diversity))
        if f is not None
    ]
    return _html(target, group, per_class, figs)


def segmentation_page(target: Path, group: SegSummary) -> Path:
    """Tables 1 and 2 (Dice, IoU, HD95), mixed against single (Wilcoxon), and the overlays of a segmentation set."""
    from .figures import segmentation_figures

    write_tables(target, "table1", group.table1)
    write_tables(target, "table2", group.table2)
    write_tables(target, "mixed_vs_single", group.comparison)
    figs = segmentation_figures(target, group)
    body = f"""<h2>Table 1: stand-alone members</h2>{_table(group.table1)}
{_learnt_nothing_note(group)}
<h2>Table 2: ensembles (mean of the probability maps, then argmax)</h2>{_table(group.table2)}
<p>Per image, then averaged over every image of the 5 folds: Dice and IoU of the foreground, HD95 (95th
percentile of the pooled surface distances, pixels of the stored size). Both masks empty: Dice 1, HD95 0;
one empty: Dice 0, HD95 the image diagonal. (std): over images (Table 2) or members (Table 1).</p>
<h2>Mixed against single-optimizer ensembles of the same size</h2>
{_table(group.comparison) if group.comparison else "<p>Not enough members of two labels with one network.</p>"}
<p>Paired Wilcoxon signed-rank test on the per-image Dice; a difference is called one only at p &lt; 0.05.</p>"""
    return _page(target, group.name, group.fingerprint, body, figs)


def multilabel_page(target: Path, group: MultiLabelSummary) -> Path:
    """Tables 1 and 2 (macro AUC, mean per-label accuracy, exact match), each ensemble's AUC per label and the
    best ensemble's per-label table of a multi-label set."""
    write_tables(target, "table1", group.table1)
    write_tables(target, "table2", group.table2)
    write_tables(target, "label_auc", group.label_auc)
    per_label = group.per_label()
    write_tables(target, "per_label", per_label)
    body = f"""<h2>Table 1: stand-alone members</h2>{_table(group.table1)}
{_learnt_nothing_note(group)}
<h2>Table 2: sum-rule ensembles (mean of the per-label probabilities)</h2>{_table(group.table2)}
<p>Pooled over every test image of the folds. AUC: scikit-learn's ROC AUC of each label, averaged over the
labels where it is defined (auc_labels of them; a label whose targets hold one class has none). Accuracy: the
mean over labels of the share of images whose label is called right at 0.5 (MedMNIST's ACC for ChestMNIST);
exact match: the share of images with every label right; F1: macro over labels at 0.5.</p>
<h2>AUC per label</h2>{_table(group.label_auc)}
<p>Empty (NaN): the label's targets hold one class only, so its AUC is undefined.</p>
<h2>Per label: {html.escape(group.best)}</h2>{_table(per_label)}"""
    return _page(target, group.name, group.fingerprint, body, [])


def _table(rows: list[dict], recipe_caption: str = "Recipes (what each label's members share)") -> str:
    parts = presented(rows)
    html_parts = [to_html(df) for df in parts]
    if len(parts) > 1:
        html_parts[1] = f'<p class="caption">{html.escape(recipe_caption)}</p>{html_parts[1]}'
    return "\n".join(html_parts)


def _page(target: Path, name: str, fingerprint: str, body: str, figs: list[Path]) -> Path:
    """The dataset's ``index.html``: ``body``, then the figures under their own heading (none: no heading, as a
    multi-label page draws none)."""
    imgs = "\n".join(
        f'<figure><img src="{html.escape(f.name)}" alt="{html.escape(f.stem)}">'
        f"<figcaption>{html.escape(f.stem)}</figcaption></figure>"
        for f in figs
    )
    figures = f"\n<h2>Figures</h2>{imgs}" if figs else ""
    name = html.escape(name)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ens report: {name}</title>
<style>
body{{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 12px;line-height:1.35}}
div.table{{max-width:100%;overflow-x:auto;margin:0.4em 0 0.8em}}
table{{border-collapse:collapse;font-size:13px}}
th{{background:#f2f2f2;text-align:left;vertical-align:bottom}}
td,th{{border:1px solid #ccc;padding:3px 7px;vertical-align:top;max-width:26em;overflow-wrap:break-word}}
td.num{{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}}
p.caption{{margin:0.6em 0 0.2em;font-style:italic}}
figure{{display:inline-block;vertical-align:top;margin:8px;max-width:100%}}
img{{max-width:100%;height:auto}} figcaption{{text-align:center;font-size:13px;color:#555}}
</style>
</head><body><h1>{name}</h1><p>dataset fingerprint {html.escape(fingerprint)}</p>
{body.rstrip()}{figures}</body></html>
"""
    path = target / "index.html"
    atomic_write_bytes(path, page.encode())
    return path


def _learnt_nothing_note(group: GroupSummary | SegSummary | MultiLabelSummary) -> str:
    """Members that did no better than the majority class, named (they are still fused as stored)."""
    bad = [m for ms in group.by_label.values() for m in ms if m.meta.learnt_nothing]
    if not bad:
        return ""
    items = "".join(f"<li>{html.escape(m.name)}: {html.escape(m.meta.diagnosis)}</li>" for m in bad)
    return f"<p><strong>Members that learnt nothing</strong> (column Learnt nothing):</p><ul>{items}</ul>"


def _html(target: Path, group: GroupSummary, per_class: list[dict], figs: list[Path]) -> Path:
    body = f"""<h2>Table 1: stand-alone members</h2>{_table(group.table1)}
{_learnt_nothing_note(group)}
<h2>Table 2: sum-rule ensembles</h2>
<p>Rows marked "optimistic" are chosen on the very test folds they are scored on; the "honest" row is chosen
without them (validation split, or cross-validated over folds).</p>
{_table(group.table2)}
{"".join(f"<p><strong>Note:</strong> {html.escape(n)}</p>" for n in group.notes)}
<p>Accuracy [95% CI]: bootstrap over samples stratified by class (1000 resamples, seed 0).
NLL, Brier and ECE (15 equal-width bins of the top-class confidence) measure calibration.</p>
<h2>Mixed against single-optimizer ensembles of the same size</h2>
{_table(group.comparison) if group.comparison else "<p>Not enough members of two labels.</p>"}
<p>Each mixed ensemble A<i>k</i>+B<i>k</i> against A2<i>k</i> and B2<i>k</i>, on the same samples: McNemar's
exact test for accuracy, DeLong's test for a binary AUC (paired bootstrap otherwise). A difference is called
one only at p &lt; 0.05.</p>
<h2>Diversity between labels</h2>{_table(group.diversity)}
<h2>Per class: {html.escape(group.best)}</h2>{_table(per_class)}
"""
    return _page(target, group.name, group.fingerprint, body, figs)
