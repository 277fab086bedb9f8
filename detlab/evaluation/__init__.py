"""Evaluation: COCO metrics (pycocotools-backed), named as MMDetection 2.x names them."""

from detlab.evaluation.coco import coco_evaluate, dump_results, results_to_coco

__all__ = ["coco_evaluate", "dump_results", "results_to_coco"]
