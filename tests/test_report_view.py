"""What a reader sees: report tables with human headers that fit, legible colour maps, integer count axes,
one row per distinct ensemble, and an `ens fuse` terminal table that fits 100 columns."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pandas as pd
import pytest

from ensemble.reporting import figures
from ensemble.reporting.tables import human, render
from tests.conftest import run_cli
from tests.test_stats import random_store


@pytest.mark.parametrize(
    ("cmap", "value", "colour"),
    [("Blues", 1.0, "white"), ("Blues", 0.0, "black"), ("viridis", 0.0, "white"), ("viridis", 1.0, "black")],
)
def test_text_colour_follows_the_cells_luminance(cmap, value, colour):
    """A dark cell (navy, viridis' purple) gets white text, a light one (pale blue, yellow) black."""
    assert figures.text_colour(matplotlib.colormaps[cmap](value)) == colour


def test_heat_map_annotations_take_their_colour_from_the_colormap():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    grid = np.array([[0.0, 10.0], [5.0, 100.0]])
    im = ax.imshow(grid, cmap="Blues")
    figures.annotate(ax, im, grid, "{:.0f}")
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    plt.close(fig)
    assert colours["100"] == "white" and colours["0"] == "black"
    for text, colour in colours.items():
        lum = figures.luminance(im.cmap(im.norm(float(text))))
        assert colour == ("white" if lum < 0.18 else "black")


def _figures_of(monkeypatch, make) -> dict[str, object]:
    """The figures ``make`` draws, by file name, kept open to be inspected."""
    drawn = {}

    def keep(fig, path, rect=None):  # noqa: ANN001, ANN202
        drawn[path.name] = fig
        return path

    monkeypatch.setattr(figures, "_save", keep)
    make()
    return drawn


def test_count_axes_have_integer_ticks(tmp_path, monkeypatch):
    """Members fused and the confusion matrix's sample counts: ticks at whole numbers only."""
    from ensemble.fusion.summary import groups

    store = random_store(tmp_path / "M", classes=3, runs=4)
    by_label = next(iter(groups(store, "toy").values()))
    drawn = _figures_of(monkeypatch, lambda: figures.write_figures(tmp_path / "R", by_label, "SGD2+DGrad2"))
    size_axis = drawn["accuracy_vs_size.png"].axes[0].xaxis
    counts_axis = drawn["confusion_best.png"].axes[1].yaxis  # the colour bar
    for axis in (size_axis, counts_axis):
        lo, hi = axis.get_view_interval()
        ticks = [t for t in axis.get_majorticklocs() if lo <= t <= hi]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
    figures.plt.close("all")


def test_a_sum_rule_ensemble_is_a_multiset(tmp_path):
    """SGD1+DGrad1 and DGrad1+SGD1 are one ensemble: one row, written one way."""
    from ensemble.fusion.summary import distinct, groups, mixed_vs_single, multiset

    assert multiset("SGD1+DGrad1") == multiset("DGrad1+SGD1") != multiset("SGD1+DGrad2")
    rows = [{"ensemble": "SGD1+DGrad1", "v": 1}, {"ensemble": "DGrad1+SGD1", "v": 2}, {"ensemble": "SGD2", "v": 3}]
    assert distinct(rows, "ensemble") == [rows[0], rows[2]]

    store = random_store(tmp_path / "M", runs=2)
    by_label = next(iter(groups(store, "toy").values()))
    rows = mixed_vs_single(by_label, resamples=50)
    assert {r["mixed"] for r in rows} == {"SGD1+DGrad1"}  # never also "DGrad1+SGD1"
    assert [r["single"] for r in rows] == ["SGD2", "DGrad2"]  # each comparison once


def test_report_tables_have_human_headers_and_the_csv_machine_names(tmp_path):
    from ensemble.reporting.build import report

    store = random_store(tmp_path / "M", runs=4)
    d = report(store, tmp_path / "R", step=1)[0].parent
    md, csv = (d / "table1.md").read_text(), (d / "table1.csv").read_text()
    assert "| Accuracy (mean) |" in md and "accuracy_mean" not in md
    assert csv.splitlines()[0].split(",")[:3] == ["label", "members", "accuracy_mean"]
    assert md.count("| Label |") == 2 and "| Recipe | Setup |" in md  # the recipe in its own small table
    mixed = (d / "mixed_vs_single.md").read_text()
    assert "p (McNemar)" in mixed and "p_mcnemar" in (d / "mixed_vs_single.csv").read_text()
    assert mixed.count("SGD2+DGrad2") == 1 and "DGrad2+SGD2" not in mixed
    assert "Accuracy [95% CI]" in (d / "table2.md").read_text()
    tex = (d / "table2.tex").read_text()
    assert "accuracy\\_lo" not in tex and "p{" in tex  # long text columns wrap on the page
    page = (d / "index.html").read_text()
    assert "<th" in page and "overflow-wrap" in page and ">p (McNemar)</th>" in page


def _multilabel_store(root, *, n: int = 30, seed: int = 0) -> None:
    """Hand-made multi-label members of ``ml`` (2 folds, 3 labels, informative probabilities)."""
    import json

    from tests.conftest import write_member

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 3))
    y[0], y[1] = 0, 1
    ids = [f"m{i:03d}" for i in range(n)]
    half = n // 2
    for label in ("SGD", "DGrad"):
        for run in range(2):
            p = np.clip(0.6 * y + 0.4 * rng.random(y.shape), 0, 1)
            parts = [p[:half], p[half:]], [y[:half], y[half:]], [ids[:half], ids[half:]]
            d = write_member(root, "ml", label, run, *parts, list("abc"))
            meta = json.loads((d / "member.json").read_text())
            (d / "member.json").write_text(json.dumps({**meta, "task": "multilabel"}))


def test_a_page_without_figures_has_no_figures_heading_and_one_with_them_keeps_it(tmp_path):
    """A multi-label page draws no figure: no empty "Figures" heading; a classification page's figures stay,
    under their heading, each file there."""
    from ensemble.reporting.build import report

    store = random_store(tmp_path / "M", runs=2)
    _multilabel_store(tmp_path / "M")
    pages = {p.parent.name: p.read_text() for p in report(store, tmp_path / "R", step=1)}
    assert set(pages) == {"ml", "toy"}
    assert "AUC per label" in pages["ml"]
    assert "Figures" not in pages["ml"] and "<figure>" not in pages["ml"]
    assert pages["ml"].rstrip().endswith("</table></div></body></html>")
    toy = pages["toy"]
    assert toy.count("<h2>Figures</h2>") == 1
    images = re.findall(r'<img src="([^"]+)"', toy)
    assert len(images) >= 3 and toy.index("<h2>Figures</h2>") < toy.index("<img")
    assert all((tmp_path / "R" / "toy" / name).stat().st_size > 1000 for name in images)


def test_human_leaves_unknown_names_alone():
    assert human("accuracy_mean") == "Accuracy (mean)" and human("p_mcnemar") == "p (McNemar)"
    assert human("f1_macro_lo") == "Macro-F1 (95% CI low)" and human("hd95_std") == "HD95 (std)"
    assert human("[red]") == "[red]" and human("my_class") == "my_class"  # a class name is data


def _header_words(out: str) -> set[str]:
    return set(re.findall(r"[^\s┃│┏┓┗┛━┳┻╇┡┩┃]+", out))


def test_a_wide_table_is_split_not_cut():
    cols = ["expression", *(f"metric_number_{i}" for i in range(18))]
    rows = [dict(zip(cols, ["SGD14+DGrad7+Cos1_7", *np.linspace(0, 1, 18)]))]
    out = render(rows, "table", title="wide", width=100)
    assert max(len(line) for line in out.splitlines()) <= 100
    words = _header_words(out)
    assert all(human(c) in words for c in cols)  # every header whole, on some line


def test_default_fuse_view_fits_100_columns(tmp_path, capsys, monkeypatch):
    """`ens fuse --ci` at 100 columns: no line longer, every header word whole; --details, csv keep all."""
    store = random_store(tmp_path / "M", runs=4)
    monkeypatch.setenv("COLUMNS", "100")
    args = ["fuse", "--dataset", "toy", "--members-dir", str(store.root), "--resamples", "1000"]
    exprs = ["SGD4+DGrad4", "SGD2+DGrad2", "DGrad4"]
    code, out, err = run_cli(capsys, *args, "--ci", *exprs)
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 100, out
    words = _header_words(out)
    for header in ("Expression", "Members", "Accuracy", "Macro-F1", "AUC", "NLL", "ECE", "[95%", "CI]"):
        assert header in words, (header, out)
    assert "0.7" in out or "0.8" in out or "0.9" in out  # the numbers themselves
    assert all(e in out for e in exprs)
    code, out, err = run_cli(capsys, *args, "--ci", "--format", "csv", *exprs)
    assert code == 0, err
    header = pd.read_csv(__import__("io").StringIO(out)).columns
    assert {"accuracy_lo", "accuracy_hi", "brier", "f1_fold_std"} <= set(header)
    code, out, err = run_cli(capsys, *args, "--ci", "--details", *exprs)
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 100 and "Brier" in out and "(fold" in out
