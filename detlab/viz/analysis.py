"""Plots of the error analysis (:mod:`detlab.evaluation.errors`, ``curves``, ``confusion``):
precision-recall curves per class, COCO's stacked error-analysis PR plot, TIDE's dAP bars, the
confusion matrix, per-class AP bars and F1 against the score threshold. Each function returns
the matplotlib figure and saves it when given ``out_file``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from detlab.viz.plots import _figure, _save

if TYPE_CHECKING:
    import pandas as pd

# MMDetection's colours for the C75 ... FN bands of the error-analysis plot
_ANALYSIS_COLORS = ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (0.31, 0.51, 0.74), (0.75, 0.31, 0.30),
                    (0.36, 0.90, 0.38), (0.50, 0.39, 0.64), (1.0, 0.6, 0.0))
_TIDE_COLORS = {"Cls": "#e8575a", "Loc": "#ffa600", "Both": "#9c6ade", "Dupe": "#5a9bd5",
                "Bkg": "#70ad47", "Miss": "#f374a9", "FalsePos": "#7f7f7f",
                "FalseNeg": "#404040"}


def _pick_classes(names: Sequence[str], classes: Sequence[str] | None,
                  max_classes: int) -> list[str]:
    chosen = list(names) if classes is None else [str(c) for c in classes]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ValueError(f"no classes {unknown} here; the classes are {list(names)}")
    return chosen[:max_classes]


def plot_pr_curves(curves: pd.DataFrame, classes: Sequence[str] | None = None,
                   max_classes: int = 20, title: str | None = None,
                   out_file: str | None = None):
    """Precision-recall curves (:func:`detlab.evaluation.curves.pr_curves`), one line per
    class (the first ``max_classes``), AP in the legend."""
    names = list(dict.fromkeys(curves["class"]))
    fig, axes = _figure(1, 1, size=5.0)
    ax = axes[0, 0]
    for name in _pick_classes(names, classes, max_classes):
        rows = curves[curves["class"] == name]
        ax.plot(rows["recall"], rows["precision"],
                label=f"{name} [{rows['precision'].mean():.3f}]")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
           title=title or "precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    _save(fig, out_file)
    return fig


def plot_error_analysis(analysis: dict[str, Any], class_name: str = "all", area: str = "all",
                        title: str | None = None, out_file: str | None = None):
    """COCO's error-analysis plot as MMDetection draws it: the PR curves of C75, C50, Loc, Sim,
    Oth, BG and FN (:func:`detlab.evaluation.errors.coco_error_analysis`) stacked as filled
    bands, each labelled with its AP; ``class_name`` ``'all'`` shows the mean over classes."""
    a = list(analysis["areas"]).index(area)
    if class_name == "all":
        curves, aps = analysis["curves"][:, :, a], analysis["overall"][:, a]
    else:
        k = _pick_classes(analysis["classes"], [class_name], 1)
        k = analysis["classes"].index(k[0])
        curves, aps = analysis["precision"][:, :, k, a], analysis["ap"][:, k, a]
    curves = np.nan_to_num(curves)
    fig, axes = _figure(1, 1, size=5.0)
    ax = axes[0, 0]
    below = np.zeros_like(curves[0])
    for i, name in enumerate(analysis["types"]):
        ax.plot(analysis["recall"], curves[i], color="black", linewidth=0.5)
        ax.fill_between(analysis["recall"], below, curves[i], color=_ANALYSIS_COLORS[i],
                        label=f"[{aps[i]:.3f}] {name}")
        below = curves[i]
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1),
           title=title or f"bbox-{class_name}-{area}")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    _save(fig, out_file)
    return fig


def plot_tide(tide: dict[str, Any], title: str | None = None, out_file: str | None = None):
    """TIDE's dAP bars (:func:`detlab.evaluation.errors.tide_errors`): the six main error types
    (left) and the FalsePos / FalseNeg oracles (right), in AP points (x100)."""
    fig, axes = _figure(2, 1, size=4.0)
    for ax, values, heading in ((axes[0, 0], tide["dap"], "main errors"),
                                (axes[0, 1], tide["special"], "special errors")):
        names = list(values)
        heights = [100 * values[n] for n in names]
        bars = ax.bar(names, heights, color=[_TIDE_COLORS.get(n, "gray") for n in names])
        for bar, height in zip(bars, heights, strict=True):
            ax.annotate(f"{height:.2f}", (bar.get_x() + bar.get_width() / 2, height),
                        ha="center", va="bottom", fontsize=8)
        ax.set(title=heading, ylabel="dAP (points)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title or f"TIDE: AP@{tide['fg_iou']:.2f} = {100 * tide['ap']:.2f}")
    fig.tight_layout()
    _save(fig, out_file)
    return fig


def plot_confusion_matrix(matrix: pd.DataFrame, normalize: bool = True, cmap: str = "plasma",
                          title: str | None = None, out_file: str | None = None):
    """A confusion matrix heatmap (:func:`detlab.evaluation.confusion.confusion_matrix`),
    ground truth down, predictions across; ``normalize`` shows each row in percent of its sum
    (as MMDetection), else the counts."""
    values = matrix.to_numpy(dtype=np.float64)
    if normalize:
        sums = values.sum(axis=1, keepdims=True)
        values = np.divide(100 * values, sums, out=np.zeros_like(values), where=sums > 0)
    n = len(matrix)
    fig, axes = _figure(1, 1, size=max(4.0, 0.5 * n + 2))
    ax = axes[0, 0]
    image = ax.imshow(values, cmap=cmap)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), list(matrix.columns), rotation=45, ha="left", rotation_mode="anchor")
    ax.set_yticks(range(n), list(matrix.index))
    ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
    for i in range(n):
        for j in range(n):
            text = f"{values[i, j]:.0f}%" if normalize else f"{values[i, j]:.0f}"
            ax.text(j, i, text, ha="center", va="center", color="w", fontsize=7)
    ax.set(xlabel="prediction", ylabel="ground truth")
    ax.set_title(title or ("normalized confusion matrix" if normalize else "confusion matrix"))
    fig.tight_layout()
    _save(fig, out_file)
    return fig


def plot_class_ap(table: pd.DataFrame, column: str = "AP", sort: bool = True,
                  title: str | None = None, out_file: str | None = None):
    """Horizontal bars of a per-class column (default ``AP``) of a per-class table
    (:func:`detlab.evaluation.curves.class_average_precision`, ``coco_evaluate``'s
    ``classwise``), highest first; classes without a value are left out."""
    rows = table[table[column].notna()]
    if sort:
        rows = rows.sort_values(column, ascending=True)
    fig, axes = _figure(1, 1, size=max(3.0, 0.25 * len(rows) + 1.5))
    ax = axes[0, 0]
    ax.barh(rows["class"].astype(str), rows[column], color="#5a9bd5")
    for y, value in enumerate(rows[column]):
        ax.annotate(f"{value:.3f}", (value, y), va="center", fontsize=7,
                    xytext=(2, 0), textcoords="offset points")
    ax.set(xlabel=column, xlim=(0, max(1.0, float(rows[column].max() or 0)) * 1.1),
           title=title or f"{column} per class")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    _save(fig, out_file)
    return fig


def plot_f1_threshold(curves: pd.DataFrame, classes: Sequence[str] | None = ("all",),
                      title: str | None = None, out_file: str | None = None):
    """F1, precision and recall against the score threshold
    (:func:`detlab.evaluation.curves.threshold_curves`), one panel per class (default the
    pooled ``'all'``), the best F1 marked."""
    names = list(dict.fromkeys(curves["class"]))
    chosen = _pick_classes(names, classes, 12)
    fig, axes = _figure(len(chosen), 1, size=4.0)
    for ax, name in zip(axes[0], chosen, strict=True):
        rows = curves[curves["class"] == name]
        for key, style in (("f1", "-"), ("precision", "--"), ("recall", ":")):
            ax.plot(rows["score_thr"], rows[key], style, label=key)
        if rows["f1"].notna().any():
            best = rows.loc[rows["f1"].idxmax()]
            ax.axvline(best["score_thr"], color="gray", linewidth=0.8)
            ax.set_title(f"{name}: best F1 {best['f1']:.3f} at {best['score_thr']:.2f}",
                         fontsize=9)
        ax.set(xlabel="score threshold", ylim=(0, 1.01))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out_file)
    return fig
