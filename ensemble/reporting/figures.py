"""The report's figures (PNG): accuracy by label, accuracy against ensemble size, confusion
matrix of the best ensemble, pairwise disagreement between labels."""

from __future__ import annotations

import contextlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..fusion import aligned  # noqa: E402
from ..fusion.rules import sum_rule  # noqa: E402
from ..fusion.summary import confusion_of  # noqa: E402
from ..store import Member  # noqa: E402


def plain(text: str) -> str:
    """A name from the filesystem as literal figure text: a '$' would start matplotlib's math mode."""
    return str(text).replace("$", r"\$")


def _save(fig: plt.Figure, path: Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    """``rect``: the part of the figure the axes may fill (room left for a suptitle or a figure legend)."""
    import io

    from ..io import atomic_write_bytes

    fig.tight_layout(rect=rect)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", pad_inches=0.1)  # nothing clipped
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())  # whole or not at all
    return path


def luminance(rgba: tuple[float, ...]) -> float:
    """Relative luminance (WCAG 2) of an sRGB colour, 0 (black) to 1 (white)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def text_colour(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever contrasts more with a cell of this colour (WCAG contrast ratio)."""
    lum = luminance(rgba)
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


def annotate(ax: plt.Axes, image, grid: np.ndarray, fmt: str = "{:.2f}", fontsize: int = 8) -> None:  # noqa: ANN001
    """Each cell's value written on it, in the text colour its colour on ``image``'s colour map asks for."""
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            colour = text_colour(image.cmap(image.norm(v)))
            ax.text(j, i, fmt.format(v), ha="center", va="center", color=colour, fontsize=fontsize)


def integer_ticks(axis) -> None:  # noqa: ANN001 - a matplotlib Axis
    """Ticks at whole numbers only: the axis counts something (members, samples)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def legend_outside(ax: plt.Axes, **kwargs: object) -> None:
    """The legend to the right of the axes, where it covers no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def reliability_figure(out: Path, by_label: dict[str, list[Member]], best: str) -> Path | None:
    """Reliability diagram of the best ensemble, as stored and after temperature scaling of its members."""
    from ..errors import UsageError
    from ..fusion import fuse_members
    from ..fusion.expr import parse
    from ..fusion.stats import ECE_BINS, reliability

    members = [m for t in parse(best) for m in by_label[t.label][: t.count]]
    panels = [("as stored", fuse_members(members, "sum", best))]
    with contextlib.suppress(UsageError):  # one fold and no validation split: nothing to fit on honestly
        panels.append(("temperature-scaled members", fuse_members(members, "sum", best, "temperature")))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.6), squeeze=False)
    centres = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
    for ax, (title, result) in zip(axes[0], panels):
        count, conf, acc = reliability(result.labels, result.scores)
        filled = count > 0
        ax.bar(centres[filled], acc[filled], width=1 / ECE_BINS, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.plot(conf[filled], acc[filled], "o", color="C3", ms=4, label="bin (confidence, accuracy)", clip_on=False)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="top-class confidence (15 bins)",
            ylabel="accuracy",
            title=plain(f"{title}\nECE {result.metrics['ece']:.3f}, NLL {result.metrics['nll']:.3f}"),
        )
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=9, frameon=False)  # below, on no data
    fig.suptitle(plain(f"Reliability of {best}"))
    return _save(fig, out / "reliability.png", rect=(0, 0.07, 1, 1))


def diversity_figure(out: Path, rows: list[dict]) -> Path | None:
    """Yule's Q and double-fault between labels, as two heat maps."""
    labels = list(dict.fromkeys([r["label_a"] for r in rows] + [r["label_b"] for r in rows]))
    if len(labels) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, title in zip(
        axes,
        ("yule_q", "double_fault"),
        ("Yule's Q (lower: more diverse)", "double-fault (lower: fewer shared errors)"),
    ):
        grid = np.full((len(labels), len(labels)), np.nan)
        for r in rows:
            i, j = labels.index(r["label_a"]), labels.index(r["label_b"])
            grid[i, j] = grid[j, i] = r[key]
        im = ax.imshow(grid, cmap="viridis")
        annotate(ax, im, grid)
        ax.set_xticks(range(len(labels)), [plain(lab) for lab in labels], rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), [plain(lab) for lab in labels])
        ax.set(title=title)
        fig.colorbar(im, ax=ax)
    return _save(fig, out / "diversity.png")


def write_figures(out: Path, by_label: dict[str, list[Member]], best: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    labels = list(by_label)
    accs = {lab: [float((m.probs.argmax(1) == m.labels).mean()) for m in ms] for lab, ms in by_label.items()}
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    means = [np.mean(accs[lab]) for lab in labels]
    stds = [np.std(accs[lab], ddof=1) if len(accs[lab]) > 1 else 0 for lab in labels]
    ax.bar([plain(lab) for lab in labels], means, yerr=stds, capsize=4, color="C0")
    ax.set(ylabel="accuracy", title="Stand-alone members (mean ± std)")
    ax.set_ylim(max(0, min(means) - 0.1), 1)
    paths.append(_save(fig, out / "accuracy_by_label.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for lab in labels:
        ms = by_label[lab]
        ys = []
        for k in range(1, len(ms) + 1):
            p, y, _, _ = aligned(ms[:k])
            ys.append(float((sum_rule(p).argmax(1) == y).mean()))
        ax.plot(range(1, len(ms) + 1), ys, marker="o", label=plain(lab))
    ax.set(xlabel="members fused (sum rule)", ylabel="accuracy", title="Accuracy against ensemble size")
    integer_ticks(ax.xaxis)
    legend_outside(ax)
    paths.append(_save(fig, out / "accuracy_vs_size.png"))

    cm, classes = confusion_of(by_label, best)
    fig, ax = plt.subplots(figsize=(max(5.5, 4 + 0.5 * len(classes)), 1 + 0.5 * len(classes) + 2))
    im = ax.imshow(cm, cmap="Blues")
    annotate(ax, im, cm.astype(float), "{:.0f}", fontsize=10)
    integer_ticks(fig.colorbar(im, ax=ax, label="samples").ax.yaxis)  # a count axis
    ax.set_xticks(range(len(classes)), [plain(c) for c in classes], rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), [plain(c) for c in classes])
    # the title on two lines, clear of the colour bar
    ax.set(xlabel="predicted", ylabel="true", title=plain(f"Confusion matrix\nof {best}"))
    paths.append(_save(fig, out / "confusion_best.png"))

    preds = {}
    for lab in labels:
        p, y, _, ids = aligned(by_label[lab])
        preds[lab] = p.argmax(2)  # (members, N)
    d = np.zeros((len(labels), len(labels)))
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            d[i, j] = float(np.mean([(pa != pb).mean() for pa in preds[a] for pb in preds[b]]))
    fig, ax = plt.subplots(figsize=(5, 4))
    im = ax.imshow(d, cmap="viridis")
    annotate(ax, im, d)
    ax.set_xticks(range(len(labels)), [plain(lab) for lab in labels], rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), [plain(lab) for lab in labels])
    ax.set(title="Pairwise disagreement between members")
    fig.colorbar(im)
    paths.append(_save(fig, out / "disagreement.png"))
    return paths


def segmentation_figures(out: Path, summary) -> list[Path]:  # noqa: ANN001 - a fusion.seg_summary.SegSummary
    """Dice by label, Dice against ensemble size, and overlays of the best ensemble (the lightweight U-Net
    paper's Fig. 2 colours: truth red, prediction green) drawn on its fused foreground probability -- the
    store holds no images, so the figure is made from the store alone."""
    from ..fusion.seg_summary import dice_by_size, fused_images

    out.mkdir(parents=True, exist_ok=True)
    rows = summary.table1
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(
        [plain(r["label"]) for r in rows],
        [r["dice_mean"] for r in rows],
        yerr=[r["dice_std"] for r in rows],
        capsize=4,
        color="C0",
    )
    ax.set(ylabel="Dice", title="Stand-alone members (mean ± std)")
    ax.set_ylim(max(0, min(r["dice_mean"] for r in rows) - 0.1), 1)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    paths.append(_save(fig, out / "dice_by_label.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, ys in dice_by_size(summary.by_label).items():
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=plain(label))
    ax.set(xlabel="members fused (mean of the maps)", ylabel="Dice", title="Dice against ensemble size")
    integer_ticks(ax.xaxis)
    legend_outside(ax, fontsize=8)
    paths.append(_save(fig, out / "dice_vs_size.png"))

    values, masks, fused, _ = fused_images(summary.best_members())
    order = np.argsort(values["dice"], kind="stable")
    picks = order[np.linspace(0, len(order) - 1, 6).round().astype(int)]  # worst ... best, evenly
    ids = aligned(summary.best_members())[3]
    fig, axes = plt.subplots(1, len(picks), figsize=(2.2 * len(picks), 2.9))
    for ax, i in zip(np.atleast_1d(axes), picks):
        ax.imshow(1 - fused[i, 0], cmap="gray", vmin=0, vmax=1)
        ax.contour(masks[i] > 0, levels=[0.5], colors="red", linewidths=1.2)
        ax.contour(fused[i].argmax(0) > 0, levels=[0.5], colors="lime", linewidths=1.2)
        ax.set_title(plain(f"{ids[i]}\nDice {values['dice'][i]:.2f}"), fontsize=7)
        ax.axis("off")
    fig.suptitle(plain(f"{summary.best}: truth (red), fused (green) on the fused foreground probability"), fontsize=9)
    paths.append(_save(fig, out / "overlays.png", rect=(0, 0, 1, 0.9)))  # the suptitle above the panel titles
    return paths
