"""Calibration, intervals, paired tests, diversity and learned fusion, each against an independent computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import f1_score, roc_auc_score

from ensemble.cli import cli
from ensemble.fusion.stats import (
    _macro_f1_batch,
    auc_batch,
    bootstrap_ci,
    delong,
    pair_diversity,
    stratified_resamples,
)
from ensemble.store import Store
from tests.conftest import write_member


def random_store(
    root,
    *,
    n: int = 60,
    classes: int = 2,
    labels=("SGD", "DGrad"),
    runs: int = 2,
    folds: int = 3,
    seed: int = 0,
    repeat: int = 1,
) -> Store:
    """Members with informative but noisy probabilities; ``repeat`` copies every sample (more data, same kind)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    y[:classes] = np.arange(classes)
    y = np.tile(y, repeat)
    ids = np.array([f"s{i:05d}" for i in range(len(y))])
    fold_of = np.arange(len(y)) % folds
    for li, label in enumerate(labels):
        for r in range(runs):
            logits = rng.normal(0, 1.5, (n, classes))
            logits = np.tile(logits, (repeat, 1))
            logits[np.arange(len(y)), y] += 1.0 + 0.5 * li
            p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            write_member(
                root,
                "toy",
                label,
                r,
                [p[fold_of == k] for k in range(folds)],
                [y[fold_of == k] for k in range(folds)],
                [list(ids[fold_of == k]) for k in range(folds)],
                [f"c{c}" for c in range(classes)],
            )
    return Store(root)


def fused(store: Store, expr: str) -> tuple[np.ndarray, np.ndarray]:
    """The sum rule by hand: mean of the members' probabilities in id order, and the labels."""
    from ensemble.fusion.expr import parse

    rows = []
    for t in parse(expr):
        for m in store.members("toy", t.label, t.count):
            order = np.argsort(m.ids)
            rows.append(m.probs[order].astype(np.float64))
            y = m.labels[order]
    return np.mean(rows, axis=0), y


def ece_by_hand(y, p, bins=15):
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(c > lo or (b == 0 and c == 0)) and c <= hi for c in conf]
        inside = np.array(inside)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return total


def test_fuse_json_reports_nll_brier_ece(tmp_path):
    store = random_store(tmp_path / "M", classes=3)
    res = CliRunner().invoke(
        cli, ["fuse", "--dataset", "toy", "SGD2+DGrad1", "--members-dir", str(store.root), "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)[0]
    p, y = fused(store, "SGD2+DGrad1")
    assert row["nll"] == pytest.approx(-np.mean(np.log(p[np.arange(len(y)), y])), abs=1e-6)
    assert row["brier"] == pytest.approx(np.mean(((p - np.eye(3)[y]) ** 2).sum(1)), abs=1e-6)
    assert row["ece"] == pytest.approx(ece_by_hand(y, p), abs=1e-6)


def test_batched_metrics_equal_sklearn():
    rng = np.random.default_rng(3)
    for classes in (2, 4):
        y = rng.integers(0, classes, 80)
        y[:classes] = np.arange(classes)
        scores = rng.dirichlet(np.ones(classes), 80)
        scores[5] = scores[6]  # ties
        idx = stratified_resamples(y, 20, seed=1)
        got_auc = auc_batch(y[idx], scores[idx])
        got_f1 = _macro_f1_batch(y[idx], scores.argmax(1)[idx], classes)
        for i, rows in enumerate(idx):
            want = (
                roc_auc_score(y[rows], scores[rows][:, 1])
                if classes == 2
                else roc_auc_score(y[rows], scores[rows], multi_class="ovr", average="macro")
            )
            assert got_auc[i] == pytest.approx(want, abs=1e-12)
            assert got_f1[i] == pytest.approx(
                f1_score(
                    y[rows], scores[rows].argmax(1), average="macro", labels=list(range(classes)), zero_division=0
                ),
                abs=1e-12,
            )
            assert np.array_equal(np.bincount(y[rows], minlength=classes), np.bincount(y, minlength=classes))


def test_ci_contains_estimate_is_reproducible_and_shrinks(tmp_path):
    small = random_store(tmp_path / "S", classes=3)
    large = random_store(tmp_path / "L", classes=3, repeat=8)
    widths = {}
    for name, store in (("small", small), ("large", large)):
        outs = []
        for _ in range(2):
            res = CliRunner().invoke(
                cli,
                [
                    "fuse",
                    "--dataset",
                    "toy",
                    "SGD2+DGrad2",
                    "--ci",
                    "--members-dir",
                    str(store.root),
                    "--format",
                    "json",
                ],
            )
            assert res.exit_code == 0, res.output
            outs.append(json.loads(res.output)[0])
        assert outs[0] == outs[1]  # same seed, same interval
        row = outs[0]
        for metric in ("accuracy", "f1_macro", "auc"):
            assert row[f"{metric}_lo"] <= row[metric] <= row[f"{metric}_hi"], (name, metric, row)
        widths[name] = {m: row[f"{m}_hi"] - row[f"{m}_lo"] for m in ("accuracy", "f1_macro", "auc")}
    for metric in ("accuracy", "f1_macro", "auc"):
        assert widths["large"][metric] < 0.6 * widths["small"][metric]


def test_bootstrap_of_a_perfect_classifier_is_a_point():
    y = np.array([0, 1] * 10)
    ci = bootstrap_ci(y, np.eye(2)[y])
    assert ci["accuracy_lo"] == ci["accuracy_hi"] == 1.0


def delong_by_definition(y, a, b):
    """DeLong et al. (1988) from its definition: placement values by pairwise comparison (ties count 1/2)."""
    pos, neg = y == 1, y == 0

    def components(s):
        x, z = s[pos], s[neg]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        return psi.mean(), psi.mean(1), psi.mean(0)

    auc_a, v10a, v01a = components(a)
    auc_b, v10b, v01b = components(b)
    m, n = pos.sum(), neg.sum()
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (auc_a - auc_b) / math.sqrt(var)
    return auc_a, auc_b, math.erfc(abs(z) / math.sqrt(2))


def test_delong_equals_its_definition():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 90)
    a = y + rng.normal(0, 1.0, 90)
    b = np.round(y + rng.normal(0, 1.3, 90), 1)  # ties
    got, want = delong(y, a, b), delong_by_definition(y, a, b)
    assert got == pytest.approx(want, abs=1e-10)


def test_compare_matches_statsmodels_and_delong(tmp_path):
    from statsmodels.stats.contingency_tables import mcnemar

    store = random_store(tmp_path / "M", classes=2, n=120)
    res = CliRunner().invoke(
        cli,
        ["compare", "--dataset", "toy", "SGD1+DGrad1", "SGD2", "--members-dir", str(store.root), "--format", "json"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    tests = {t["metric"]: t for t in out["tests"]}
    pa, y = fused(store, "SGD1+DGrad1")
    pb, _ = fused(store, "SGD2")
    ra, rb = pa.argmax(1) == y, pb.argmax(1) == y
    table = [[np.sum(ra & rb), np.sum(ra & ~rb)], [np.sum(~ra & rb), np.sum(~ra & ~rb)]]
    assert tests["accuracy"]["p"] == pytest.approx(mcnemar(table, exact=True).pvalue, abs=1e-12)
    assert tests["accuracy"]["difference"] == pytest.approx(ra.mean() - rb.mean())
    auc_a, auc_b, p = delong_by_definition(y, pa[:, 1], pb[:, 1])
    assert tests["auc"]["test"] == "DeLong" and tests["auc"]["p"] == pytest.approx(p, abs=1e-4)
    assert tests["auc"]["difference"] == pytest.approx(auc_a - auc_b, abs=1e-9)
    text = CliRunner().invoke(
        cli, ["compare", "--dataset", "toy", "SGD1+DGrad1", "SGD2", "--members-dir", str(store.root)]
    )
    assert text.exit_code == 0
    verdict = text.output.strip().splitlines()[-1]
    assert "McNemar exact p =" in verdict and "DeLong p =" in verdict
    assert f"{tests['accuracy']['difference']:+.4f}" in verdict and f"{tests['auc']['difference']:+.4f}" in verdict


def test_verdict_never_calls_an_insignificant_difference_better(tmp_path):
    store = random_store(tmp_path / "M", classes=3, n=30, runs=1)
    res = CliRunner().invoke(
        cli, ["compare", "--dataset", "toy", "SGD1", "DGrad1", "--members-dir", str(store.root), "--format", "json"]
    )
    out = json.loads(res.output)
    for t in out["tests"]:
        if t["p"] >= 0.05:
            assert f"higher {t['metric']}" not in out["verdict"]
    assert "paired bootstrap" in {t["test"] for t in out["tests"]}


def test_temperature_never_sees_the_rows_it_scores(tmp_path):
    from ensemble.fusion.calibrate import fit_temperature, row_temperatures

    store = random_store(tmp_path / "M", classes=3, runs=1, folds=3)
    member = store.members("toy", "SGD")[0]
    temps = row_temperatures(member)
    for k in range(3):
        rows = member.fold_of == k
        assert np.allclose(temps[rows], fit_temperature(member.labels[~rows], member.probs[~rows]))
    # make fold 0's own rows absurdly overconfident and wrong: its temperature must not move
    wrong = member.probs.copy()
    rows0 = member.fold_of == 0
    wrong[rows0] = np.eye(3)[(member.labels[rows0] + 1) % 3] * 0.98 + 0.01 / 1
    wrong[rows0] /= wrong[rows0].sum(1, keepdims=True)
    from dataclasses import replace

    again = row_temperatures(replace(member, probs=wrong))
    assert np.allclose(again[rows0], temps[rows0])
    assert not np.allclose(again[~rows0], temps[~rows0])


def test_temperature_on_validation_split_when_there_is_one(tmp_path):
    from ensemble.fusion.calibrate import fit_temperature, row_temperatures
    from ensemble.store import read_member

    store = random_store(tmp_path / "M", classes=2, runs=1, folds=1)
    member = store.members("toy", "SGD")[0]
    with pytest.raises(Exception, match="validation split or at least 2 folds"):
        row_temperatures(member)
    rng = np.random.default_rng(0)
    vy = rng.integers(0, 2, 40)
    vp = np.clip(np.eye(2)[vy] * 0.9 + rng.uniform(0, 0.3, (40, 2)), 0, None)
    vp /= vp.sum(1, keepdims=True)
    np.savez(
        member.path / "val-0.npz", probs=vp.astype(np.float32), labels=vy, ids=np.array([f"v{i}" for i in range(40)])
    )
    val = read_member(member.path, "val")
    assert np.allclose(row_temperatures(member, val), fit_temperature(vy, vp.astype(np.float32)))


def test_calibrate_option_changes_nll_not_accuracy_of_one_member(tmp_path):
    store = random_store(tmp_path / "M", classes=3, runs=1)
    rows = {}
    for how in ("none", "temperature"):
        res = CliRunner().invoke(
            cli,
            [
                "fuse",
                "--dataset",
                "toy",
                "SGD1",
                "--calibrate",
                how,
                "--members-dir",
                str(store.root),
                "--format",
                "json",
            ],
        )
        assert res.exit_code == 0, res.output
        rows[how] = json.loads(res.output)[0]
    assert rows["none"]["accuracy"] == rows["temperature"]["accuracy"]  # T > 0 keeps each row's argmax
    assert rows["none"]["nll"] != rows["temperature"]["nll"]
    assert rows["temperature"]["rule"] == "sum (temperature)"


def test_pair_diversity_by_hand():
    a = np.array([1, 1, 0, 0, 1, 0, 1, 1], bool)
    b = np.array([1, 0, 0, 1, 1, 0, 1, 0], bool)
    # n11 = 3, n10 = 2, n01 = 1, n00 = 2
    d = pair_diversity(a, b)
    assert d["yule_q"] == pytest.approx((3 * 2 - 1 * 2) / (3 * 2 + 1 * 2))
    assert d["double_fault"] == pytest.approx(2 / 8)
    assert d["error_correlation"] == pytest.approx(np.corrcoef(~a, ~b)[0, 1])


@pytest.mark.parametrize("method", ["weighted", "greedy", "stacking"])
def test_learned_fusion_is_cross_fitted(tmp_path, method):
    from ensemble.fusion.learned import learned_fusion

    store = random_store(tmp_path / "M", classes=3, folds=3)
    by_label = {lab: store.members("toy", lab) for lab in ("SGD", "DGrad")}
    scores, y, fold_of, how = learned_fusion(method, by_label)
    assert how == "cross-fitted over folds" and np.allclose(scores.sum(1), 1)
    # relabel fold 0's samples: what fold 0 gets must not change (it is fitted on folds 1 and 2 only)
    from dataclasses import replace

    moved = {
        lab: [replace(m, labels=np.where(m.fold_of == 0, (m.labels + 1) % 3, m.labels)) for m in ms]
        for lab, ms in by_label.items()
    }
    again, _, _, _ = learned_fusion(method, moved)
    assert np.allclose(again[fold_of == 0], scores[fold_of == 0])
    assert not np.allclose(again[fold_of != 0], scores[fold_of != 0])


def test_report_shows_calibration_and_mixed_vs_single(tmp_path):
    store = random_store(tmp_path / "M", classes=2, runs=4)
    res = CliRunner().invoke(
        cli, ["report", "--members-dir", str(store.root), "--out", str(tmp_path / "R"), "--step", "1"]
    )
    assert res.exit_code == 0, res.output
    d = tmp_path / "R" / "toy"
    page = (d / "index.html").read_text()
    assert 'src="reliability.png"' in page and (d / "reliability.png").stat().st_size > 1000
    assert "p_mcnemar" in page and "SGD2+DGrad2" in page and "SGD4" in page
    mixed = (d / "mixed_vs_single.csv").read_text()
    assert "SGD2+DGrad2,SGD4" in mixed
    table2 = (d / "table2.md").read_text()  # human headers; the interval beside its metric
    for words in ("weighted sum", "greedy selection", "stacking", "Accuracy [95% CI]", "ECE"):
        assert words in table2
    header = (d / "table2.csv").read_text().splitlines()[0].split(",")  # machine names, for scripts
    assert {"accuracy_lo", "accuracy_hi", "ece"} <= set(header)
