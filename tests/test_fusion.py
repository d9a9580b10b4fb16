"""Fusion on hand-made stores, answers computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ensemble.cli import cli
from ensemble.errors import UsageError
from ensemble.fusion import fuse, parse
from ensemble.fusion.expr import ExpressionError
from ensemble.store import Store
from tests.conftest import write_member

CLASSES = ["x", "y"]
# two folds, 2 + 2 samples; labels [0, 1 | 1, 0]
LABELS = [np.array([0, 1]), np.array([1, 0])]
IDS = [["s0", "s1"], ["s2", "s3"]]


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "members"
    # SGD/000 right on s0, s1, s2, wrong on s3; SGD/001 wrong on s0 (confidently) only
    write_member(
        root,
        "toy",
        "SGD",
        0,
        [np.array([[0.6, 0.4], [0.4, 0.6]]), np.array([[0.3, 0.7], [0.2, 0.8]])],
        LABELS,
        IDS,
        CLASSES,
    )
    write_member(
        root,
        "toy",
        "SGD",
        1,
        [np.array([[0.1, 0.9], [0.3, 0.7]]), np.array([[0.4, 0.6], [0.9, 0.1]])],
        LABELS,
        IDS,
        CLASSES,
    )
    write_member(
        root,
        "toy",
        "DGrad",
        0,
        [np.array([[0.8, 0.2], [0.6, 0.4]]), np.array([[0.5, 0.5], [0.6, 0.4]])],
        LABELS,
        IDS,
        CLASSES,
    )
    return Store(root)


def test_sum_rule_by_hand(store):
    # SGD2: sums s0 [0.7,1.3]->1 (wrong), s1 [0.7,1.3]->1 ok, s2 [0.7,1.3]->1 ok, s3 [1.1,0.9]->0 ok => 3/4
    r = fuse(store, "toy", "SGD2")
    assert r.metrics["accuracy"] == pytest.approx(0.75)
    # preds [1,1,1,0] vs [0,1,1,0]: class0 P=1 R=.5 F1=2/3; class1 P=2/3 R=1 F1=.8 -> macro 0.7333
    assert r.metrics["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    # SGD2+DGrad1: s0 [1.5,1.5] tie -> argmax 0 ok; s1 [1.3,1.7] ok; s2 [1.2,1.8] ok; s3 [1.7,1.3] ok
    assert fuse(store, "toy", "SGD2+DGrad(1)").metrics["accuracy"] == pytest.approx(1.0)


def test_cli_json(store):
    res = CliRunner().invoke(
        cli, ["fuse", "--dataset", "toy", "SGD2", "DGrad1", "--members-dir", str(store.root), "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["expression"] for r in rows] == ["SGD2", "DGrad1"]
    assert rows[0]["members"] == 2 and rows[0]["rule"] == "sum"
    assert rows[0]["accuracy"] == pytest.approx(0.75)
    # DGrad1 preds [0,0,0,0] vs [0,1,1,0] -> 0.5; F1: class0 2/3 (P=.5,R=1), class1 0
    assert rows[1]["accuracy"] == pytest.approx(0.5)
    assert rows[1]["f1_macro"] == pytest.approx(1 / 3)


def test_rules_vote_and_product(store):
    # vote of SGD2+DGrad1 on s0: votes 0:(SGD0,DGrad)=2 -> 0 ok
    r = fuse(store, "toy", "SGD2+DGrad1", rule="vote")
    assert r.scores.argmax(1).tolist() == [0, 1, 1, 0]
    p = fuse(store, "toy", "SGD2", rule="product")
    # s0: 0.6*0.1=.06 vs .4*.9=.36 -> 1
    assert p.scores.argmax(1)[0] == 1
    np.testing.assert_allclose(p.scores.sum(1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "expr, column, words",
    [
        ("SGD2+", 6, "expected a term"),
        ("Foo2", 1, "unknown label 'Foo'"),
        ("SGD2 DGrad1", 6, "expected '+'"),
        ("Cos12", 5, "ends in a digit"),
        ("DGrad(2", 8, "expected ')'"),
        ("SGD1+sgd1", 6, "appears twice"),
    ],
)
def test_malformed_expressions_name_the_column(expr, column, words):
    with pytest.raises(ExpressionError) as err:
        parse(expr)
    msg = str(err.value)
    assert f"column {column}" in msg and words in msg
    assert msg.splitlines()[-1].index("^") - 2 == column - 1  # the caret sits under the column


def test_paper_spelling_parses():
    assert [(t.label, t.count) for t in parse("SGD(14) + DGrad(7) + Cos#1(7)")] == [
        ("SGD", 14),
        ("DGrad", 7),
        ("Cos1", 7),
    ]
    assert [(t.label, t.count) for t in parse("cos2_3+diffgrad4")] == [("Cos2", 3), ("diffGrad", 4)]


def test_over_ask_exits_2_with_train_command(store):
    res = CliRunner().invoke(
        cli,
        ["fuse", "--dataset", "toy", "SGD5", "--members-dir", str(store.root)],
        standalone_mode=False,
        catch_exceptions=True,
    )
    assert isinstance(res.exception, UsageError) and res.exception.exit_code == 2
    assert "2 exist" in str(res.exception) and "ens train --dataset toy --opt SGD --n 5" in str(res.exception)


def test_different_fingerprints_are_not_fused(tmp_path):
    root = tmp_path / "m"
    p = [np.array([[0.6, 0.4], [0.4, 0.6]]), np.array([[0.3, 0.7], [0.2, 0.8]])]
    write_member(root, "toy", "SGD", 0, p, LABELS, IDS, CLASSES, fingerprint="aaa")
    write_member(root, "toy", "Adam", 0, p, LABELS, IDS, CLASSES, fingerprint="bbb")
    with pytest.raises(UsageError, match="toy/Adam/000.*fingerprint|fingerprint"):
        fuse(Store(root), "toy", "SGD1+Adam1")


def test_cli_errors_exit_2_without_traceback(store, tmp_path):
    from tests.conftest import run_ens

    for expr in ["SGD2+", "SGD9"]:
        proc = run_ens("fuse", "--dataset", "toy", expr, "--members-dir", str(store.root))
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "Error:" in proc.stderr


def test_report_writes_tables_and_figures(store, tmp_path):
    from ensemble.reporting.build import report

    pages = report(store, tmp_path / "reports", step=1)
    d = pages[0].parent
    for stem in ["table1", "table2", "per_class", "mixed_vs_single", "diversity"]:
        for ext in [".md", ".csv", ".tex"]:
            assert (d / f"{stem}{ext}").stat().st_size > 0
    pngs = sorted(p.name for p in d.glob("*.png"))
    assert pngs == [
        "accuracy_by_label.png",
        "accuracy_vs_size.png",
        "confusion_best.png",
        "disagreement.png",
        "diversity.png",
        "reliability.png",
    ]
    assert all((d / p).stat().st_size > 1000 for p in pngs)
    first = (d / "table2.md").read_text()
    assert "optimistic" in first and "honest" in first
    report(store, tmp_path / "reports", step=1)
    assert (d / "table2.md").read_text() == first  # regenerating gives identical tables


def test_count_search_agrees_with_fuse(tmp_path):
    """Every combination the report's search scores equals `ens fuse` of the same expression."""
    from ensemble.fusion.search import search

    rng = np.random.default_rng(3)
    root = tmp_path / "members"
    labels = [rng.integers(0, 3, 7), rng.integers(0, 3, 6)]
    ids = [[f"a{i}" for i in range(7)], [f"b{i}" for i in range(6)]]
    for label, runs in (("SGD", 3), ("DGrad", 2), ("Cos1", 2)):
        for r in range(runs):
            # coarse values make exact ties, which must resolve to the first class as argmax does
            coarse = [rng.integers(1, 3, (len(y), 3)).astype(np.float32) for y in labels]
            probs = [c / c.sum(1, keepdims=True) for c in coarse]
            write_member(root, "toy", label, r, probs, labels, ids, ["p", "q", "r"])
    store = Store(root)
    by_label = {lab: store.members("toy", lab) for lab in ("SGD", "DGrad", "Cos1")}
    found = search(by_label, step=1)
    assert len(found) == 4 * 3 * 3 - 1
    from ensemble.fusion.expr import term_text

    for accuracy, counts in found:
        expr = "+".join(term_text(lab, k) for lab, k in counts.items() if k)
        assert accuracy == pytest.approx(fuse(store, "toy", expr).metrics["accuracy"]), expr


def test_branch_free_argmax_is_argmax_with_ties():
    from ensemble.fusion.search import _RowArgmax

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, (5, 1000)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(_RowArgmax(1000, scores.dtype)(scores), scores.argmax(0))
