"""Plots for notebooks and reports: training curves from JSON logs, dataset samples with their
ground truth, predictions next to ground truth. Each function returns the matplotlib figure and
saves it when given ``out_file``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np


def _figure(ncols: int, nrows: int, size: float = 3.2):
    import matplotlib

    if not os.environ.get("DISPLAY") and "ipykernel" not in __import__("sys").modules:
        matplotlib.use("Agg")  # headless: no window to open
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)


def _save(fig: Any, out_file: str | None) -> None:
    if out_file:
        os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
        fig.savefig(out_file, bbox_inches="tight", dpi=100)


def train_curve_table(json_log: str):
    """The train rows of a JSON log as a DataFrame with a global ``step`` (iterations since the
    start, counting an epoch as its last logged iteration, as MMDetection's analyze_logs)."""
    from detlab.engine.logging import load_json_log

    frame = load_json_log(json_log)
    train = frame[frame["mode"] == "train"].copy() if "mode" in frame else frame.copy()
    if train.empty:
        train["step"] = []
        return train
    per_epoch = int(train[train["epoch"] == train["epoch"].min()]["iter"].max())
    train["step"] = (train["epoch"] - 1) * per_epoch + train["iter"]
    return train


def plot_curves(json_logs: str | Sequence[str], keys: Sequence[str] = ("loss",),
                legend: Sequence[str] | None = None, title: str | None = None,
                out_file: str | None = None):
    """Curves of ``keys`` (train losses against iterations; val metrics such as ``bbox_mAP``
    against epochs) from one or more JSON logs, one panel per key. A key a log does not hold
    (yet) leaves a note in its panel instead of a curve."""
    from detlab.engine.logging import load_json_log

    logs = [json_logs] if isinstance(json_logs, str) else list(json_logs)
    names = list(legend) if legend else [os.path.basename(p) for p in logs]
    fig, axes = _figure(len(keys), 1, size=4.0)
    for ax, key in zip(axes[0], keys, strict=True):
        for path, name in zip(logs, names, strict=True):
            train = train_curve_table(path)
            if key in train and train[key].notna().any():
                ax.plot(train["step"], train[key], label=name)
                ax.set_xlabel("iteration")
                continue
            frame = load_json_log(path)
            val = frame[frame["mode"] == "val"] if "mode" in frame else frame.iloc[:0]
            if key in val and val[key].notna().any():
                ax.plot(val["epoch"], val[key], marker="o", label=name)
                ax.set_xlabel("epoch")
            else:  # e.g. a metric before the first evaluation: say so in the panel
                logged = ", ".join(c for c in frame.columns if c != "mode")
                ax.text(0.5, 0.5, f"no {key} in {os.path.basename(path)} yet\n(logged: "
                        f"{logged})", ha="center", va="center", wrap=True, fontsize=8,
                        transform=ax.transAxes)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if len(logs) > 1:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out_file)
    return fig


def _raw_image(dataset: Any, index: int) -> np.ndarray:
    from PIL import Image

    info = dataset.data_infos[index]
    path = os.path.join(dataset.img_prefix or "", info["filename"])
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _ground_truth(dataset: Any, index: int, image: np.ndarray) -> np.ndarray:
    from detlab.viz.draw import draw_boxes

    ann = dataset.get_ann_info(index)
    texts = [dataset.CLASSES[int(label)] for label in ann["labels"]]
    return draw_boxes(image, ann["bboxes"], labels=ann["labels"], texts=texts)


def _show_grid(images: Sequence[np.ndarray], titles: Sequence[str], ncols: int,
               out_file: str | None):
    ncols = max(1, min(ncols, len(images)))
    nrows = (len(images) + ncols - 1) // ncols
    fig, axes = _figure(ncols, nrows)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, out_file)
    return fig


def show_samples(dataset: Any, indices: Sequence[int] | int = 6, ncols: int = 3,
                 out_file: str | None = None):
    """Images of a dataset with their ground-truth boxes (``indices``, or the first N)."""
    indices = range(min(indices, len(dataset))) if isinstance(indices, int) else indices
    images, titles = [], []
    for index in indices:
        images.append(_ground_truth(dataset, index, _raw_image(dataset, index)))
        titles.append(os.path.basename(dataset.data_infos[index]["filename"]))
    return _show_grid(images, titles, ncols, out_file)


def show_predictions(dataset: Any, results: Sequence[Any], indices: Sequence[int] | int = 4,
                     score_thr: float = 0.3, out_file: str | None = None):
    """For each image, its ground truth (left) next to the detections above ``score_thr``
    (right); ``results`` are the DetResults of the dataset, in its order."""
    from detlab.viz.draw import draw_detections

    indices = range(min(indices, len(dataset))) if isinstance(indices, int) else indices
    images, titles = [], []
    for index in indices:
        raw = _raw_image(dataset, index)
        images += [_ground_truth(dataset, index, raw),
                   draw_detections(raw, results[index].filter(score_thr),
                                   class_names=dataset.CLASSES)]
        name = os.path.basename(dataset.data_infos[index]["filename"])
        titles += [f"{name}: ground truth", f"{name}: detections >= {score_thr}"]
    return _show_grid(images, titles, 2, out_file)
