"""Evaluation: COCO metrics (a vectorized engine identical to pycocotools), Pascal VOC metrics,
and every detection accounted for -- the match table, COCO and TIDE error analysis, confusion
matrices, PR and F1 curves, per-image rankings and run comparisons. Names follow MMDetection 2.x.

Heavy packages (pandas, pycocotools) load when a function needs them.
"""

from __future__ import annotations

from detlab._lazy import lazy_getattr

_EXPORTS = {
    "coco_evaluate": "coco", "dump_results": "coco", "results_to_coco": "coco",
    "eval_map": "voc", "eval_recalls": "voc", "average_precision": "voc",
    "bbox_overlaps": "voc", "map_table": "voc",
    "match_detections": "matching",
    "tide_errors": "errors", "tide_errors_per_class": "errors",
    "coco_error_analysis": "errors",
    "confusion_matrix": "confusion",
    "pr_curves": "curves", "threshold_curves": "curves", "class_average_precision": "curves",
    "mean_average_precision": "curves", "image_ranking": "curves",
    "compare_runs": "compare",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
