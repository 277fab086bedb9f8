"""The quick recall of region proposals (MMDetection 2.x's ``metric='proposal_fast'`` of
``CocoDataset.evaluate``): average recall at each proposal budget, over IoU thresholds 0.5:0.95,
against every box of the annotation file that is neither crowd nor ignored (all categories,
whatever the dataset's classes).

It is the ``eval_recalls`` of :mod:`detlab.evaluation.voc` on those boxes: each image's best
``n`` proposals paired greedily with its boxes by decreasing IoU. ``metric='proposal'`` is
pycocotools' (:func:`detlab.evaluation.coco.coco_evaluate` with ``iou_type='proposal'``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

# COCO's IoU thresholds, MMDetection's default for proposal_fast
COCO_IOU_THRS = tuple(np.linspace(0.5, 0.95, 10, endpoint=True).tolist())


def coco_gt_boxes(coco: Any, img_ids: Sequence[int]) -> list[np.ndarray]:
    """Per image of ``img_ids``, the ``(G, 4)`` xyxy boxes of a ``pycocotools`` ``COCO``'s
    annotations that are neither ``iscrowd`` nor ``ignore``."""
    boxes = []
    for img_id in img_ids:
        rows = [[x, y, x + w, y + h] for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
                if not (ann.get("ignore", False) or ann.get("iscrowd", 0))
                for x, y, w, h in [ann["bbox"]]]
        boxes.append(np.array(rows, dtype=np.float32).reshape(-1, 4))
    return boxes


def fast_eval_recall(gt_boxes: Sequence[np.ndarray], results: Sequence[Any],
                     proposal_nums: Sequence[int] = (100, 300, 1000),
                     iou_thrs: Sequence[float] | None = None,
                     logger: logging.Logger | str | None = None) -> dict[str, float]:
    """``AR@{num}`` for each of ``proposal_nums``: the recall of each image's best ``num``
    proposals (``results``: DetResults or ``(P, 5)`` arrays, one per image) at each of
    ``iou_thrs`` (None: 0.5, 0.55 ... 0.95), averaged over the thresholds. ``logger`` gets the
    numbers as MMDetection prints them (``'silent'``: nothing)."""
    from detlab.evaluation.voc import eval_recalls

    thrs = COCO_IOU_THRS if iou_thrs is None else [float(t) for t in np.atleast_1d(iou_thrs)]
    recalls = eval_recalls(list(gt_boxes), list(results), list(proposal_nums), thrs,
                           logger="silent")
    averages = recalls.mean(axis=1)
    metrics = {f"AR@{int(num)}": float(ar)
               for num, ar in zip(proposal_nums, averages, strict=True)}
    text = "".join(f"\n{name}\t{value:.4f}" for name, value in metrics.items())
    if isinstance(logger, str) and logger != "silent":
        logger = logging.getLogger(logger)
    if isinstance(logger, logging.Logger):
        logger.info(text)
    elif logger is None:
        print(text)
    return metrics
