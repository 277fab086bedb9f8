"""Pictures of data and results: boxes, masks and labels drawn with PIL, image grids, training
curves and dataset samples (``plots``), evaluation and error-analysis plots (``analysis``)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "draw_boxes": "draw", "draw_detections": "draw", "image_grid": "draw",
    "show_result": "draw",
    "plot_curves": "plots", "show_samples": "plots", "show_predictions": "plots",
    "plot_pr_curves": "analysis", "plot_error_analysis": "analysis", "plot_tide": "analysis",
    "plot_confusion_matrix": "analysis", "plot_class_ap": "analysis",
    "plot_f1_threshold": "analysis",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'detlab.viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"detlab.viz.{module}"), name)
    globals()[name] = value
    return value
