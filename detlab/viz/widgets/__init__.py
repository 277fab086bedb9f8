"""Widgets for JupyterLab (ipywidgets): browse a dataset step by step through its pipeline, edit
a config with provenance and checks, watch training live, browse errors, re-score detections
without re-running the model, compare runs, see which priors each assigner makes positive.

Each widget's display data also carries a PNG of its current view, so notebooks executed headless
(papermill) stay readable. Imports happen on first use.
"""

from __future__ import annotations

from detlab._lazy import lazy_getattr

_EXPORTS = {
    "WidgetView": "base",
    "DatasetBrowser": "dataset_browser", "BrowserSample": "dataset_browser",
    "ConfigEditor": "config_editor", "ConfigProblem": "config_editor",
    "check_config": "config_editor",
    "TrainingMonitor": "training_monitor", "TrainingProgress": "training_monitor",
    "MonitorHook": "training_monitor",
    "ErrorBrowser": "error_browser",
    "RescoreExplorer": "rescore", "cache_raw_detections": "rescore",
    "RunComparer": "run_comparer",
    "AssignerInspector": "assignments", "assigner_inspector": "assignments",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
