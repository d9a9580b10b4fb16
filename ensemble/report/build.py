"""``ens report``: Table 1, Table 2 and figures for every dataset in the store.

Members are grouped by dataset fingerprint: members trained on different versions of a
dataset are reported separately and never fused together.

Table 2's search over per-label member counts picks the best combination on the same
test folds it reports -- optimistic. The honest variant picks it without looking at the
samples it is scored on: on the validation split when the dataset has one (MedMNIST), else
cross-validated over folds (for each fold, the combination that is best on the other folds).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ..fusion import aligned
from ..fusion.expr import term_text
from ..fusion.metrics import per_class, scores_table
from ..fusion.rules import sum_rule
from ..optim import REGISTRY
from ..store import Member, Store, read_member, run_name
from .tables import render, to_markdown

SEED_ENSEMBLES = [
    "Adam7", "diffGrad7", "DGrad7", "Cos1_7", "Cos2_7", "DGrad7+Cos1_7", "DGrad7+Cos1_7+Cos2_7",
    "DGrad7+Cos1_7+diffGrad7", "DGrad14", "DGrad14+Cos1_7", "SGD14", "SGD7", "SGD7+DGrad7",
    "SGD14+DGrad7+Cos1_7", "SGD14+DGrad7+Cos1_7+diffGrad7",
]


def _groups(store: Store, dataset: str) -> dict[str, dict[str, list[Member]]]:
    """fingerprint -> label -> members (by run index)."""
    out: dict[str, dict[str, list[Member]]] = defaultdict(lambda: defaultdict(list))
    for label in store.labels(dataset):
        for run in store.runs(dataset, label):
            m = read_member(store.label_dir(dataset, label) / run_name(run))
            out[m.fingerprint][label].append(m)
    order = {lab: i for i, lab in enumerate(REGISTRY)}
    return {fp: dict(sorted(d.items(), key=lambda kv: order.get(kv[0], 99))) for fp, d in out.items()}


def table1(by_label: dict[str, list[Member]]) -> list[dict]:
    rows = []
    for label, members in by_label.items():
        s = [scores_table(m.labels, m.probs) for m in members]
        acc, f1 = np.array([x["accuracy"] for x in s]), np.array([x["f1_macro"] for x in s])
        rows.append({"label": label, "members": len(members), "accuracy_mean": acc.mean(),
                     "accuracy_std": acc.std(ddof=1) if len(acc) > 1 else 0.0, "f1_mean": f1.mean(),
                     "f1_std": f1.std(ddof=1) if len(f1) > 1 else 0.0})
    return rows


def _expr(counts: dict[str, int]) -> str:
    return "+".join(term_text(lab, k) for lab, k in counts.items() if k)


def count_grid(n: int, step: int) -> list[int]:
    """Counts a label may contribute: 0, step, 2*step, ... and n itself."""
    return sorted({0, n, *range(step, n + 1, step)})


def search(by_label: dict[str, list[Member]], step: int,
           mask: np.ndarray | None = None) -> list[tuple[float, dict[str, int]]]:
    """Every combination of per-label counts (from :func:`count_grid`), scored by sum-rule accuracy.

    Cumulative sums per label give each label's contribution in one lookup, and a depth-first
    walk over the labels reuses the partial sum of the labels before, so a combination costs
    about one (C, N) addition and one argmax; ``mask`` restricts the samples used for choosing.
    Returns (accuracy, counts) best first, ties broken by fewer members, then enumeration order.
    """
    labels = list(by_label)
    probs, y, _, _ = aligned([m for lab in labels for m in by_label[lab]])
    starts = np.cumsum([0] + [len(by_label[lab]) for lab in labels])
    if mask is not None:
        probs, y = probs[:, mask], y[mask]
    probs = np.ascontiguousarray(probs.transpose(0, 2, 1))  # (members, C, N): one class is one row
    cums = []
    for i in range(len(labels)):
        block = probs[starts[i]:starts[i + 1]]
        cums.append(np.concatenate([np.zeros((1, *block.shape[1:]), block.dtype), np.cumsum(block, axis=0)]))
    grids = [count_grid(len(by_label[lab]), step) for lab in labels]
    results: list[tuple[float, dict[str, int]]] = []
    n = max(len(y), 1)
    sums = np.empty((len(labels), *probs.shape[1:]), probs.dtype)  # one buffer per depth
    argmax = _RowArgmax(len(y), probs.dtype)

    def walk(depth: int, partial: np.ndarray | None, combo: tuple[int, ...]) -> None:
        if depth == len(labels):
            if partial is not None:
                results.append((np.count_nonzero(argmax(partial) == y) / n, dict(zip(labels, combo))))
            return
        for k in grids[depth]:
            part = cums[depth][k]
            if k and partial is not None:
                part = np.add(partial, part, out=sums[depth])
            walk(depth + 1, partial if k == 0 else part, (*combo, k))

    walk(0, None, ())
    results.sort(key=lambda r: (-r[0], sum(r[1].values())))
    return results


class _RowArgmax:
    """``scores.argmax(0)`` for a (C, N) array, without branches.

    numpy's argmax over a few classes per sample branches on the data, and on real,
    unpredictable scores that costs about four times this pass over the class rows: class
    ``c`` is flagged where it beats every class before it (strict ``>``, so the first maximum
    wins, as with argmax), and the winner is the largest flagged class.
    """

    def __init__(self, n: int, dtype: np.dtype) -> None:
        self.best = np.empty(n, dtype)
        self.index = np.empty(n, np.int16)
        self.greater = np.empty(n, bool)
        self.flag = np.empty(n, np.int16)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        best, index, greater, flag = self.best, self.index, self.greater, self.flag
        np.copyto(best, scores[0])
        index.fill(0)
        for c in range(1, len(scores)):
            np.greater(scores[c], best, out=greater)
            np.maximum(best, scores[c], out=best)
            np.multiply(greater, c, out=flag, casting="unsafe")
            np.maximum(index, flag, out=index)
        return index


def _fused(by_label: dict[str, list[Member]], counts: dict[str, int]):
    members = [m for lab, k in counts.items() for m in by_label[lab][:k]]
    probs, y, fold_of, _ = aligned(members)
    return sum_rule(probs), y, fold_of, len(members)


def table2(by_label: dict[str, list[Member]], step: int, top: int = 5,
           val_by_label: dict[str, list[Member]] | None = None) -> list[dict]:
    from ..fusion.expr import parse

    rows = []
    for expr in SEED_ENSEMBLES:
        terms = parse(expr)
        if all(t.label in by_label and len(by_label[t.label]) >= t.count for t in terms):
            scores, y, fold_of, n = _fused(by_label, {t.label: t.count for t in terms})
            rows.append({"ensemble": expr, "selection": "seed's list", "members": n,
                         **_metrics(y, scores, fold_of)})
    found = search(by_label, step)
    for _, counts in found[:top]:
        scores, y, fold_of, n = _fused(by_label, counts)
        rows.append({"ensemble": _expr(counts), "selection": "best on test folds (optimistic)", "members": n,
                     **_metrics(y, scores, fold_of)})
    rows.append(_honest(by_label, step, val_by_label))
    return rows


def _metrics(y: np.ndarray, scores: np.ndarray, fold_of: np.ndarray) -> dict[str, float]:
    m = scores_table(y, scores, fold_of)
    return {"accuracy": m["accuracy"], "f1_macro": m["f1_macro"], "auc": m["auc"]}


def _honest(by_label: dict[str, list[Member]], step: int, val_by_label: dict[str, list[Member]] | None) -> dict:
    """The combination chosen without the samples it is scored on."""
    if val_by_label:
        counts = search(val_by_label, step)[0][1]
        scores, y, fold_of, n = _fused(by_label, counts)
        return {"ensemble": _expr(counts), "selection": "chosen on validation split (honest)", "members": n,
                **_metrics(y, scores, fold_of)}
    probs, y, fold_of, _ = aligned([m for ms in by_label.values() for m in ms])
    pred = np.empty_like(y)
    chosen = []
    full = np.zeros((len(y), probs.shape[2]))
    for k in np.unique(fold_of):
        counts = search(by_label, step, mask=fold_of != k)[0][1]
        chosen.append(_expr(counts))
        scores, _, _, _ = _fused(by_label, counts)
        full[fold_of == k] = scores[fold_of == k]
        pred[fold_of == k] = scores[fold_of == k].argmax(1)
    return {"ensemble": " | ".join(dict.fromkeys(chosen)), "selection": "cross-validated over folds (honest)",
            "members": "per fold", **_metrics(y, full, fold_of)}


def write_tables(out: Path, stem: str, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(to_markdown(__import__("pandas").DataFrame(rows)) + "\n")
    (out / f"{stem}.csv").write_text(render(rows, "csv") + "\n")
    (out / f"{stem}.tex").write_text(render(rows, "latex"))


def report(store: Store, out: Path, step: int = 7) -> list[Path]:
    """Write every table and figure; returns the HTML pages."""
    from .figures import write_figures

    pages = []
    for dataset in store.datasets():
        groups = _groups(store, dataset)
        for fp, by_label in sorted(groups.items()):
            name = dataset if len(groups) == 1 else f"{dataset}-{fp}"
            target = out / name
            val = _val_members(by_label)
            t1 = table1(by_label)
            t2 = table2(by_label, step, val_by_label=val)
            write_tables(target, "table1", t1)
            write_tables(target, "table2", t2)
            best = next(r for r in t2 if r["selection"].startswith("best"))
            figs = write_figures(target, by_label, best["ensemble"])
            pages.append(_html(target, name, fp, t1, t2, figs))
    return pages


def _val_members(by_label: dict[str, list[Member]]) -> dict[str, list[Member]] | None:
    if not all((m.path / "val-0.npz").exists() for ms in by_label.values() for m in ms):
        return None
    return {lab: [read_member(m.path, "val") for m in ms] for lab, ms in by_label.items()}


def _html(target: Path, name: str, fp: str, t1: list[dict], t2: list[dict], figs: list[Path]) -> Path:
    import pandas as pd

    imgs = "\n".join(f'<figure><img src="{f.name}" alt="{f.stem}"><figcaption>{f.stem}</figcaption></figure>'
                     for f in figs)
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>ens report: {name}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px}} img{{max-width:520px}} figure{{display:inline-block}}</style>
</head><body><h1>{name}</h1><p>dataset fingerprint {fp}</p>
<h2>Table 1: stand-alone members</h2>{pd.DataFrame(t1).to_html(index=False, float_format="%.4f")}
<h2>Table 2: sum-rule ensembles</h2>
<p>Rows marked "optimistic" are chosen on the very test folds they are scored on; the "honest" row is chosen
without them (validation split, or cross-validated over folds).</p>
{pd.DataFrame(t2).to_html(index=False, float_format="%.4f", na_rep="")}
<h2>Figures</h2>{imgs}</body></html>
"""
    page = target / "index.html"
    page.write_text(html)
    return page


def confusion_of(by_label: dict[str, list[Member]], expr: str) -> tuple[np.ndarray, list[str]]:
    from ..fusion.expr import parse

    scores, y, _, _ = _fused(by_label, {t.label: t.count for t in parse(expr)})
    classes = next(iter(by_label.values()))[0].classes
    return per_class(y, scores, classes)[1], classes
