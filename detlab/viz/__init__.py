"""Pictures of data and results: boxes, masks and labels drawn with PIL, image grids, training
curves and dataset samples (``plots``), evaluation and error-analysis plots (``analysis``)."""

from __future__ import annotations

from detlab._lazy import lazy_getattr

_EXPORTS = {
    "draw_boxes": "draw", "draw_detections": "draw", "image_grid": "draw",
    "show_result": "draw",
    "plot_curves": "plots", "show_samples": "plots", "show_predictions": "plots",
    "plot_pr_curves": "analysis", "plot_error_analysis": "analysis", "plot_tide": "analysis",
    "plot_confusion_matrix": "analysis", "plot_class_ap": "analysis",
    "plot_f1_threshold": "analysis",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
